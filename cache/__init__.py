"""The feature cache format. The only code that opens cache (HDF5) files.

One HDF5 file holds the multi-layer CLIP features of videos and queries plus the settings
they were made with. `CacheWriter` creates or appends (crash-safe, one writer at a time,
incremental: skips what is current, supersedes what changed); `FeatureCache` reads (many
processes at once, also while a writer appends). The layout and the crash-safety design are
described in README.md beside this file.
"""

from .reader import FeatureCache, read_settings
from .records import (
    FORMAT_VERSION,
    CacheError,
    CacheMismatchError,
    CacheSettings,
    QueryRecord,
    VideoRecord,
)
from .writer import CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "CacheError",
    "CacheMismatchError",
    "CacheSettings",
    "CacheWriter",
    "FeatureCache",
    "QueryRecord",
    "VideoRecord",
    "read_settings",
]
