"""The on-disk layout of an r2 cache: dataset names, row dtypes, attributes, creation, opening.

See README.md in this folder for the format description. Everything that knows HDF5 dataset
names lives here and in `index.py`; `writer.py` and `reader.py` only append to / read from
these datasets.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import zlib
from dataclasses import asdict, fields
from pathlib import Path

import h5py
import numpy as np

import r2

from . import h5io
from .locking import recover_if_abandoned, superblock_flags
from .records import FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, CacheError, CacheSettings

FEATURE_DTYPE = np.dtype("<f2")  # stored feature precision
CHUNK_BYTES = 64 * 1024  # target chunk size (bytes) for feature and string datasets
INDEX_CHUNK_ROWS = 1024  # rows per chunk of the index tables
LIBVER = "v110"  # low and high format bound: SWMR needs >= 1.10; readable by HDF5 1.10+
TEXT_ENCODING = ("utf-8", "surrogatepass")  # any Python str round-trips, lone surrogates too
OPTIONAL_SETTINGS = ("revision", "model_fingerprint", "tokenizer_fingerprint")  # None: absent

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
COUNTED = (VIDEO_INDEX, VIDEO_FRAMES, QUERY_INDEX, QUERY_TOKENS, STRINGS)  # dataset of each count

VIDEO_ROW_V1 = np.dtype(
    [
        ("vid_off", "<i8"), ("vid_len", "<i8"),  # id bytes in STRINGS
        ("source_off", "<i8"), ("source_len", "<i8"),  # source path bytes in STRINGS
        ("start", "<i8"), ("n_clips", "<i8"),  # rows [start, start + n_clips) of VIDEO_FRAMES
        ("duration", "<f8"), ("size", "<i8"), ("mtime", "<f8"), ("partial", "u1"),
    ]
)  # fmt: skip
QUERY_ROW_V1 = np.dtype(
    [
        ("qid_off", "<i8"), ("qid_len", "<i8"),  # id bytes in STRINGS
        ("text_off", "<i8"), ("text_len", "<i8"),  # query text bytes in STRINGS
        ("start", "<i8"), ("length", "<i8"),  # rows [start, start + length) of QUERY_TOKENS
        ("n_tokens", "<i8"), ("truncated", "u1"),
    ]
)  # fmt: skip
# version 2: per-video fps (0 = the cache's fps) and crc32 of each item's feature bytes
VIDEO_ROW = np.dtype([*VIDEO_ROW_V1.descr, ("fps", "<f8"), ("crc32", "<u4")])
QUERY_ROW = np.dtype([*QUERY_ROW_V1.descr, ("crc32", "<u4")])
ROW_DTYPES = {1: (VIDEO_ROW_V1, QUERY_ROW_V1), 2: (VIDEO_ROW, QUERY_ROW)}


def encode_text(text: str) -> bytes:
    return text.encode(*TEXT_ENCODING)


def decode_text(data: bytes) -> str:
    return data.decode(*TEXT_ENCODING)


def crc32(features: np.ndarray, value: int = 0) -> int:
    """crc32 of the little-endian bytes of `features` (continuing from `value`)."""
    return zlib.crc32(np.ascontiguousarray(features).view(np.uint8).reshape(-1), value)


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


def settings_digest(settings: CacheSettings) -> str:
    """sha256 of the settings (canonical JSON): detects hand-edited root attributes."""
    text = json.dumps(asdict(settings), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def settings_to_attrs(settings: CacheSettings) -> dict:
    """Root attributes of a new cache (settings, their digest, provenance)."""
    attrs = {k: v for k, v in asdict(settings).items() if v is not None}
    attrs.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        r2_version=r2.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        settings_digest=settings_digest(settings),
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
    names = [f.name for f in fields(CacheSettings) if f.name not in OPTIONAL_SETTINGS]
    missing = [n for n in names if n not in attrs]
    if missing:
        raise CacheError(f"{path}: cache attributes lack {', '.join(missing)} (corrupt cache)")
    optional = {n: attrs.get(n) for n in OPTIONAL_SETTINGS}
    try:
        return CacheSettings(**{n: attrs[n] for n in names}, **optional)
    except ValueError as exc:
        raise CacheError(f"{path}: cache attributes are invalid: {exc}") from exc


def create_cache_file(path: Path, settings: CacheSettings, attrs: dict | None = None) -> bool:
    """Create an empty cache at `path` atomically (built under a temporary name, then linked).

    Returns False (and keeps that file) if another process created `path` first.
    `attrs` adds or replaces root attributes (e.g. `created` when rebuilding a cache).
    """
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with h5py.File(tmp, "w", libver=(LIBVER, LIBVER), locking=False) as f:
            f.attrs.update({**settings_to_attrs(settings), **(attrs or {})})
            _create_datasets(f, settings)
        try:
            os.link(tmp, path)  # atomic and never replaces an existing file
        except FileExistsError:
            return False
        except OSError as exc:  # filesystems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if path.exists():
                return False
            os.rename(tmp, path)
        return True
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
    `locking.recover_if_abandoned`). Only while a live writer appends (or when the file was
    left by a killed writer in a place this process cannot write) is the file opened in
    SWMR-read mode, with HDF5's metadata retries bounded (`h5io`), so damage still fails fast.

    Raises:
        CacheError: the path is missing, not an HDF5 file, corrupt, or not an r2 cache.
    """
    check_header(path)
    swmr = superblock_flags(path) != 0 and not recover_if_abandoned(path)
    try:
        try:
            f = h5io.open_file(path, swmr=swmr)
        except OSError as exc:
            if swmr or "already open for write" not in str(exc):
                raise
            f = h5io.open_file(path, swmr=True)  # a writer has just started
    except OSError as exc:
        raise CacheError(f"{path}: cannot open the HDF5 file (corrupt?): {exc}") from exc
    try:
        check_format(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_format(f: h5py.File, path: Path) -> int:
    """The cache's format version; CacheError unless it is an r2 cache this r2 reads."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT_NAME:
        raise CacheError(f"{path}: an HDF5 file but not an r2 feature cache (format={fmt!r})")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or int(version) not in READABLE_VERSIONS:
        raise CacheError(
            f"{path}: cache format version {version!r} is not supported by this r2 "
            f"(reads versions {', '.join(map(str, READABLE_VERSIONS))}); a newer r2 may read it"
        )
    return int(version)
