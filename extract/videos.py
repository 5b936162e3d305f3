"""The video loop: decoded frames -> CLIP forward in batches -> features streamed to a sink.

Decoded videos (from `workers.DecodeSource`) wait in a `FrameQueue`; batches of
`batch_frames` frames are taken across video boundaries, in order, and encoded. Each batch's
features go straight to the sink's stream of their video (`CacheWriter.video_stream`: rows
written past the committed counts, the video committed ONCE when its last frame is encoded;
a kill or an error before that leaves no trace of it). Memory therefore holds one batch of
features, never a whole video's: flat in the video's length. Since frames are encoded in
order, at most one video is being streamed at any time. The main process's budget: the
model, at most HIGH_WATER_BATCHES batches of queued frames plus the decodes in flight
(each under spill.SPILL_BYTES; longer videos are read from disk batch by batch) and one
batch's activations: under 1.35 GB for ViT-B/32 on CPU from 30 s to 2 h
(`benchmarks/extract.py --memory`, README: 1.07-1.32 GB over seven runs at 30 min).

The sink is anything with `video_stream(record) -> stream` (write / update / commit /
abort), as `r2.cache.CacheWriter`; batch prediction (r2/batch.py) collects a video there.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from r2.errors import UsageError
from r2.extract import spill
from r2.extract.inputs import VideoInput

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
    """A decoded video whose frames are being encoded (and streamed to the sink)."""

    item: VideoInput
    video: object  # decode.DecodedVideo
    stream: object | None = None  # the sink's stream, open from its first encoded frame
    done: int = 0  # frames encoded (and written) so far


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


class _Streams:
    """Opens, feeds and commits each video's stream on the sink; aborts the open one on error."""

    def __init__(self, sink, fps: float, stats: VideoStats) -> None:
        self.sink, self.fps, self.stats = sink, fps, stats
        self.open: _Encoding | None = None

    def write(self, enc: _Encoding, features: np.ndarray) -> bool:
        """Append `features` to `enc`'s video; commits it when complete (returns True)."""
        from r2.cache import VideoRecord

        if enc.stream is None:
            item, video = enc.item, enc.video
            record = VideoRecord(item.vid, float(video.duration), len(video.frames),
                                 str(item.path), item.size, item.mtime, False,
                                 item.fps)  # fmt: skip
            enc.stream, self.open = self.sink.video_stream(record), enc
        enc.stream.write(features)
        enc.done += len(features)
        if enc.done < len(enc.video.frames):
            return False
        self._commit(enc)
        return True

    def _commit(self, enc: _Encoding) -> None:
        item, video = enc.item, enc.video
        if video.partial:  # the clips cover this much of the damaged file
            duration = min(float(video.duration), enc.done / (item.fps or self.fps))
            enc.stream.update(partial=True, duration=duration)
            self.stats.partial.append(item.vid)
            log.warning("%s: damaged; stored the decodable first %.1f s of %.1f s (partial)",
                        item.path, duration, video.duration)  # fmt: skip
        enc.stream.commit()
        self.open = None
        self.stats.done.append(item.vid)
        spill.release(video.frames)  # a long video's spill file
        video.frames = None  # free memory early

    def abort(self) -> None:
        """Discard the video being streamed (nothing of it becomes visible)."""
        if self.open is not None and self.open.stream is not None:
            self.open.stream.abort()
        self.open = None


def _encode_batch(encoder, queue: FrameQueue, n: int, streams: _Streams, stats: VideoStats):
    """Encode up to n queued frames and stream them; returns how many videos completed."""
    parts = queue.take(n)
    frames = np.concatenate([enc.video.frames[a:b] for enc, a, b in parts])
    features = encoder.encode_frames(frames, batch=len(frames))  # (n, K, P, Dv) float16
    stats.frames += len(frames)
    row, finished = 0, 0
    for enc, a, b in parts:
        finished += streams.write(enc, features[row : row + b - a])
        row += b - a
    return finished


def _accept(result: tuple, queue: FrameQueue, stats: VideoStats, strict: bool, bar) -> None:
    item, video, reason = result
    if video is None:
        stats.skipped.append((str(item.path), reason))
        log.warning("skipped %s", reason)
        bar.update(1)
        if strict:
            raise SkipError(f"--strict: {reason}")
        return
    queue.put(_Encoding(item, video))


def run_videos(encoder, sink, source, *, batch_frames: int, strict: bool) -> VideoStats:
    """Encode what `source` decodes and stream it to `sink`; bad files are skipped (or fatal
    when `strict`). On any exception the video being streamed is discarded."""
    stats, queue = VideoStats(), FrameQueue()
    streams = _Streams(sink, source.opts.fps, stats)
    start = time.perf_counter()
    total = len(source.pending) + len(source.inflight)
    bar = tqdm(total=total, unit="video", desc="videos", disable=None, dynamic_ncols=True)
    try:
        while True:
            source.paused = queue.frames >= HIGH_WATER_BATCHES * batch_frames  # bounds memory
            for result in source.results(block=False):
                _accept(result, queue, stats, strict, bar)
            if queue.frames >= batch_frames or (queue.frames and source.exhausted):
                bar.update(_encode_batch(encoder, queue, batch_frames, streams, stats))
                rate = stats.frames / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} frames/s", refresh=False)
            elif source.exhausted:
                break
            else:
                for result in source.results(block=True):
                    _accept(result, queue, stats, strict, bar)
    finally:
        streams.abort()
        for enc in queue.videos:  # decoded but never encoded (an error or Ctrl-C)
            spill.release(enc.video.frames)
        bar.close()
    return stats
