"""The extraction loop: decode in worker processes, encode in batches, write from one process.

Videos are decoded in worker processes (`workers.DecodeSource`) while this process runs the
CLIP forward pass on batches of frames gathered across videos; a video is written to the
cache (one crash-safe commit) as soon as all its frames are encoded. This process is the only
cache writer. torch is imported lazily (through `encode`), after the workers exist.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r2.errors import UsageError
from r2.extract import spill
from r2.extract.defaults import CPU_BATCH_FRAMES, GPU_BATCH_FRAMES, QUERY_CHUNK
from r2.extract.inputs import VideoInput
from r2.extract.workers import DecodeOptions, DecodeSource

log = logging.getLogger(__name__)

HIGH_WATER_BATCHES = 4  # stop starting decodes while this many batches of frames wait


class SkipError(UsageError, RuntimeError):
    """Raised in strict mode for the first video that had to be skipped."""


@dataclass
class VideoStats:
    """What happened to the videos of one run."""

    done: list[str] = field(default_factory=list)  # vids extracted by this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    partial: list[str] = field(default_factory=list)  # vids stored from a decodable prefix
    frames: int = 0  # frames encoded by this run


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
    fps = item.fps or fps  # the video's own clip rate (annotation "fps") when it has one
    duration = float(video.duration)
    if video.partial:
        duration = min(duration, n_clips / fps)
        stats.partial.append(item.vid)
        log.warning("%s: damaged; stored the decodable first %.1f s of %.1f s (partial)",
                    item.path, duration, video.duration)  # fmt: skip
    record = VideoRecord(item.vid, duration, n_clips, str(item.path), item.size, item.mtime,
                         bool(video.partial), item.fps)  # fmt: skip
    writer.add_video(record, enc.features)
    stats.done.append(item.vid)


def _encode_batch(encoder, queue: FrameQueue, n: int, writer, fps: float, stats: VideoStats):
    """Encode up to n queued frames; write every video whose frames are now all encoded."""
    parts = queue.take(n)
    frames = np.concatenate([enc.video.frames[a:b] for enc, a, b in parts])
    features = encoder.encode_frames(frames, batch=len(frames))  # (n, K, P, Dv) float16
    stats.frames += len(frames)
    row, finished = 0, 0
    for enc, a, b in parts:
        enc.features[a:b] = features[row : row + b - a]
        row += b - a
        enc.done += b - a
        if enc.done == len(enc.features):
            _write(writer, enc, fps, stats)
            spill.release(enc.video.frames)  # a long video's spill file
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
            source.paused = queue.frames >= HIGH_WATER_BATCHES * batch_frames  # bounds memory
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
                             s.text_dim, s.model_fingerprint, s.tokenizer_fingerprint)  # fmt: skip
    with CacheWriter(summary.cache, settings) as writer:
        current = {v.vid for v in videos
                   if writer.video_is_current(v.vid, v.size, v.mtime, v.fps)}  # fmt: skip
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
        spill_dir = _spill_dir(summary.cache)  # guarded by the cache's lock: ours alone
        opts = DecodeOptions(float(fps), s.image_size, frame_at, allow_partial, str(spill_dir),
                             spill.SPILL_BYTES)  # fmt: skip
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
            shutil.rmtree(spill_dir, ignore_errors=True)
    return summary


def _spill_dir(cache: Path) -> Path:
    """`<cache>.frames/` for long videos' decoded frames (next to the cache, not in a /tmp
    that may be RAM); leftovers of a killed run are removed first."""
    folder = Path(cache).with_name(Path(cache).name + ".frames")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
