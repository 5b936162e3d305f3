"""Exact, fast frame sampling: one preprocessed RGB frame per clip of a video file.

The frames are the ones the original features were made from (spec §1): ``ffmpeg -i VIDEO
-vf fps=FPS,scale=W:H,crop=S:S:X:Y -pix_fmt rgb24``, reproduced exactly:

- which frame each clip takes: ffmpeg's fps filter rule, r2.extract.sampling. In almost every
  file ``n_clips = round(duration × fps)``, halves up (150 s at 0.5 fps gives 75 clips, exactly
  5 s gives 3), with ``duration`` the span of the video stream, first frame to the end of the
  last;
- the geometry (autorotate, swscale bicubic to shorter side ``S``, centre crop ``S × S``,
  rgb24) by libavfilter itself: r2.extract.filters;
- opening the file, pass 1 and the plan: r2.extract.packets.

Speed without changing a single selected frame: pass 1 demuxes packets (no decoding) to get
every frame's timestamp and keyframe flag and computes the selection; pass 2 decodes, for each
keyframe interval holding a selected frame, from its keyframe up to the last selected frame
(then drains the decoder), seeking over gaps, and converts only selected frames to RGB.
Streams where packets may not map one-to-one to frames (missing or repeated timestamps,
packed B-frames, leading frames before the first keyframe, older codecs) are decoded
sequentially instead, with libavcodec's best-effort timestamps, which is what ffmpeg sees.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from r2.extract.filters import _Preprocess
from r2.extract.filters import _scaled_size as _scaled_size  # re-exported for the tests
from r2.extract.packets import (
    _NOPTS,
    SEEK_MIN_PACKETS,
    VideoError,
    VideoProbe,
    _frame_duration,
    _is_real,
    _plan,
    _reason,
    _scan,
    _Source,
    _Table,
)
from r2.extract.sampling import FRAME_AT, _BestEffort, _FpsCursor, _tick, as_rate, select_frames
from r2.extract.spill import SPILL_BYTES, SpilledFrames, spill_frames

__all__ = [
    "FRAME_AT",
    "ClipFrames",
    "DecodedVideo",
    "VideoError",
    "VideoProbe",
    "as_rate",
    "decode_video",
    "iter_clip_frames",
    "probe_video",
    "select_frames",
]

logger = logging.getLogger(__name__)


@dataclass
class DecodedVideo:
    """Preprocessed frames of one video, one per clip."""

    frames: np.ndarray | SpilledFrames  # (T, S, S, 3) uint8 RGB (on disk for long videos)
    duration: float
    n_clips: int
    partial: bool  # decoding stopped early (allow_partial): frames are the first n_clips clips
    path: str


class _FastPathError(Exception):
    """Packet timestamps turned out not to describe the decoded frames."""


class _PacketReader:
    """Pass 2: packets by decoding index, demuxing through short gaps and seeking over long ones."""

    def __init__(self, src: _Source, table: _Table) -> None:
        self.src, self.table = src, table
        self._order = np.argsort(table.pts, kind="stable")  # pts are unique on the fast path
        self._sorted = table.pts[self._order]
        self.packets: Iterator[av.Packet] | None = None
        self.pending: av.Packet | None = None
        self.next = 0

    def index_of(self, pts: int | None) -> int | None:
        """Decoding index of the packet with this pts (None: no such packet)."""
        i = int(np.searchsorted(self._sorted, _NOPTS if pts is None else pts))
        found = pts is not None and i < len(self._sorted) and self._sorted[i] == pts
        return int(self._order[i]) if found else None

    def decode(self, start: int, end: int) -> Iterator[av.VideoFrame]:
        """Every frame of packets start..end (decoding order), then drains the decoder."""
        self._goto(start)
        cc = self.src.stream.codec_context
        for _ in range(start, end + 1):
            yield from cc.decode(self._read())
        yield from cc.decode(None)
        cc.flush_buffers()

    def _goto(self, target: int) -> None:
        if self.packets is None or not self.next <= target < self.next + SEEK_MIN_PACKETS:
            self._seek(target)
        while self.next < target:
            self._read()

    def _seek_stamp(self, target: int) -> int:
        """Timestamp to seek to: demuxers index keyframes by dts or pts, so the smaller."""
        t = self.table
        return int(t.pts[target] if t.dts[target] == _NOPTS else min(t.pts[target], t.dts[target]))

    def _seek(self, target: int) -> None:
        stamp, landed = self._seek_stamp(target), None
        try:
            self.src.container.seek(stamp, stream=self.src.stream, backward=True)
            self.packets = self.src.container.demux(self.src.stream)
            self.pending = self._next_real()
            landed = None if self.pending is None else self.index_of(self.pending.pts)
        except av.FFmpegError as exc:
            logger.debug("%s: seek failed (%s)", self.src.path, _reason(exc))
        if landed is None or landed > target:
            logger.debug(
                "%s: seek to packet %d landed at %s; rereading", self.src.path, target, landed
            )
            self.src.reopen()
            self.packets, self.pending, landed = self.src.container.demux(self.src.stream), None, 0
        self.next = landed

    def _next_real(self) -> av.Packet | None:
        return next((p for p in self.packets if _is_real(p)), None)

    def _read(self) -> av.Packet:
        pkt = self.pending if self.pending is not None else self._next_real()
        self.pending = None
        if pkt is None or pkt.pts != self.table.pts[self.next]:
            raise _FastPathError("the second read of the packets differs from the first")
        self.next += 1
        return pkt


# ----------------------------------------------------------------------------- decoding


class ClipFrames(Iterator[np.ndarray]):
    """One preprocessed frame per clip, decoded lazily in clip order (see iter_clip_frames).

    Attributes:
        probe: the plan from pass 1 (n_clips, duration, display size...).
        duration: seconds; updated if decoding every frame finds different timestamps.
        partial: decoding stopped early and allow_partial kept the frames obtained.
        n_yielded: frames yielded so far.
    """

    def __init__(self, path, fps, image_size, frame_at, allow_partial, threads, method) -> None:
        if frame_at not in FRAME_AT:
            raise ValueError(f"frame_at must be one of {FRAME_AT}, got {frame_at!r}")
        if method not in ("auto", "sequential"):
            raise ValueError(f"method must be 'auto' or 'sequential', got {method!r}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.path, self.rate, self.frame_at = os.fspath(path), as_rate(fps), frame_at
        self.allow_partial, self.n_yielded = allow_partial, 0
        self._src = _Source(self.path, threads)
        try:
            self._table = _scan(self._src)
            self._plan = _plan(self._src, self._table, self.rate, frame_at)
            if self._table.error and not allow_partial:
                kept = self._plan.probe.duration
                raise VideoError(f"{self.path}: {self._table.error} (the first {kept:.1f} s "
                                 "decode)", partial_s=kept)  # fmt: skip
        except BaseException:
            self._src.close()
            raise
        self.probe, self.duration = self._plan.probe, self._plan.probe.duration
        self.partial = self._table.error is not None
        self._pre = _Preprocess(
            self._src.width, self._src.height, int(image_size), self._src.time_base
        )
        self._frames = self._generate(method)

    def __next__(self) -> np.ndarray:
        return next(self._frames)

    def close(self) -> None:
        """Stop decoding and release the file (also done when iteration ends)."""
        self._frames.close()
        self._src.close()

    def _generate(self, method: str) -> Iterator[np.ndarray]:
        done: list[int] = []  # timestamp of each clip's frame yielded so far
        try:
            if method == "auto" and self._plan.runs is None:
                logger.debug("%s: decoding every frame: %s", self.path, self._plan.reason)
            if method == "auto" and self._plan.runs is not None:
                try:
                    for stamp, rgb in self._fast():
                        done.append(stamp)
                        self.n_yielded += 1
                        yield rgb
                    return
                except _FastPathError as exc:
                    logger.warning("%s: %s; decoding every frame instead", self.path, exc)
            for stamp, rgb in self._sequential(done):
                done.append(stamp)
                self.n_yielded += 1
                yield rgb
        except (av.FFmpegError, OSError) as exc:
            where = f"after {len(done)} of {self.probe.n_clips} clips"
            if not (self.allow_partial and done):
                kept = float(len(done) / self.rate) if done else None
                raise VideoError(f"{self.path}: decoding failed {where}: {_reason(exc)}",
                                 partial_s=kept) from None  # fmt: skip
            logger.warning(
                "%s: decoding failed %s (%s); keeping them", self.path, where, _reason(exc)
            )
            self.partial = True
        finally:
            self._src.close()

    def _fast(self) -> Iterator[tuple[int, np.ndarray]]:
        """Decode only the needed keyframe intervals, each up to its last needed frame."""
        reader = _PacketReader(self._src, self._table)
        clip_pts = self._table.pts[self._plan.clip_pkt].tolist()
        wanted, ready, nxt = set(clip_pts), {}, 0
        for start, end in self._plan.runs:
            for frame in reader.decode(start, end):
                stamp = frame.pts
                if reader.index_of(stamp) is None:
                    raise _FastPathError(f"decoded timestamp ({stamp}) matches no packet")
                pending = nxt < len(clip_pts) and stamp >= clip_pts[nxt]
                if pending and stamp in wanted and stamp not in ready:
                    ready[stamp] = self._pre(frame)
                while nxt < len(clip_pts) and clip_pts[nxt] in ready:
                    stamp, nxt = clip_pts[nxt], nxt + 1
                    again = nxt < len(clip_pts) and clip_pts[nxt] == stamp
                    yield stamp, (ready[stamp] if again else ready.pop(stamp))
        if nxt < len(clip_pts):
            raise _FastPathError(f"no frame came out for timestamp {clip_pts[nxt]}")

    def _sequential(self, done: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Decode every frame with ffmpeg's best-effort timestamps and its fps filter online."""
        src = self._src
        src.reopen()
        cc, tb, best = src.stream.codec_context, src.time_base, _BestEffort()
        k, b = tb.numerator * self.rate.numerator, tb.denominator * self.rate.denominator
        cursor, held, held_at, first_at, gap, clip = None, None, 0, 0, 0, 0

        def emit(n: int) -> Iterator[tuple[int, np.ndarray]]:
            nonlocal clip
            rgb = None
            for _ in range(n):
                if clip < len(done) and done[clip] != held_at:
                    raise VideoError(f"{self.path}: packet and frame timestamps disagree")
                if clip >= len(done):
                    rgb = self._pre(held) if rgb is None else rgb
                    yield held_at, rgb
                clip += 1

        for frame in self._all_frames(cc):
            stamp = best(frame.pts, frame.dts)
            if stamp is None:  # no timestamp at all: right after the previous frame
                stamp = src.origin if held is None else held_at + max(gap, 1)
            if cursor is None:
                cursor, first_at = _FpsCursor(_tick((stamp - src.origin) * k, b)), stamp
            else:
                yield from emit(cursor.fill(_tick((stamp - src.origin) * k, b, self.frame_at)))
                gap = stamp - held_at
            held, held_at = frame, stamp
        if held is None:
            raise VideoError(f"{self.path}: no frame of the video stream could be decoded")
        end = held_at + _frame_duration(held.duration or 0, gap, src)
        first_tick = cursor.next - cursor.count
        yield from emit(cursor.fill(max(_tick((end - src.origin) * k, b), first_tick + 1)))
        self.duration = float((end - first_at) * tb)

    def _all_frames(self, cc: av.VideoCodecContext) -> Iterator[av.VideoFrame]:
        for pkt in self._src.container.demux(self._src.stream):
            if _is_real(pkt):
                yield from cc.decode(pkt)
        yield from cc.decode(None)


def iter_clip_frames(
    path: str | os.PathLike,
    fps: float,
    image_size: int,
    frame_at: str = "middle",
    allow_partial: bool = False,
    *,
    threads: int = 0,
    method: str = "auto",
) -> ClipFrames:
    """Stream one preprocessed frame per clip, in clip order, without holding the video.

    Args:
        path: video file.
        fps: clip rate (0.5 for 2-second clips).
        image_size: output side S.
        frame_at: "middle" (the original's frames) or "start".
        allow_partial: when decoding fails midway, end the iteration with the frames obtained
            (``.partial`` becomes True) instead of raising.
        threads: decoder threads (0: FFmpeg's choice).
        method: "auto" (decode only what the selection needs) or "sequential" (decode every
            frame; the reference the fast path is tested against).

    Returns:
        An iterator of (S, S, 3) uint8 RGB arrays with ``.probe``, ``.partial``, ``.duration``.

    Raises:
        VideoError: the file cannot be opened, has no video frames, or fails to decode.
    """
    return ClipFrames(path, fps, image_size, frame_at, allow_partial, threads, method)


def decode_video(
    path: str | os.PathLike,
    fps: float,
    image_size: int,
    frame_at: str = "middle",
    allow_partial: bool = False,
    *,
    threads: int = 0,
    method: str = "auto",
    spill_dir: str | os.PathLike | None = None,
    spill_bytes: int = SPILL_BYTES,
) -> DecodedVideo:
    """Decode one preprocessed frame per clip into an array (see iter_clip_frames).

    Args:
        spill_dir: when given, the frames of a video over `spill_bytes` bytes are written to a
            raw file there as they are decoded (memory stays flat in the video's length).

    Returns:
        DecodedVideo with frames (T, S, S, 3) uint8 RGB (an array or `SpilledFrames`).

    Raises:
        VideoError: as iter_clip_frames.
    """
    clips = iter_clip_frames(
        path, fps, image_size, frame_at, allow_partial, threads=threads, method=method
    )
    if spill_dir is not None and clips.probe.n_clips * image_size**2 * 3 > spill_bytes:
        spilled = spill_frames(clips, spill_dir, image_size)
        return DecodedVideo(spilled, clips.duration, spilled.n, clips.partial, clips.path)
    frames = np.empty((clips.probe.n_clips, image_size, image_size, 3), np.uint8)
    n = 0
    for n, rgb in enumerate(clips, start=1):
        if n > len(frames):  # sequential decoding found more clips than the packets said
            frames = np.concatenate([frames, np.empty_like(frames)])
        frames[n - 1] = rgb
    frames = frames[:n] if n == len(frames) else frames[:n].copy()
    return DecodedVideo(frames, clips.duration, n, clips.partial, clips.path)


def probe_video(path: str | os.PathLike, fps: float, frame_at: str = "middle") -> VideoProbe:
    """Duration, clip count, display size, rotation and stream of a video.

    Reads packet headers only, plus the first frame (PyAV exposes the display matrix on
    decoded frames only). Raises VideoError like decode_video.
    """
    if frame_at not in FRAME_AT:
        raise ValueError(f"frame_at must be one of {FRAME_AT}, got {frame_at!r}")
    src = _Source(os.fspath(path), threads=1)
    try:
        table = _scan(src)
        plan = _plan(src, table, as_rate(fps), frame_at)
        if table.error:
            kept = plan.probe.duration
            raise VideoError(f"{src.path}: {table.error} (the first {kept:.1f} s decode)", kept)
        return plan.probe
    finally:
        src.close()
