"""The feature cache format. The only code that opens cache (HDF5) files."""
