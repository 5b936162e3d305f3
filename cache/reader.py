"""FeatureCache: read-only access for training and evaluation, safe in worker processes."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from . import layout as L
from .direct import DirectRows, byte_view, read_plan
from .index import CacheIndex, QueryEntry, VideoEntry, load_index
from .mapped import MappedFeatures
from .records import CacheError, CacheSettings, QueryRecord, VideoRecord

# Handles inherited from a parent process: kept referenced so that a child never closes
# (or otherwise touches) HDF5 state that belongs to its parent.
_INHERITED_HANDLES: list[object] = []


def read_settings(path: str | os.PathLike) -> CacheSettings:
    """The settings a cache was built with (after checking them against the file).

    Raises:
        CacheError: `path` is missing, corrupt, edited or not an r2 feature cache.
    """
    return FeatureCache(path).settings


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_dev


class FeatureCache:
    """Read a cache: `with FeatureCache(path) as c: c.video(vid)`.

    The index of committed items is read and checked once at construction (a snapshot:
    items a concurrent writer commits later need a new FeatureCache). Features are read from
    an HDF5 handle opened lazily per process, so one FeatureCache may be handed to forked or
    spawned data-loader workers (it pickles without its handle); each worker opens its own.
    Any number of processes may read while one writer appends. A file replaced since (by
    `r2 cache compact`) is refused on reopen rather than read with the old index.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with L.open_h5_read(self.path) as f:
            self.version = L.check_format(f, self.path)
            self.attrs: dict = L.attrs_to_dict(f.attrs)
            self.settings: CacheSettings = L.settings_from_attrs(self.attrs, self.path)
            self._index: CacheIndex = load_index(f, self.path, self.settings, self.version)
        self._file = _file_id(self.path)
        self._h5: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._direct: dict[str, DirectRows] = {}
        self._fd: int | None = None  # raw descriptor of the same file, for `map_features`
        self._spare_fds: list[int] = []  # descriptors for `read_*_into`, one per reading thread
        self._pid: int | None = None
        self._lock = threading.Lock()  # opening is shared by the loader's reading threads

    def _dataset(self, name: str) -> h5py.Dataset:
        """Dataset `name` of this process's HDF5 handle (h5py objects never cross a fork)."""
        with self._lock:
            if self._h5 is None or self._pid != os.getpid():
                self._close()
                try:
                    same = _file_id(self.path) == self._file
                except OSError:
                    same = False
                if not same:
                    raise CacheError(f"{self.path}: the cache file was replaced or removed "
                                     "since it was opened (compacted?); open it again")  # fmt: skip
                self._h5 = L.open_h5_read(self.path)
                self._pid = os.getpid()
            if name not in self._datasets:
                self._datasets[name] = self._h5[name]
            return self._datasets[name]

    def _direct_rows(self, name: str) -> tuple[DirectRows, int]:
        """The byte-range finder of dataset `name` and a raw descriptor of the file."""
        dataset = self._dataset(name)
        with self._lock:
            if self._fd is None:
                self._fd = self._open_fd()
            if name not in self._direct:
                self._direct[name] = DirectRows(dataset)
            return self._direct[name], self._fd

    def _open_fd(self) -> int:
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        if os.fstat(fd).st_ino != self._file[0]:  # replaced between the two opens
            os.close(fd)
            raise CacheError(f"{self.path}: the cache file was replaced since it was "
                             "opened (compacted?); open it again")  # fmt: skip
        return fd

    def _read_plan(self, plan, out: np.ndarray) -> None:
        """`read_plan` on a descriptor no other thread is reading with: each has its own
        readahead state (2 threads reading a shuffled epoch: 2.9 vs 2.7 GB/s sharing one)."""
        with self._lock:
            fd = self._spare_fds.pop() if self._spare_fds else None
        if fd is None:
            fd = self._open_fd()
        try:
            read_plan(fd, plan, byte_view(out))
        finally:
            with self._lock:
                self._spare_fds.append(fd)

    def _rows(self, dataset: str, start: int, n: int, what: str) -> np.ndarray:
        try:
            try:
                rows = self._dataset(dataset)[start : start + n]  # one contiguous slice
            except OSError:  # e.g. metadata caught mid-update by a writer that started later
                self.close()
                rows = self._dataset(dataset)[start : start + n]
        except (OSError, KeyError, ValueError) as exc:
            raise CacheError(f"{self.path}: cannot read the features of {what}: {exc}") from exc
        if len(rows) != n:
            raise CacheError(f"{self.path}: the features of {what} are truncated (corrupt)")
        return rows

    def _read_into(self, name: str, start: int, avail: int, out: np.ndarray, what: str) -> None:
        """Rows [start, start + len(out)) of dataset `name`, last out.shape[1] layers, into
        `out`: straight from the file when the layout allows it (cache/direct.py), else
        through HDF5; the same bytes either way."""
        n, k = out.shape[0], out.shape[1]
        if n > avail or out.dtype != L.FEATURE_DTYPE:
            raise ValueError(f"{what}: cannot read {n} rows of {out.dtype} (has {avail} float16)")
        try:
            direct, _ = self._direct_rows(name)
            plan = direct.plan(start, n, k)
            if plan is not None:
                self._read_plan(plan, out)
                return
            dataset = self._dataset(name)
            layers = dataset.shape[1]
            dataset.read_direct(out, np.s_[start : start + n, layers - k :], np.s_[0:n])
        except (OSError, KeyError) as exc:
            raise CacheError(f"{self.path}: cannot read the features of {what}: {exc}") from exc

    def read_video_into(self, vid: str, out: np.ndarray) -> np.ndarray:
        """Read clips 0 .. len(out) - 1 of video `vid`, its last `out.shape[1]` layers, into
        `out` ((n, k, P, Dv) float16, C-contiguous; e.g. a reused batch buffer): the bytes of
        `video(vid)[:n, -k:]` without a temporary array. Thread-safe; no checksum check.

        Raises:
            ValueError: `out` asks for more clips than the video has, or is not float16.
            CacheError: the read failed.
        """
        entry = self._video_entry(vid)
        self._read_into(L.VIDEO_FRAMES, entry.start, entry.record.n_clips, out, f"video {vid!r}")
        return out

    def read_query_into(self, qid: str, out: np.ndarray) -> np.ndarray:
        """`read_video_into` for query `qid`: `out` is (L, k, Dq) float16 with L at most
        `query_length(qid)`."""
        entry = self._query_entry(qid)
        self._read_into(L.QUERY_TOKENS, entry.start, entry.length, out, f"query {qid!r}")
        return out

    def map_features(self, vids: list[str], qids: list[str], k: int) -> MappedFeatures:
        """All rows (last `k` layers) of `vids` and `qids` served from a read-only mapping
        of the file (cache/mapped.py); not yet read: call `populate()`. Only whole rows
        are mapped (`k` equal to the cache's K; else every id is unmapped). Ids it cannot map
        are in the result's `unmapped_videos` / `unmapped_queries` (read them with
        `read_*_into`).

        Raises:
            KeyError: an id is not in the cache.
            CacheError: the file cannot be opened or mapped.
        """
        plans: tuple[dict, dict] = ({}, {})
        unmapped: tuple[set, set] = (set(), set())
        try:
            for j, (name, ids) in enumerate(((L.VIDEO_FRAMES, vids), (L.QUERY_TOKENS, qids))):
                direct, fd = self._direct_rows(name)
                if k != direct.shape[1]:  # fewer layers: rows interleave used and unused
                    unmapped[j].update(ids)  # pages, and readahead would map both
                    continue
                for ident in ids:
                    e = self._query_entry(ident) if j else self._video_entry(ident)
                    rows = e.length if j else e.record.n_clips
                    plan = direct.plan(e.start, rows, k)
                    if plan is None:
                        unmapped[j].add(ident)
                    else:
                        plans[j][ident] = (plan, rows)
            return MappedFeatures(self.path, fd, *plans, unmapped)
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.path}: cannot map the file: {exc}") from exc

    def query_length(self, qid: str) -> int:
        """Token rows stored for query `qid` (what `query(qid)` returns)."""
        return self._query_entry(qid).length

    def _verify(self, rows: np.ndarray, crc: int | None, what: str) -> np.ndarray:
        if crc is not None and L.crc32(rows) != crc:
            raise CacheError(f"{self.path}: the features of {what} fail their checksum "
                             "(corrupt); re-extract it")  # fmt: skip
        return rows

    @property
    def index(self) -> CacheIndex:
        """The committed index (entries with their rows and checksums), for tools."""
        return self._index

    def video_ids(self) -> list[str]:
        """Ids of the cached videos, in the order they were first added."""
        return list(self._index.videos)

    def query_ids(self) -> list[str]:
        """Ids of the cached queries, in the order they were first added."""
        return list(self._index.queries)

    def has_video(self, vid: str) -> bool:
        """True if video `vid` is in the cache."""
        return vid in self._index.videos

    def has_query(self, qid: str) -> bool:
        """True if query `qid` is in the cache."""
        return qid in self._index.queries

    def _video_entry(self, vid: str) -> VideoEntry:
        try:
            return self._index.videos[vid]
        except KeyError:
            raise KeyError(f"video {vid!r} is not in cache {self.path}") from None

    def _query_entry(self, qid: str) -> QueryEntry:
        try:
            return self._index.queries[qid]
        except KeyError:
            raise KeyError(f"query {qid!r} is not in cache {self.path}") from None

    def video_record(self, vid: str) -> VideoRecord:
        """Metadata of video `vid` (its newest entry). Raises KeyError if absent."""
        return self._video_entry(vid).record

    def video_fps(self, vid: str) -> float:
        """Clips per second of video `vid`: its own (format 2) or the cache's `fps`."""
        return float(self._video_entry(vid).record.fps or self.settings.fps)

    def video(self, vid: str, verify: bool = False) -> np.ndarray:
        """(T, K, P, Dv) float16 features, K from the shallowest kept layer to the last.

        `verify` checks the stored checksum (format 2) and raises CacheError on a mismatch.
        """
        entry = self._video_entry(vid)
        rows = self._rows(L.VIDEO_FRAMES, entry.start, entry.record.n_clips, f"video {vid!r}")
        return self._verify(rows, entry.crc, f"video {vid!r}") if verify else rows

    def query_record(self, qid: str) -> QueryRecord:
        """Metadata of query `qid` (its newest entry). Raises KeyError if absent."""
        return self._query_entry(qid).record

    def query(self, qid: str, verify: bool = False) -> np.ndarray:
        """(L, K, Dq) float16 features, start token .. end-of-text token."""
        entry = self._query_entry(qid)
        rows = self._rows(L.QUERY_TOKENS, entry.start, entry.length, f"query {qid!r}")
        return self._verify(rows, entry.crc, f"query {qid!r}") if verify else rows

    def summary(self) -> dict:
        """Counts, sizes, waste and settings, for logging and `r2 cache info`."""
        ix, counts = self._index, self._index.counts
        try:
            size = self.path.stat().st_size
        except OSError:
            size = -1
        clips = sum(e.record.n_clips for e in ix.videos.values())
        tokens = sum(e.length for e in ix.queries.values())
        fps = sorted({self.video_fps(v) for v in ix.videos})
        return {
            "path": str(self.path),
            "format_version": self.version,
            "videos": len(ix.videos),
            "queries": len(ix.queries),
            "clips": clips,
            "tokens": tokens,
            "partial_videos": sum(e.record.partial for e in ix.videos.values()),
            "video_fps": fps,
            "superseded_videos": counts[L.N_VIDEO_ROWS] - len(ix.videos),
            "superseded_queries": counts[L.N_QUERY_ROWS] - len(ix.queries),
            "superseded_frames": ix.indexed_frames - clips,
            "superseded_tokens": ix.indexed_tokens - tokens,
            "uncommitted_frames": ix.sizes[L.N_FRAMES] - counts[L.N_FRAMES],
            "uncommitted_tokens": ix.sizes[L.N_TOKENS] - counts[L.N_TOKENS],
            "file_bytes": size,
            "r2_version": self.attrs.get("r2_version"),
            "created": self.attrs.get("created"),
            "settings": asdict(self.settings),
        }

    def close(self) -> None:
        """Close this process's handle (idempotent; reading again reopens)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._h5 is not None:
            if self._pid == os.getpid():
                self._h5.close()
            else:  # a parent's handle: never closed here
                _INHERITED_HANDLES.append((self._h5, self._datasets))
        for fd in [self._fd, *self._spare_fds]:  # in a forked child: its own copies
            if fd is not None:
                os.close(fd)
        self._h5, self._datasets, self._direct, self._fd = None, {}, {}, None
        self._spare_fds = []

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = state["_pid"] = state["_fd"] = state["_lock"] = None
        state["_datasets"], state["_direct"], state["_spare_fds"] = {}, {}, []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, {len(self._index.videos)} videos, "
                f"{len(self._index.queries)} queries)")  # fmt: skip
