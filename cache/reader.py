"""FeatureCache: read-only access for training and evaluation, safe in worker processes."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from . import layout as L
from .records import CacheError, CacheSettings, QueryRecord, VideoRecord

# Handles inherited from a parent process: kept referenced so that a child never closes
# (or otherwise touches) HDF5 state that belongs to its parent.
_INHERITED_HANDLES: list[object] = []


def read_settings(path: str | os.PathLike) -> CacheSettings:
    """The settings a cache was built with.

    Raises:
        CacheError: `path` is missing, corrupt or not an r2 feature cache.
    """
    with L.open_h5_read(Path(path)) as f:
        return L.settings_from_attrs(L.attrs_to_dict(f.attrs), Path(path))


class FeatureCache:
    """Read a cache: `with FeatureCache(path) as c: c.video(vid)`.

    The index of committed items is read once at construction (a snapshot: items a
    concurrent writer commits later need a new FeatureCache). Features are read from an
    HDF5 handle opened lazily per process, so one FeatureCache may be handed to forked or
    spawned data-loader workers (it pickles without its handle); each worker opens its own.
    Any number of processes may read while one writer appends.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with L.open_h5_read(self.path) as f:
            self.attrs: dict = L.attrs_to_dict(f.attrs)
            self.settings: CacheSettings = L.settings_from_attrs(self.attrs, self.path)
            self._index = L.load_index(f, self.path)
        self._h5: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pid: int | None = None

    def _dataset(self, name: str) -> h5py.Dataset:
        """Dataset `name` of this process's HDF5 handle (h5py objects never cross a fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self.close()
            self._h5 = L.open_h5_read(self.path)
            self._pid = os.getpid()
        if name not in self._datasets:
            self._datasets[name] = self._h5[name]
        return self._datasets[name]

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

    def video_record(self, vid: str) -> VideoRecord:
        """Metadata of video `vid` (its newest entry). Raises KeyError if absent."""
        try:
            return self._index.videos[vid][0]
        except KeyError:
            raise KeyError(f"video {vid!r} is not in cache {self.path}") from None

    def video(self, vid: str) -> np.ndarray:
        """(T, K, P, Dv) float16 features, K from the shallowest kept layer to the last."""
        record = self.video_record(vid)
        start = self._index.videos[vid][1]
        return self._rows(L.VIDEO_FRAMES, start, record.n_clips, f"video {vid!r}")

    def query_record(self, qid: str) -> QueryRecord:
        """Metadata of query `qid` (its newest entry). Raises KeyError if absent."""
        try:
            return self._index.queries[qid][0]
        except KeyError:
            raise KeyError(f"query {qid!r} is not in cache {self.path}") from None

    def query(self, qid: str) -> np.ndarray:
        """(L, K, Dq) float16 features, start token .. end-of-text token."""
        self.query_record(qid)
        _, start, length = self._index.queries[qid]
        return self._rows(L.QUERY_TOKENS, start, length, f"query {qid!r}")

    def summary(self) -> dict:
        """Counts, size and settings, for logging."""
        counts = self._index.counts
        try:
            size = self.path.stat().st_size
        except OSError:
            size = -1
        return {
            "path": str(self.path),
            "videos": len(self._index.videos),
            "queries": len(self._index.queries),
            "clips": sum(r.n_clips for r, _ in self._index.videos.values()),
            "partial_videos": sum(r.partial for r, _ in self._index.videos.values()),
            "superseded_videos": counts[L.N_VIDEO_ROWS] - len(self._index.videos),
            "superseded_queries": counts[L.N_QUERY_ROWS] - len(self._index.queries),
            "file_bytes": size,
            "format_version": self.attrs.get("format_version"),
            "r2_version": self.attrs.get("r2_version"),
            "created": self.attrs.get("created"),
            "settings": asdict(self.settings),
        }

    def close(self) -> None:
        """Close this process's handle (idempotent; reading again reopens)."""
        if self._h5 is not None:
            if self._pid == os.getpid():
                self._h5.close()
            else:  # a parent's handle: never closed here
                _INHERITED_HANDLES.append((self._h5, self._datasets))
        self._h5, self._datasets = None, {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = state["_pid"] = None
        state["_datasets"] = {}
        return state

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, {len(self._index.videos)} videos, "
                f"{len(self._index.queries)} queries)")  # fmt: skip
