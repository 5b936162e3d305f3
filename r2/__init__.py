"""r2: R²-Tuning for video temporal grounding.

Stages (each a subpackage with one public function):
    r2.extract   videos + queries -> multi-layer CLIP feature cache (HDF5)
    r2.cache     the cache format (the only code that opens cache files)
    r2.train     the R² model and its training loop
    r2.evaluate  metrics, post-processing and inference over a split
"""

__version__ = "0.1.0"
