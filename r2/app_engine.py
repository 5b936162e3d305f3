"""The web app's engine (no web code): videos encoded once by content, queries answered fast.

A video is decoded and CLIP-encoded once and kept by the SHA-256 of its bytes (so the same
file uploaded twice, or picked from the library and uploaded, is encoded once); the kept
features are bounded in bytes, least recently used first out. A file's hash is itself
remembered by (path, size, mtime), so asking again costs no re-read. Further queries then
cost one CLIP text forward and one R² forward: well under a second for a 150 s video on CPU
(benchmarks/app_latency.py). One lock serialises the model: the web server's threads may
call in parallel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from r2.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_CACHE_MB = 2048  # encoded videos kept in memory (ViT-B/32: ~300 KB per clip)
MAX_QUERIES = 10  # queries per request
THUMB_CACHE = 512  # thumbnails kept
HASH_CHUNK = 1 << 20


@dataclass
class Answer:
    """The result of one request: predictions per query, and what it cost."""

    video: Path
    key: str  # content hash
    predictions: list
    truths: list  # r2.truth.Truth | None per query
    thumbnails: list[list]  # per query, an RGB array (or None) per top moment
    seconds: dict[str, float] = field(default_factory=dict)  # encode / predict / frames


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class AppEngine:
    """Encodes videos once, answers queries, finds ground truth and thumbnails."""

    def __init__(
        self,
        predictor,
        *,
        videos_dir=None,
        truth=None,
        cache_mb: float = DEFAULT_CACHE_MB,
        allow_partial: bool = False,
    ):
        self.predictor = predictor
        self.videos_dir = Path(videos_dir).resolve() if videos_dir else None
        self.truth = truth
        self.max_bytes = int(cache_mb * 2**20)
        self.allow_partial = allow_partial
        self._features: OrderedDict[str, object] = OrderedDict()
        self._hashes: dict[tuple, str] = {}
        self._thumbs: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self._library = self._scan()

    # ------------------------------------------------------------------ library
    def _scan(self) -> dict[str, Path]:
        if self.videos_dir is None:
            return {}
        from r2.extract.inputs import find_videos

        return {
            str(v.path.resolve().relative_to(self.videos_dir)): v.path.resolve()
            for v in find_videos([self.videos_dir])
            if v.path.resolve().is_relative_to(self.videos_dir)
        }

    def library(self) -> list[str]:
        """Videos of --videos, as paths relative to it."""
        return sorted(self._library)

    def library_path(self, name: str) -> Path:
        """The file of a library entry; only names from `library()` are accepted."""
        if name not in self._library:
            raise UsageError(f"{name!r} is not a video of the library")
        return self._library[name]

    # ------------------------------------------------------------------ encoding
    def content_key(self, path: Path) -> str:
        stat = path.stat()
        ident = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if ident not in self._hashes:
            self._hashes[ident] = _sha256(path)
        return self._hashes[ident]

    def cached(self, key: str) -> bool:
        return key in self._features

    def encode(self, path: str | os.PathLike, progress: Callable | None = None):
        """(content key, VideoFeatures), encoding only when the content is new."""
        path = Path(path)
        key = self.content_key(path)
        with self._lock:
            if key in self._features:
                self._features.move_to_end(key)
                return key, self._features[key]
            began = time.perf_counter()
            video = self.predictor.encode_video(
                path, allow_partial=self.allow_partial, progress=progress
            )
            log.info(
                "encoded %s (%d clips) in %.1f s",
                path.name,
                len(video.features),
                time.perf_counter() - began,
            )
            self._features[key] = video
            self._evict()
            return key, video

    def _evict(self) -> None:
        total = sum(v.features.nbytes for v in self._features.values())
        while len(self._features) > 1 and total > self.max_bytes:
            _, old = self._features.popitem(last=False)
            total -= old.features.nbytes

    # ------------------------------------------------------------------ queries
    def ask(
        self,
        path: str | os.PathLike,
        queries: list[str],
        top: int = 5,
        progress: Callable | None = None,
    ) -> Answer:
        """Answer `queries` about the video at `path` (encoded if new)."""
        from r2.api import check_queries

        queries = check_queries([q.strip() for q in queries if q.strip()] or [""])
        if len(queries) > MAX_QUERIES:
            raise UsageError(f"at most {MAX_QUERIES} queries at a time, got {len(queries)}")
        path = Path(path)
        t0 = time.perf_counter()
        key, video = self.encode(path, progress)
        t1 = time.perf_counter()
        with self._lock:  # the model and the thumbnail cache are shared by the server's threads
            preds = self.predictor.predict_many(video, queries, top=top)
            t2 = time.perf_counter()
            thumbs = [self.thumbnails(path, key, p.moments[:top]) for p in preds]
        truths = [self.truth.lookup(path.stem, q) if self.truth else None for q in queries]
        seconds = {"encode": t1 - t0, "predict": t2 - t1, "frames": time.perf_counter() - t2}
        return Answer(path, key, preds, truths, thumbs, seconds)

    def thumbnails(self, path: Path, key: str, moments) -> list:
        """A frame at the middle of each moment (cached per video and time)."""
        from r2.frames import grab_frames

        times = [round((m.start + m.end) / 2, 2) for m in moments]
        missing = [t for t in times if (key, t) not in self._thumbs]
        if missing:
            for t, image in zip(missing, grab_frames(path, missing), strict=True):
                self._thumbs[(key, t)] = image
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return [self._thumbs.get((key, t)) for t in times]
