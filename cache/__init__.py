"""The feature cache format. The only code that opens cache (HDF5) files.

One HDF5 file holds the multi-layer CLIP features of videos and queries plus the settings
they were made with. `CacheWriter` creates or appends (crash-safe, one writer at a time,
incremental: skips what is current, supersedes what changed); `FeatureCache` reads (many
processes at once, also while a writer appends).

Layout (format version 1; README.md beside this file has the details and the design):
    root attributes   format="r2-feature-cache", format_version, r2_version, created,
                      every CacheSettings field (revision only when known)
    /committed        (2, 8) int64: two commit slots [seq, n_video_rows, n_frames,
                      n_query_rows, n_tokens, n_string_bytes, crc32, 0]; the valid slot
                      with the highest seq says how many rows of each dataset exist
    /strings          uint8 pool: UTF-8 (surrogatepass) ids, source paths, query texts
    /video/index      rows (vid_off, vid_len, source_off, source_len, start, n_clips,
                      duration, size, mtime, partial); later rows supersede earlier ones
    /video/frames     (N, K, P, Dv) float16; a video is rows [start, start + n_clips)
    /query/index      rows (qid_off, qid_len, text_off, text_len, start, length, n_tokens,
                      truncated)
    /query/tokens     (N, K, Dq) float16; a query is rows [start, start + length)
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
