"""The on-disk layout of an r2 cache: dataset names, row dtypes, file creation, index loading.

See README.md in this folder for the format description. Everything that knows HDF5 dataset
names lives here; `writer.py` and `reader.py` only append to / read from these datasets.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import secrets
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

import r2

from .locking import recover_if_abandoned, superblock_flags
from .records import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CacheError,
    CacheSettings,
    QueryRecord,
    VideoRecord,
)

FEATURE_DTYPE = np.dtype("<f2")  # stored feature precision
CHUNK_BYTES = 64 * 1024  # target chunk size (bytes) for feature and string datasets
INDEX_CHUNK_ROWS = 1024  # rows per chunk of the index tables
READ_CHUNK_CACHE = 0  # bytes of HDF5 chunk cache per dataset for readers: none (reads go
#                       straight into the output array; 1.8x faster for a 23 MB video)
LIBVER = "v110"  # low and high format bound: SWMR needs >= 1.10; readable by HDF5 1.10+
TEXT_ENCODING = ("utf-8", "surrogatepass")  # any Python str round-trips, lone surrogates too

COMMITTED = "committed"  # int64 (2, 8): two commit slots, see `commit_slot`
STRINGS = "strings"  # uint8 pool holding every id, source path and query text
VIDEO_INDEX = "video/index"
VIDEO_FRAMES = "video/frames"
QUERY_INDEX = "query/index"
QUERY_TOKENS = "query/tokens"
ALL_DATASETS = (COMMITTED, STRINGS, VIDEO_INDEX, VIDEO_FRAMES, QUERY_INDEX, QUERY_TOKENS)
# positions of the counts in a commit slot (after the sequence number at position 0)
N_VIDEO_ROWS, N_FRAMES, N_QUERY_ROWS, N_TOKENS, N_STRING_BYTES = range(5)
N_COUNTS = 5

VIDEO_ROW = np.dtype(
    [
        ("vid_off", "<i8"), ("vid_len", "<i8"),  # id bytes in STRINGS
        ("source_off", "<i8"), ("source_len", "<i8"),  # source path bytes in STRINGS
        ("start", "<i8"), ("n_clips", "<i8"),  # rows [start, start + n_clips) of VIDEO_FRAMES
        ("duration", "<f8"), ("size", "<i8"), ("mtime", "<f8"), ("partial", "u1"),
    ]
)  # fmt: skip
QUERY_ROW = np.dtype(
    [
        ("qid_off", "<i8"), ("qid_len", "<i8"),  # id bytes in STRINGS
        ("text_off", "<i8"), ("text_len", "<i8"),  # query text bytes in STRINGS
        ("start", "<i8"), ("length", "<i8"),  # rows [start, start + length) of QUERY_TOKENS
        ("n_tokens", "<i8"), ("truncated", "u1"),
    ]
)  # fmt: skip


def encode_text(text: str) -> bytes:
    return text.encode(*TEXT_ENCODING)


def decode_text(data: bytes) -> str:
    return data.decode(*TEXT_ENCODING)


def commit_slot(seq: int, counts: list[int]) -> tuple[int, np.ndarray]:
    """Slot index and row for commit number `seq`: [seq, *counts, crc32, 0].

    Commits alternate between the two slots and carry a checksum, so a write torn by a
    crash spoils at most the slot being written; readers take the valid slot with the
    highest sequence number.
    """
    body = np.asarray([seq, *counts], dtype="<i8")
    return seq % 2, np.concatenate([body, [zlib.crc32(body.tobytes()), 0]]).astype("<i8")


def read_commit(slots: np.ndarray, path: Path) -> tuple[int, list[int]]:
    """The newest valid (sequence number, counts) among the commit slots."""
    valid = [
        (int(row[0]), [int(x) for x in row[1 : 1 + N_COUNTS]])
        for row in np.asarray(slots, dtype="<i8")
        if int(row[1 + N_COUNTS]) == zlib.crc32(row[: 1 + N_COUNTS].tobytes())
    ]
    if not valid:
        raise CacheError(f"{path}: no valid commit record (corrupt cache)")
    return max(valid)


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def settings_to_attrs(settings: CacheSettings) -> dict:
    """Root attributes of a new cache (settings plus provenance)."""
    attrs = {k: v for k, v in asdict(settings).items() if v is not None}
    attrs.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        r2_version=r2.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        feature_dtype="float16",
        video_axes="clip, layer (shallowest kept .. last), token, channel",
        query_axes="token (start .. end-of-text), layer (shallowest kept .. last), channel",
    )
    attrs["mean"] = np.asarray(settings.mean, dtype=np.float64)
    attrs["std"] = np.asarray(settings.std, dtype=np.float64)
    return attrs


def attrs_to_dict(attrs: h5py.AttributeManager) -> dict:
    """HDF5 root attributes as plain Python values (arrays become tuples)."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            value = tuple(value.tolist())
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[key] = value
    return out


def settings_from_attrs(attrs: dict, path: Path) -> CacheSettings:
    """The CacheSettings recorded in a cache's root attributes (from `attrs_to_dict`)."""
    names = [n for n in CacheSettings.__dataclass_fields__ if n != "revision"]
    missing = [n for n in names if n not in attrs]
    if missing:
        raise CacheError(f"{path}: cache attributes lack {', '.join(missing)} (corrupt cache)")
    try:
        return CacheSettings(revision=attrs.get("revision"), **{n: attrs[n] for n in names})
    except ValueError as exc:
        raise CacheError(f"{path}: cache attributes are invalid: {exc}") from exc


def create_cache_file(path: Path, settings: CacheSettings) -> None:
    """Create an empty cache at `path` atomically (built under a temporary name, then linked).

    If another process creates `path` first, its file is kept and this call does nothing.
    """
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with h5py.File(tmp, "w", libver=(LIBVER, LIBVER), locking=False) as f:
            f.attrs.update(settings_to_attrs(settings))
            _create_datasets(f, settings)
        try:
            os.link(tmp, path)  # atomic and never replaces an existing file
        except FileExistsError:
            pass
        except OSError as exc:  # filesystems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if not path.exists():
                os.rename(tmp, path)
    except OSError as exc:
        raise CacheError(f"{path}: cannot create the cache file: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _create_datasets(f: h5py.File, s: CacheSettings) -> None:
    """Every dataset a cache ever needs (SWMR writers cannot create objects later)."""
    f.create_dataset(COMMITTED, data=np.stack([commit_slot(0, [0] * N_COUNTS)[1]] * 2))
    f.create_dataset(STRINGS, shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(CHUNK_BYTES,))
    for name, dtype in ((VIDEO_INDEX, VIDEO_ROW), (QUERY_INDEX, QUERY_ROW)):
        f.create_dataset(
            name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(INDEX_CHUNK_ROWS,)
        )
    for name, row in ((VIDEO_FRAMES, (s.k, s.tokens_per_frame, s.video_dim)),
                      (QUERY_TOKENS, (s.k, s.text_dim))):  # fmt: skip
        rows = _rows_per_chunk(int(np.prod(row)) * FEATURE_DTYPE.itemsize)
        f.create_dataset(
            name, shape=(0, *row), maxshape=(None, *row), dtype=FEATURE_DTYPE,
            chunks=(rows, *row),
        )  # fmt: skip


def check_header(path: Path) -> None:
    """Fail early, naming the path, unless `path` is a file that starts like an HDF5 file."""
    if not path.exists():
        raise CacheError(f"{path}: no such cache file")
    if path.is_dir():
        raise CacheError(f"{path}: is a directory, not a cache file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise CacheError(f"{path}: cannot read: {exc}") from exc
    if head != b"\x89HDF\r\n\x1a\n":
        what = "an empty file" if not head else "not an HDF5 file"
        raise CacheError(f"{path}: {what}, so not an r2 feature cache")


def open_h5_read(path: Path) -> h5py.File:
    """Open a cache read-only.

    With no writer open (superblock flags clear) the file is opened normally, so damage is
    reported at once. Flags left by a killed writer are cleared first when possible (see
    `locking.recover_if_abandoned`). Only while a live writer appends is the file opened in
    SWMR-read mode (HDF5 then retries checksum failures, which a concurrent write can cause).

    Raises:
        CacheError: the path is missing, not an HDF5 file, corrupt, or not an r2 cache.
    """
    check_header(path)
    swmr = superblock_flags(path) != 0 and not recover_if_abandoned(path)
    try:
        try:
            f = _h5_read(path, swmr)
        except OSError as exc:
            if swmr or "already open for write" not in str(exc):
                raise
            f = _h5_read(path, swmr=True)  # a writer has just started
    except OSError as exc:
        raise CacheError(f"{path}: cannot open the HDF5 file (corrupt?): {exc}") from exc
    try:
        _check_format(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _h5_read(path: Path, swmr: bool) -> h5py.File:
    return h5py.File(path, "r", swmr=swmr, locking=False, rdcc_nbytes=READ_CHUNK_CACHE)


def _check_format(f: h5py.File, path: Path) -> None:
    fmt = f.attrs.get("format")
    if fmt != FORMAT_NAME:
        raise CacheError(f"{path}: an HDF5 file but not an r2 feature cache (format={fmt!r})")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or not 1 <= version <= FORMAT_VERSION:
        raise CacheError(
            f"{path}: cache format version {version!r} is not supported by this r2 "
            f"(reads versions 1..{FORMAT_VERSION}); a newer r2 may read it"
        )


@dataclass
class CacheIndex:
    """The committed state of a cache: counts and the newest entry of every id."""

    seq: int  # sequence number of the commit this index was read at
    counts: list[int]  # the committed counts (N_VIDEO_ROWS, ...)
    videos: dict[str, tuple[VideoRecord, int]]  # vid -> (record, first frame row)
    queries: dict[str, tuple[QueryRecord, int, int]]  # qid -> (record, first token row, L)


def load_index(f: h5py.File, path: Path) -> CacheIndex:
    """Read the committed index; later rows of an id supersede earlier ones."""
    try:
        seq, counts = read_commit(f[COMMITTED][:], path)
        pool = f[STRINGS][: counts[N_STRING_BYTES]].tobytes()
        vrows = f[VIDEO_INDEX][: counts[N_VIDEO_ROWS]].tolist()
        qrows = f[QUERY_INDEX][: counts[N_QUERY_ROWS]].tolist()
    except (OSError, KeyError, ValueError) as exc:
        raise CacheError(f"{path}: cannot read the cache index (corrupt?): {exc}") from exc
    if (
        len(pool) != counts[N_STRING_BYTES]
        or len(vrows) != counts[N_VIDEO_ROWS]
        or len(qrows) != counts[N_QUERY_ROWS]
    ):
        raise CacheError(f"{path}: the cache index is shorter than its committed counts (corrupt)")

    def text(off: int, length: int, row: str) -> str:
        if off < 0 or length < 0 or off + length > len(pool):
            raise CacheError(f"{path}: {row} points outside the string pool (corrupt)")
        try:
            return decode_text(pool[off : off + length])
        except UnicodeDecodeError as exc:
            raise CacheError(f"{path}: {row} has an undecodable string (corrupt)") from exc

    def check_rows(start: int, n: int, total: int, row: str) -> None:
        if start < 0 or n < 0 or start + n > total:
            raise CacheError(f"{path}: {row} points outside the feature rows (corrupt)")

    videos: dict[str, tuple[VideoRecord, int]] = {}
    for i, (v_off, v_len, s_off, s_len, start, n, dur, size, mtime, partial) in enumerate(vrows):
        where = f"video index row {i}"
        check_rows(start, n, counts[N_FRAMES], where)
        vid = text(v_off, v_len, where)
        record = VideoRecord(vid, dur, n, text(s_off, s_len, where), size, mtime, bool(partial))
        videos[vid] = (record, start)
    queries: dict[str, tuple[QueryRecord, int, int]] = {}
    for i, (q_off, q_len, t_off, t_len, start, n, n_tokens, truncated) in enumerate(qrows):
        where = f"query index row {i}"
        check_rows(start, n, counts[N_TOKENS], where)
        qid = text(q_off, q_len, where)
        queries[qid] = (QueryRecord(qid, text(t_off, t_len, where), n_tokens, bool(truncated)),
                        start, n)  # fmt: skip
    return CacheIndex(seq, counts, videos, queries)
