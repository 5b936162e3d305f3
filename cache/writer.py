"""CacheWriter: create or append to a cache; every add is committed crash-safely on return.

Commit protocol (the whole crash-safety argument is in README.md):
1. append strings, feature rows and index rows past the committed counts, then flush;
2. write the new counts (with a sequence number and crc32) into the other of the two
   `/committed` slots, then flush.
The file is open in SWMR-write mode, in which HDF5 orders its metadata writes so that the
file is consistent at every instant. A process killed at any point leaves the newest valid
slot at either the old counts (the new rows are ignored and later overwritten) or the new
counts (all their rows were written by the first flush).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from . import h5io
from . import layout as L
from .index import load_index
from .locking import acquire_writer_lock, clear_flags_locked, release_lock
from .records import (
    FORMAT_VERSION,
    CacheError,
    CacheMismatchError,
    CacheSettings,
    CacheWriteError,
    QueryRecord,
    VideoRecord,
)
from .stream import VideoStream, check_query, check_video_record
from .superblock import restore_superblock

log = logging.getLogger(__name__)

SPACE_MARGIN = 4 * 2**20  # bytes a write leaves free on the disk (HDF5 metadata, the commit)
MB = 2**20


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write in `path`'s folder (None: the filesystem won't say)."""
    try:
        st = os.statvfs(path.parent)
    except (OSError, AttributeError):
        return None
    if st.f_blocks == 0:  # pseudo filesystems report no sizes at all
        return None
    root = getattr(os, "geteuid", lambda: -1)() == 0  # root may use the reserved blocks
    return (st.f_bfree if root else st.f_bavail) * st.f_frsize


def _reason(exc: BaseException) -> str:
    """One line for a failed HDF5/OS write: the OS error when known ("No space left on device")."""
    number = getattr(exc, "errno", None)
    found = re.search(r"errno = (\d+)", str(exc))
    if found:
        number = int(found.group(1))
    if number:
        return f"{os.strerror(number)} (errno {number})"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _restore(path: Path, backup: tuple[bytes, int]) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        restore_superblock(fd, backup)
    finally:
        os.close(fd)


def _check_appendable(path: Path, cached: CacheSettings, wanted: CacheSettings, version: int):
    differences = cached.mismatches(wanted)
    if differences:
        raise CacheMismatchError(
            f"{path}: the cache was built with other settings (cached vs requested): "
            + "; ".join(differences)
            + ". Use the cache's settings or write a new cache.",
            differences,
        )
    if version != FORMAT_VERSION:
        raise CacheError(
            f"{path}: cache format version {version} is read but never appended to by this "
            f"r2; run `r2 cache compact {path}` once to upgrade it to version {FORMAT_VERSION} "
            "(crash-safe, keeps every item), then append"
        )


class CacheWriter:
    """Create a cache or append to one; `with CacheWriter(path, settings) as w: ...`.

    Opening checks the settings against the cache's before anything is modified
    (CacheMismatchError lists every difference), takes an exclusive writer lock (a second
    writer gets CacheError), recovers from a writer that was killed and validates the file
    (a damaged one fails at once with CacheError). Each `add_*` call and each
    `video_stream` block is committed when it returns: a crash afterwards never loses it, a
    crash during it never shows any part of it. A cache this writer created and left empty
    is deleted on close, and so is the lock file. Not to be shared across processes.
    """

    def __init__(self, path: str | os.PathLike, settings: CacheSettings):
        if not isinstance(settings, CacheSettings):
            raise TypeError(f"settings must be CacheSettings, got {type(settings).__name__}")
        self.path = Path(path)
        self.settings = settings
        self._f: h5py.File | None = None
        self._lock_fd: int | None = None
        self._stream: VideoStream | None = None
        self._seq = 0
        self._pid = os.getpid()  # a forked child must never write or close this writer
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"{self.path}: cannot create its folder: {exc}") from exc
        self._created = not self.path.exists() and L.create_cache_file(self.path, settings)
        if self._created:
            log.info("created feature cache %s", self.path)
        L.check_header(self.path)
        self._lock_fd = acquire_writer_lock(self.path)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        backup = clear_flags_locked(self.path)  # we hold the lock: set flags are stale
        try:
            with L.open_h5_read(self.path) as f:  # normal open: damage fails fast
                version = L.check_format(f, self.path)
                cached = L.settings_from_attrs(L.attrs_to_dict(f.attrs), self.path)
                index = load_index(f, self.path, cached, version)  # the file is what it says
                _check_appendable(self.path, cached, self.settings, version)
        except CacheError:
            if backup is not None:  # leave a file we refuse byte-for-byte as it was
                _restore(self.path, backup)
            raise
        if backup is not None:
            log.warning("%s: recovered after an interrupted writer", self.path)
        try:
            self._f = h5io.open_file(self.path, write=True)
            self._datasets = {name: self._f[name] for name in L.ALL_DATASETS}
        except (OSError, KeyError) as exc:
            raise CacheError(f"{self.path}: cannot open the cache for writing (corrupt?): {exc}"
                             ) from exc  # fmt: skip
        self._seq, self._counts = index.seq, index.counts
        fps = self.settings.fps
        self._videos = {vid: (e.record.size, e.record.mtime, e.record.fps or fps)
                        for vid, e in index.videos.items()}  # fmt: skip
        self._queries = {qid: e.record.text for qid, e in index.queries.items()}
        log.info("%s: open for writing (%d videos, %d queries)", self.path,
                 len(self._videos), len(self._queries))  # fmt: skip

    def video_is_current(self, vid: str, size: int, mtime: float, fps: float | None = None) -> bool:
        """True if `vid` is cached from a source of this size and mtime, at this fps (None:
        the cache's fps)."""
        return self._videos.get(vid) == (size, float(mtime), float(fps or self.settings.fps))

    def has_query(self, qid: str, text: str) -> bool:
        """True if `qid` is cached with exactly this text."""
        return self._queries.get(qid) == text

    def add_video(self, record: VideoRecord, features: np.ndarray) -> None:
        """Append (or supersede) one video's (T, K, P, Dv) float16 features; committed on return."""
        check_video_record(record)
        if getattr(features, "ndim", 0) >= 1 and len(features) != record.n_clips:
            raise ValueError(f"video {record.vid!r}: features shape {features.shape}, expected "
                             f"T = record.n_clips = {record.n_clips} rows")  # fmt: skip
        with self.video_stream(record) as stream:
            stream.write(features)

    def video_stream(self, record: VideoRecord) -> VideoStream:
        """Start writing one video chunk by chunk (see `VideoStream`); use it as a `with` block.

        `record.n_clips` is ignored: the video gets as many clips as rows are written.
        """
        self._check_open()
        if self._stream is not None:
            raise CacheError(f"{self.path}: the video {self._stream.record.vid!r} is still being "
                             "written (one video stream at a time)")  # fmt: skip
        self._stream = VideoStream(self, record, self._counts[L.N_FRAMES])
        return self._stream

    def _commit_video(self, record: VideoRecord, start: int, crc: int) -> None:
        """Commit a video whose rows [start, start + n_clips) of frames are written."""
        self._check_open()
        counts = list(self._counts)
        vid, source = L.encode_text(record.vid), L.encode_text(record.source)
        row = np.zeros((), dtype=L.VIDEO_ROW)
        row[()] = (counts[L.N_STRING_BYTES], len(vid), counts[L.N_STRING_BYTES] + len(vid),
                   len(source), start, record.n_clips, record.duration, record.size,
                   record.mtime, record.partial, record.fps or 0.0, crc)  # fmt: skip
        self._reserve(len(vid) + len(source) + row.nbytes)
        with self._io():
            self._write(L.STRINGS, counts[L.N_STRING_BYTES], np.frombuffer(vid + source, np.uint8))
            self._write(L.VIDEO_INDEX, counts[L.N_VIDEO_ROWS], row[None])
            counts[L.N_STRING_BYTES] += len(vid) + len(source)
            counts[L.N_FRAMES] = start + record.n_clips
            counts[L.N_VIDEO_ROWS] += 1
            self._commit(counts)
        fps = float(record.fps or self.settings.fps)
        self._videos[record.vid] = (record.size, float(record.mtime), fps)

    def add_queries(self, records: list[QueryRecord], features: list[np.ndarray]) -> None:
        """Append (or supersede) queries, each (L, K, Dq) float16; one commit for the batch."""
        self._check_open()
        if len(records) != len(features):
            raise ValueError(f"{len(records)} query records but {len(features)} feature arrays")
        for record, feats in zip(records, features, strict=True):
            check_query(record, feats, self.settings)
        if not records:
            return
        counts = list(self._counts)
        rows = np.zeros(len(records), dtype=L.QUERY_ROW)
        pool: list[bytes] = []
        offset, start = counts[L.N_STRING_BYTES], counts[L.N_TOKENS]
        for i, (record, feats) in enumerate(zip(records, features, strict=True)):
            qid, text = L.encode_text(record.qid), L.encode_text(record.text)
            rows[i] = (offset, len(qid), offset + len(qid), len(text), start, len(feats),
                       record.n_tokens, record.truncated, L.crc32(feats))  # fmt: skip
            pool += [qid, text]
            offset += len(qid) + len(text)
            start += len(feats)
        pool_bytes = offset - counts[L.N_STRING_BYTES]
        self._reserve(sum(f.nbytes for f in features) + rows.nbytes + pool_bytes)
        with self._io():
            self._write(
                L.STRINGS, counts[L.N_STRING_BYTES], np.frombuffer(b"".join(pool), np.uint8)
            )
            self._write(L.QUERY_TOKENS, counts[L.N_TOKENS], np.concatenate(features))
            self._write(L.QUERY_INDEX, counts[L.N_QUERY_ROWS], rows)
            counts[L.N_STRING_BYTES], counts[L.N_TOKENS] = offset, start
            counts[L.N_QUERY_ROWS] += len(records)
            self._commit(counts)
        self._queries.update((r.qid, r.text) for r in records)

    def _write_rows(self, name: str, at: int, data: np.ndarray) -> None:
        """`_write` for a stream: checks the writer first, reports failures as CacheError."""
        self._check_open()
        self._reserve(data.nbytes)
        with self._io():
            self._write(name, at, data)

    def _write(self, name: str, at: int, data: np.ndarray) -> None:
        """Write rows [at, at + len(data)) of dataset `name`, growing it when needed."""
        if len(data) == 0:
            return
        ds = self._datasets[name]
        end = at + len(data)
        if ds.shape[0] < end:  # rows past the committed count are reused
            ds.resize(end, axis=0)
        ds.write_direct(np.ascontiguousarray(data), dest_sel=np.s_[at:end])

    def _commit(self, counts: list[int]) -> None:
        self._f.flush()  # every new row is in the file before a commit record says so
        slot, row = L.commit_slot(self._seq + 1, counts)
        self._datasets[L.COMMITTED][slot] = row
        self._f.flush()
        self._seq, self._counts = self._seq + 1, counts

    def _reserve(self, nbytes: int) -> None:
        """Refuse a write the disk has no room for BEFORE HDF5 starts it (CacheWriteError).

        A write that fails inside HDF5 is survived too (`_io`), but refusing it first keeps
        the writer usable and the file closed normally.
        """
        free = free_bytes(self.path)
        if free is not None and free < nbytes + SPACE_MARGIN:
            raise CacheWriteError(
                f"{self.path}: disk full ({free / MB:.1f} MB free; the next write needs "
                f"{nbytes / MB:.1f} MB + {SPACE_MARGIN // MB} MB); every item committed "
                "before is intact"
            )

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        try:
            yield
        except (OSError, RuntimeError) as exc:
            self._abandon()
            raise CacheWriteError(f"{self.path}: write failed: {_reason(exc)}; every item "
                                  "committed before is intact") from exc  # fmt: skip

    def _abandon(self) -> None:
        """After a failed write: close the HDF5 file WITHOUT letting HDF5 write to it again.

        HDF5's closing flush would fail as well and, on a full disk, leave the library in a
        state that crashes the interpreter at exit (segfault). Its descriptor is pointed at
        /dev/null first, so the file stays exactly as it was when the write failed: every
        commit before is intact, as after a kill. The superblock flags are then cleared
        (in place, no new space) so that plain HDF5 tools open the file again.
        """
        f, self._f, self._stream = self._f, None, None
        if f is None:
            return
        with contextlib.suppress(Exception):
            fd = f.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        with contextlib.suppress(Exception):
            f.close()
        self._datasets = {}  # their handles are closed with the file (CLOSE_STRONG)
        with contextlib.suppress(CacheError, OSError):
            clear_flags_locked(self.path)
        log.debug("%s: writer abandoned after a failed write", self.path)

    def _check_open(self) -> None:
        if self._f is None:
            raise CacheError(f"{self.path}: the writer is closed")
        if os.getpid() != self._pid:
            raise CacheError(f"{self.path}: a writer cannot be used in a forked process")

    def close(self) -> None:
        """Close the file and release the writer lock (idempotent; a no-op in a forked child).

        A cache this writer created and never committed anything to is deleted.
        """
        if os.getpid() != self._pid:
            return
        try:
            if self._f is not None:
                self._f.close()
        finally:
            self._f, self._stream = None, None
            if self._lock_fd is not None:
                if self._created and self._seq == 0:  # an empty cache is debris
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                release_lock(self.path, self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._f is None:
            return f"CacheWriter({str(self.path)!r}, closed)"
        return (f"CacheWriter({str(self.path)!r}, {len(self._videos)} videos, "
                f"{len(self._queries)} queries)")  # fmt: skip
