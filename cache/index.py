"""Reading a cache's committed index, and checking that the file is what it says it is.

On every open (reader and writer) the cache is cross-checked before any feature is used:
the index layout matches `format_version`; the feature datasets' shapes match the settings
attributes (`k`, `tokens_per_frame`, `video_dim`, `text_dim`); version 2 files carry a
digest of the settings that must match the attributes (so a hand-edited `fps` or `model_id`
is refused); the commit record's counts do not exceed the datasets' sizes; every index row
points inside the datasets and the string pool; every video that is not partial has
T = round(duration × fps) within `CLIP_TOLERANCE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py

from . import layout as L
from .records import CacheError, CacheSettings, QueryRecord, VideoRecord

CLIP_TOLERANCE = 1  # |T - round(duration × fps)| allowed: T = round(end·fps) -
# round(first·fps) (sampling.py) rounds two times when the video stream starts after 0


@dataclass(frozen=True)
class VideoEntry:
    """The newest index row of one video."""

    record: VideoRecord
    start: int  # first row in VIDEO_FRAMES
    crc: int | None  # crc32 of its feature bytes; None in format version 1
    row: int  # its row in VIDEO_INDEX


@dataclass(frozen=True)
class QueryEntry:
    """The newest index row of one query."""

    record: QueryRecord
    start: int  # first row in QUERY_TOKENS
    length: int  # rows (tokens) stored
    crc: int | None
    row: int


@dataclass
class CacheIndex:
    """The committed state of a cache: counts and the newest entry of every id."""

    version: int  # format version of the file
    seq: int  # sequence number of the commit this index was read at
    counts: list[int]  # the committed counts (N_VIDEO_ROWS, ...)
    sizes: list[int]  # current lengths of the datasets of each count (>= counts)
    videos: dict[str, VideoEntry]
    queries: dict[str, QueryEntry]
    indexed_frames: int  # frame rows referenced by all video index rows (superseded too)
    indexed_tokens: int


def expected_clips(duration: float, fps: float) -> int:
    """round(duration × fps), halves up (as the clip rule in extract/sampling.py)."""
    return math.floor(duration * fps + 0.5)


def check_layout(f: h5py.File, path: Path, settings: CacheSettings, version: int) -> None:
    """Datasets present, index layout of `version`, shapes and digest matching the settings."""
    missing = [name for name in L.ALL_DATASETS if name not in f]
    if missing:
        raise CacheError(f"{path}: datasets {missing} are missing (corrupt cache)")
    try:
        video_rows, query_rows = L.ROW_DTYPES[version]
        for name, dtype in ((L.VIDEO_INDEX, video_rows), (L.QUERY_INDEX, query_rows)):
            if f[name].dtype != dtype:
                raise CacheError(f"{path}: {name} does not have the layout of format version "
                                 f"{version} (format_version attribute edited?)")  # fmt: skip
        s = settings
        for name, attrs, want in (
            (L.VIDEO_FRAMES, "k, tokens_per_frame, video_dim",
             (s.k, s.tokens_per_frame, s.video_dim)),
            (L.QUERY_TOKENS, "k, text_dim", (s.k, s.text_dim)),
        ):  # fmt: skip
            got = f[name].shape[1:]
            if got != want:
                raise CacheError(f"{path}: {name} holds rows of shape {got} but the attributes "
                                 f"({attrs}) say {want} (attributes edited?)")  # fmt: skip
    except (OSError, KeyError, ValueError) as exc:
        raise CacheError(f"{path}: cannot read the cache's datasets (corrupt?): {exc}") from exc
    if version >= 2:
        stored = f.attrs.get("settings_digest")
        stored = stored.decode() if isinstance(stored, bytes) else stored
        if stored != L.settings_digest(settings):
            raise CacheError(
                f"{path}: the settings attributes do not match their digest (settings_digest "
                f"{stored!r}): root attributes were edited by hand or damaged; re-extract, or "
                "restore the original values"
            )


def _current_rows(ds: h5py.Dataset) -> int:
    """Rows of `ds` now. Under a concurrent SWMR writer, the shape HDF5 cached when the file
    was opened (`check_layout` reads every header) can predate the commit record just read:
    refresh it so that committed rows are never reported missing."""
    if ds.file.swmr_mode:
        ds.refresh()
    return int(ds.shape[0])


def _read_rows(f: h5py.File, path: Path) -> tuple[int, list[int], list[int], bytes, list, list]:
    try:
        seq, counts = L.read_commit(f[L.COMMITTED][:], path)
        sizes = [_current_rows(f[name]) for name in L.COUNTED]
        for name, count, size in zip(L.COUNTED, counts, sizes, strict=True):
            if count < 0 or count > size:
                raise CacheError(
                    f"{path}: the commit record claims {count} rows of /{name} but the dataset "
                    f"holds {size} (counts edited, or the file is damaged)"
                )
        pool = f[L.STRINGS][: counts[L.N_STRING_BYTES]].tobytes()
        vrows = f[L.VIDEO_INDEX][: counts[L.N_VIDEO_ROWS]].tolist()
        qrows = f[L.QUERY_INDEX][: counts[L.N_QUERY_ROWS]].tolist()
    except (OSError, KeyError, ValueError) as exc:
        raise CacheError(f"{path}: cannot read the cache index (corrupt?): {exc}") from exc
    if (len(pool), len(vrows), len(qrows)) != (
        counts[L.N_STRING_BYTES], counts[L.N_VIDEO_ROWS], counts[L.N_QUERY_ROWS]
    ):  # fmt: skip
        raise CacheError(f"{path}: the cache index is shorter than its committed counts (corrupt)")
    return seq, counts, sizes, pool, vrows, qrows


class _Pool:
    """Strings of the pool and bounds checks, with messages naming the file and row."""

    def __init__(self, pool: bytes, counts: list[int], path: Path):
        self.pool, self.counts, self.path = pool, counts, path

    def text(self, off: int, length: int, where: str) -> str:
        if off < 0 or length < 0 or off + length > len(self.pool):
            raise CacheError(f"{self.path}: {where} points outside the string pool (corrupt)")
        try:
            return L.decode_text(self.pool[off : off + length])
        except UnicodeDecodeError as exc:
            raise CacheError(f"{self.path}: {where} has an undecodable string (corrupt)") from exc

    def rows(self, start: int, n: int, which: int, where: str) -> None:
        if start < 0 or n < 0 or start + n > self.counts[which]:
            raise CacheError(f"{self.path}: {where} points outside the feature rows (corrupt)")


def _videos(vrows: list, pool: _Pool, version: int) -> tuple[dict[str, VideoEntry], int]:
    videos: dict[str, VideoEntry] = {}
    frames = 0
    for i, row in enumerate(vrows):
        v_off, v_len, s_off, s_len, start, n, dur, size, mtime, partial = row[:10]
        fps, crc = (row[10] or None, row[11]) if version >= 2 else (None, None)
        where = f"video index row {i}"
        pool.rows(start, n, L.N_FRAMES, where)
        vid = pool.text(v_off, v_len, where)
        record = VideoRecord(vid, dur, n, pool.text(s_off, s_len, where), size, mtime,
                             bool(partial), fps)  # fmt: skip
        videos[vid] = VideoEntry(record, start, crc, i)
        frames += n
    return videos, frames


def _queries(qrows: list, pool: _Pool, version: int) -> tuple[dict[str, QueryEntry], int]:
    queries: dict[str, QueryEntry] = {}
    tokens = 0
    for i, row in enumerate(qrows):
        q_off, q_len, t_off, t_len, start, n, n_tokens, truncated = row[:8]
        where = f"query index row {i}"
        pool.rows(start, n, L.N_TOKENS, where)
        qid = pool.text(q_off, q_len, where)
        record = QueryRecord(qid, pool.text(t_off, t_len, where), n_tokens, bool(truncated))
        queries[qid] = QueryEntry(record, start, n, row[8] if version >= 2 else None, i)
        tokens += n
    return queries, tokens


def check_clips(videos: dict[str, VideoEntry], default_fps: float, path: Path) -> None:
    """Each complete video's T against round(duration × fps) (± CLIP_TOLERANCE)."""
    for vid, entry in videos.items():
        r = entry.record
        fps = r.fps or default_fps
        if not (math.isfinite(fps) and fps > 0 and math.isfinite(r.duration) and r.duration >= 0):
            raise CacheError(f"{path}: video {vid!r} (index row {entry.row}) has an invalid fps "
                             f"{fps!r} or duration {r.duration!r} (corrupt)")  # fmt: skip
        if r.partial:
            continue
        expected = expected_clips(r.duration, fps)
        if abs(r.n_clips - expected) > CLIP_TOLERANCE:
            raise CacheError(
                f"{path}: video {vid!r} (index row {entry.row}) has {r.n_clips} clips but "
                f"{r.duration:g} s at {fps:g} clips/s make {expected} (±{CLIP_TOLERANCE}): the "
                "index or the fps attribute was edited, or the file is damaged"
            )


def load_index(f: h5py.File, path: Path, settings: CacheSettings, version: int) -> CacheIndex:
    """Check the layout and read the committed index; later rows of an id supersede earlier."""
    check_layout(f, path, settings, version)
    seq, counts, sizes, pool, vrows, qrows = _read_rows(f, path)
    strings = _Pool(pool, counts, path)
    videos, frames = _videos(vrows, strings, version)
    queries, tokens = _queries(qrows, strings, version)
    check_clips(videos, settings.fps, path)
    return CacheIndex(version, seq, counts, sizes, videos, queries, frames, tokens)
