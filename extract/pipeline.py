"""The extraction loop: decode in worker processes, encode in batches, write from one process.

Videos are decoded by `decode.decode_video` in a pool of worker processes (forkserver, so no
torch state is ever forked) while the main process runs the CLIP forward pass on batches of
frames gathered across videos; a video is written to the cache (one crash-safe commit) as soon
as all its frames are encoded. The main process is the only cache writer.

This module must stay importable without torch: the decode workers import it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
from r2.extract.defaults import CPU_BATCH_FRAMES, GPU_BATCH_FRAMES, QUERY_CHUNK
from r2.extract.inputs import VideoInput
from tqdm import tqdm

log = logging.getLogger(__name__)

JOBS_PER_WORKER = 2  # decode jobs queued per worker, so none idles during a forward pass
CRASH_REASON = "the decoder process died on this file (crash inside FFmpeg/PyAV)"


class SkipError(RuntimeError):
    """Raised in strict mode for the first video that had to be skipped."""


@dataclass(frozen=True)
class DecodeOptions:
    """How frames are sampled; passed to every decode job."""

    fps: float  # clips per second
    image_size: int  # square side S of the frames
    frame_at: str  # "middle" | "start"
    allow_partial: bool  # keep the decodable prefix of a damaged file


@dataclass
class VideoStats:
    """What happened to the videos of one run."""

    done: list[str] = field(default_factory=list)  # vids extracted by this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    partial: list[str] = field(default_factory=list)  # vids stored from a decodable prefix
    frames: int = 0  # frames encoded by this run


def decode_job(path: str, opts: DecodeOptions):
    """Worker side: decode one video. Returns (DecodedVideo, None) or (None, one-line reason)."""
    from r2.extract.decode import VideoError, decode_video

    try:
        video = decode_video(path, opts.fps, opts.image_size, opts.frame_at, opts.allow_partial)
    except VideoError as err:
        return None, str(err).splitlines()[0] if str(err) else type(err).__name__
    if len(video.frames) == 0:
        return None, f"{path}: no frames could be decoded"
    return video, None


def _watch_parent(lifeline) -> None:
    """Worker initializer: exit as soon as the main process is gone (even after SIGKILL).

    Pool workers otherwise wait for work forever once their parent was killed, since each
    holds both ends of its own task queue. `lifeline` is the read end of a pipe whose only
    write end lives in the main process: EOF means the main process has died.
    """

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        os._exit(1)

    threading.Thread(target=watch, name="r2-parent-watch", daemon=True).start()


def _context():
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["r2.extract.decode"])
    return ctx


class DecodeSource:
    """Decodes videos in worker processes (or inline when workers == 0), in input order-ish.

    `results(block)` yields (item, DecodedVideo | None, reason | None). A worker crash
    breaks the pool: the videos that were in flight are retried one at a time in a fresh
    pool, so only the file that really crashes the decoder is skipped.
    """

    def __init__(self, items: list[VideoInput], opts: DecodeOptions, workers: int):
        self.pending = deque(items)
        self.opts = opts
        self.workers = workers
        self.suspects: deque[VideoInput] = deque()  # in flight when a worker died
        self.inflight: dict[Future, VideoInput] = {}
        self.isolating = False  # one suspect alone in the pool
        self.pool = self._new_pool() if workers > 0 and items else None

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = _context()
        lifeline, self._lifeline = ctx.Pipe(duplex=False)  # workers read, only we write
        pool = ProcessPoolExecutor(self.workers, ctx, _watch_parent, (lifeline,))
        self._worker_end = lifeline  # closed with the pool (kept open until workers started)
        return pool

    def _shutdown(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
        self._lifeline.close()  # stragglers of a broken pool exit now
        self._worker_end.close()
        self.pool = None

    @property
    def exhausted(self) -> bool:
        return not (self.pending or self.suspects or self.inflight)

    def prime(self) -> None:
        """Start decoding (workers start now, e.g. while the model loads)."""
        self._fill()

    def _fill(self) -> None:
        if self.pool is None:
            return
        if self.suspects:
            if not self.inflight:
                item = self.suspects.popleft()
                self.inflight[self.pool.submit(decode_job, str(item.path), self.opts)] = item
                self.isolating = True
            return
        self.isolating = False
        while self.pending and len(self.inflight) < self.workers * JOBS_PER_WORKER:
            item = self.pending.popleft()
            self.inflight[self.pool.submit(decode_job, str(item.path), self.opts)] = item

    def _broken(self, item: VideoInput) -> Iterator[tuple]:
        """A worker died: skip `item` if it was alone, else retry everything in flight alone."""
        lost = [item, *self.inflight.values()]
        self.inflight.clear()
        self._shutdown(wait=False)
        self.pool = self._new_pool()
        if self.isolating:
            yield item, None, f"{item.path}: {CRASH_REASON}"
            lost = lost[1:]
        self.suspects.extendleft(reversed(lost))
        log.warning("a decoder process died; retrying %d video(s) one at a time", len(lost))

    def results(self, block: bool) -> Iterator[tuple]:
        """Finished decodes: all that are ready, waiting for at least one when `block`."""
        if self.pool is None:
            if self.pending:
                item = self.pending.popleft()
                yield (item, *decode_job(str(item.path), self.opts))
            return
        self._fill()
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=None if block else 0,
                       return_when=FIRST_COMPLETED)  # fmt: skip
        for future in done:
            item = self.inflight.pop(future, None)
            if item is None:  # dropped by _broken while handling another future
                continue
            try:
                yield (item, *future.result())
            except BrokenProcessPool:
                yield from self._broken(item)
            except Exception as err:  # a bug or an unexpected library error: skip, say so
                log.debug("decoding %s failed", item.path, exc_info=True)
                yield item, None, f"{item.path}: unexpected error: {type(err).__name__}: {err}"
        self._fill()

    def close(self) -> None:
        if self.pool is not None:
            self._shutdown(wait=True)


@dataclass
class _Encoding:
    """A decoded video whose frames are (partly) encoded."""

    item: VideoInput
    video: object  # decode.DecodedVideo
    features: np.ndarray  # (T, K, P, Dv) float16, filled as batches finish
    done: int = 0  # frames encoded so far


class FrameQueue:
    """Decoded frames waiting for the forward pass; batches span video boundaries."""

    def __init__(self) -> None:
        self.videos: deque[_Encoding] = deque()
        self.frames = 0  # frames queued and not yet taken
        self._offset = 0  # frames of the head video already taken

    def put(self, enc: _Encoding) -> None:
        self.videos.append(enc)
        self.frames += len(enc.video.frames)

    def take(self, n: int) -> list[tuple[_Encoding, int, int]]:
        """Up to n frames as (video, start, stop) ranges, in order."""
        parts = []
        while n > 0 and self.videos:
            enc = self.videos[0]
            stop = min(len(enc.video.frames), self._offset + n)
            parts.append((enc, self._offset, stop))
            n -= stop - self._offset
            self.frames -= stop - self._offset
            self._offset = stop
            if stop == len(enc.video.frames):
                self.videos.popleft()
                self._offset = 0
        return parts


def _write(writer, enc: _Encoding, fps: float, stats: VideoStats) -> None:
    """Commit one fully encoded video; a partial one records the length its clips cover."""
    from r2.cache import VideoRecord

    item, video, n_clips = enc.item, enc.video, len(enc.features)
    duration = float(video.duration)
    if video.partial:
        duration = min(duration, n_clips / fps)
        stats.partial.append(item.vid)
        log.warning("%s: damaged; stored the decodable first %.1f s of %.1f s (partial)",
                    item.path, duration, video.duration)  # fmt: skip
    record = VideoRecord(item.vid, duration, n_clips, str(item.path), item.size, item.mtime,
                         bool(video.partial))  # fmt: skip
    writer.add_video(record, enc.features)
    stats.done.append(item.vid)


def _encode_batch(encoder, queue: FrameQueue, n: int, writer, fps: float, stats: VideoStats):
    """Encode up to n queued frames; write every video whose frames are now all encoded."""
    parts = queue.take(n)
    frames = np.concatenate([enc.video.frames[a:b] for enc, a, b in parts])
    features = encoder.encode_frames(frames)  # (n, K, P, Dv) float16
    stats.frames += len(frames)
    row, finished = 0, 0
    for enc, a, b in parts:
        enc.features[a:b] = features[row : row + b - a]
        row += b - a
        enc.done += b - a
        if enc.done == len(enc.features):
            _write(writer, enc, fps, stats)
            enc.video.frames = enc.features = None  # free memory early
            finished += 1
    return finished


def _accept(result: tuple, queue: FrameQueue, encoder, stats: VideoStats, strict: bool, bar):
    item, video, reason = result
    if video is None:
        stats.skipped.append((str(item.path), reason))
        log.warning("skipped %s", reason)
        bar.update(1)
        if strict:
            raise SkipError(f"--strict: {reason}")
        return
    s = encoder.settings
    shape = (len(video.frames), s.k, s.tokens_per_frame, s.video_dim)
    queue.put(_Encoding(item, video, np.empty(shape, np.float16)))


def run_videos(
    encoder, writer, source: DecodeSource, *, batch_frames: int, strict: bool
) -> VideoStats:
    """Encode and write what `source` decodes; bad files are skipped (or fatal when `strict`)."""
    stats = VideoStats()
    queue = FrameQueue()
    start = time.perf_counter()
    total = len(source.pending) + len(source.inflight)
    bar = tqdm(total=total, unit="video", desc="videos", disable=None, dynamic_ncols=True)
    try:
        while True:
            for result in source.results(block=False):
                _accept(result, queue, encoder, stats, strict, bar)
            if queue.frames >= batch_frames or (queue.frames and source.exhausted):
                fps = source.opts.fps
                bar.update(_encode_batch(encoder, queue, batch_frames, writer, fps, stats))
                rate = stats.frames / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} frames/s", refresh=False)
            elif source.exhausted:
                break
            else:
                for result in source.results(block=True):
                    _accept(result, queue, encoder, stats, strict, bar)
    finally:
        bar.close()
    return stats


def run_queries(encoder, writer, queries: list, chunk: int) -> list[str]:
    """Encode and write queries, one commit per `chunk` queries. Returns the truncated qids."""
    from r2.cache import QueryRecord

    truncated = []
    bar = tqdm(total=len(queries), unit="query", desc="queries", disable=None, dynamic_ncols=True)
    try:
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            encoded = encoder.encode_texts([q.text for q in part])
            records = [QueryRecord(q.qid, q.text, e.n_tokens, e.truncated)
                       for q, e in zip(part, encoded, strict=True)]  # fmt: skip
            writer.add_queries(records, [e.features for e in encoded])
            truncated += [r.qid for r in records if r.truncated]
            bar.update(len(part))
    finally:
        bar.close()
    return truncated


def run(summary, videos: list[VideoInput], queries: list, *, model: str, revision, k: int,
        fps: float, frame_at: str, dtype, device: str, workers: int, batch_frames,
        allow_partial: bool, strict: bool):  # fmt: skip
    """Open the cache, then encode the queries and videos it lacks; fills `summary`."""
    from r2.cache import CacheSettings, CacheWriter
    from r2.extract.encode import ClipEncoder

    load = {"k": k, "device": device, "dtype": dtype}
    probe = ClipEncoder.load(model, revision=revision, towers=(), **load)  # settings only
    s = probe.settings
    settings = CacheSettings(s.model_id, s.revision, s.k, float(fps), frame_at, s.image_size,
                             s.mean, s.std, s.dtype, s.tokens_per_frame, s.video_dim,
                             s.text_dim)  # fmt: skip
    with CacheWriter(summary.cache, settings) as writer:
        current = {v.vid for v in videos if writer.video_is_current(v.vid, v.size, v.mtime)}
        todo = [v for v in videos if v.vid not in current]
        summary.videos_cached = [v.vid for v in videos if v.vid in current]
        new_queries = [q for q in queries if not writer.has_query(q.qid, q.text)]
        summary.queries_cached = len(queries) - len(new_queries)
        log.info("writing %s: %d video(s) to extract (%d already cached), %d quer(ies) to "
                 "encode (%d already cached)", summary.cache, len(todo),
                 len(summary.videos_cached), len(new_queries), summary.queries_cached)  # fmt: skip
        towers = ("vision",) * bool(todo) + ("text",) * bool(new_queries)
        if not towers:
            return summary
        opts = DecodeOptions(float(fps), s.image_size, frame_at, allow_partial)
        source = DecodeSource(todo, opts, workers)
        try:
            source.prime()  # decoding overlaps the model load and the queries
            # Pinned to the commit resolved above, so both loads see the same model files.
            encoder = ClipEncoder.load(model, revision=s.revision, towers=towers, **load)
            if new_queries:
                summary.queries_truncated = run_queries(encoder, writer, new_queries, QUERY_CHUNK)
                summary.queries_done = len(new_queries)
            if todo:
                default = GPU_BATCH_FRAMES if encoder.device.type == "cuda" else CPU_BATCH_FRAMES
                stats = run_videos(encoder, writer, source, batch_frames=batch_frames or default,
                                   strict=strict)  # fmt: skip
                summary.videos_done, summary.videos_skipped = stats.done, stats.skipped
                summary.videos_partial, summary.frames = stats.partial, stats.frames
        finally:
            source.close()
    return summary
