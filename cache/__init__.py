"""The feature cache format. The only code that opens cache (HDF5) files.

One HDF5 file holds the multi-layer CLIP features of videos and queries plus the settings
they were made with. `CacheWriter` creates or appends (crash-safe, one writer at a time,
incremental: skips what is current, supersedes what changed; `video_stream` writes a long
video chunk by chunk and commits it once); `FeatureCache` reads (many processes at once,
also while a writer appends) after checking the file against its own attributes.
`r2 cache info|check|compact|repair|merge` (cli.py, tools.py, rebuild.py) maintain caches.

Layout (format version 2; version 1 is read, never appended to; README.md beside this
file has the details and the design):
    root attributes   format="r2-feature-cache", format_version, r2_version, created,
                      every CacheSettings field (optional ones only when known),
                      settings_digest (sha256 of the settings)
    /committed        (2, 8) int64: two commit slots [seq, n_video_rows, n_frames,
                      n_query_rows, n_tokens, n_string_bytes, crc32, 0]; the valid slot
                      with the highest seq says how many rows of each dataset exist
    /strings          uint8 pool: UTF-8 (surrogatepass) ids, source paths, query texts
    /video/index      rows (vid_off, vid_len, source_off, source_len, start, n_clips,
                      duration, size, mtime, partial, fps, crc32); later rows supersede
    /video/frames     (N, K, P, Dv) float16; a video is rows [start, start + n_clips)
    /query/index      rows (qid_off, qid_len, text_off, text_len, start, length, n_tokens,
                      truncated, crc32)
    /query/tokens     (N, K, Dq) float16; a query is rows [start, start + length)
"""

from .reader import FeatureCache, read_settings
from .records import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    CacheError,
    CacheMismatchError,
    CacheSettings,
    CacheWriteError,
    QueryRecord,
    VideoRecord,
)
from .stream import VideoStream
from .writer import CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "CacheError",
    "CacheMismatchError",
    "CacheSettings",
    "CacheWriteError",
    "CacheWriter",
    "FeatureCache",
    "QueryRecord",
    "VideoRecord",
    "VideoStream",
    "read_settings",
]
