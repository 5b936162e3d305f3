"""Pass 1 of decoding: open a video, list its stream's packets without decoding, plan the clips.

The video stream is the one ffmpeg picks by default (largest, default-flagged first; never
cover art). Demuxing packets (no decoding) gives every frame's timestamp and keyframe flag, and
the first frame's display matrix; the plan applies r2.extract.sampling's rule to them: which
packet holds each clip's frame (the VideoProbe: duration, clip count, display size) and the
packet ranges pass 2 (r2.extract.decode) decodes, each selected frame's keyframe interval up to
the frame. Streams where packets may not map one-to-one to frames (missing or repeated
timestamps, packed B-frames, leading frames before the first keyframe, older codecs) get no
ranges: they are decoded sequentially.
"""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.stream import Discard, Disposition

from r2.errors import UsageError
from r2.extract.damage import DemuxerLog, declared_shortfall
from r2.extract.filters import _TRANSPOSING, _display_matrix, _orientation
from r2.extract.sampling import _assign, _tick

logger = logging.getLogger(__name__)

SEEK_MIN_PACKETS = 96  # shorter gaps are demuxed through (no decoding) instead of seeking
DEFAULT_STREAM_BONUS = 5_000_000  # ffmpeg's stream choice: width*height (+ this if default)
FAST_PATH_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg2video", "mjpeg", "prores", "ffv1", "png"}
    | {"rawvideo", "dnxhd", "utvideo", "qtrle"}
)
_NOPTS = -(2**63)


PARTIAL_HINT = "(--allow-partial keeps the part that decodes)"


class VideoError(UsageError):
    """A video cannot be sampled; the message is one line naming the file and the reason.

    `partial_s`: seconds of the video that do decode, when the file is damaged after a
    usable beginning (allow_partial would keep them); None when nothing would be kept, so
    the --allow-partial hint is given only where it helps (`hint`).
    """

    def __init__(self, message: str, partial_s: float | None = None) -> None:
        super().__init__(message)
        self.partial_s = partial_s

    def __reduce__(self):  # keeps partial_s across processes
        return (type(self), (str(self), self.partial_s))

    def hint(self, allow_partial: bool) -> str:
        """The message, plus the --allow-partial hint when that option would help."""
        helps = self.partial_s is not None and self.partial_s > 0 and not allow_partial
        return f"{self} {PARTIAL_HINT}" if helps else str(self)


@dataclass(frozen=True)
class VideoProbe:
    """What a video's clips will be, from packet headers (and the first frame's display matrix)."""

    path: str
    stream_index: int  # the video stream ffmpeg would pick
    codec: str
    fps: float  # clip rate n_clips refers to
    duration: float  # seconds, first frame to the end of the last frame
    n_clips: int
    start: float  # first frame's time, seconds after the container start
    n_frames: int
    width: int  # display size (after rotation)
    height: int
    rotation: int  # display matrix rotation, degrees counter-clockwise (ffprobe's `rotation`)


# ------------------------------------------------------------------- opening and pass 1


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _open(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoError(f"{path}: file not found")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: cannot open as a video: {_reason(exc)}") from None


def _choose_stream(container: av.container.InputContainer, path: str) -> av.VideoStream:
    """The video stream ffmpeg picks by default (largest, default-flagged first); no cover art."""
    videos = [s for s in container.streams if s.type == "video"]
    real = [s for s in videos if not s.disposition & Disposition.attached_pic]
    if not real:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        what = "only a cover picture" if videos else f"streams: {kinds}"
        raise VideoError(f"{path}: no video stream ({what})")

    def score(s: av.VideoStream) -> int:
        cc, default = s.codec_context, bool(s.disposition & Disposition.default)
        return (cc.width * cc.height if cc else 0) + DEFAULT_STREAM_BONUS * default

    return max(real, key=score)


class _Source:
    """An open container and its chosen video stream (reopened when a seek goes wrong)."""

    def __init__(self, path: str, threads: int) -> None:
        self.path, self.threads = path, threads
        self.container = _open(path)
        try:
            self.stream = _choose_stream(self.container, path)
            if self.stream.codec_context is None:
                raise VideoError(f"{path}: no decoder for its video codec")
            if self.stream.time_base is None:
                raise VideoError(f"{path}: video stream has no time base")
        except VideoError:
            self.container.close()
            raise
        self.index, self.time_base = self.stream.index, self.stream.time_base
        cc = self.stream.codec_context
        self.codec, self.width, self.height = cc.name, cc.width, cc.height
        start, tb = self.container.start_time, self.time_base  # ffmpeg subtracts the start
        self.origin = 0 if start is None else _tick(start * tb.denominator, 10**6 * tb.numerator)
        self._configure()

    def _configure(self) -> None:
        for s in self.container.streams:
            if s.index != self.index:
                s.discard = Discard.all
        self.stream.codec_context.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self.threads

    def reopen(self) -> None:
        self.container.close()
        self.container = _open(self.path)
        self.stream = self.container.streams[self.index]
        self._configure()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def _is_real(pkt: av.Packet) -> bool:
    return pkt.size > 0 or pkt.pts is not None or pkt.dts is not None  # not PyAV's flush packet


@dataclass
class _Table:
    """Pass 1: every packet of the video stream in decoding order, without decoding."""

    pts: np.ndarray  # int64, _NOPTS when missing
    dts: np.ndarray
    dur: np.ndarray
    key: np.ndarray  # bool
    discard: np.ndarray  # bool: the decoder drops these frames (edit-list pre-roll)
    matrix: np.ndarray | None  # display matrix of the first frame
    error: str | None  # demuxing stopped early with this error


def _scan(src: _Source) -> _Table:
    """Pass 1: every packet's timestamps and flags; damage (an exception, an error logged by
    the demuxer, fewer packets than the header declares) ends the table at the last good
    packet and is recorded in `error` (r2.extract.damage)."""
    cols = [array("q"), array("q"), array("q")]
    key, discard, error = bytearray(), bytearray(), None
    first = _FirstFrame(src.stream.codec_context)
    demuxer = DemuxerLog(src.container)
    with demuxer.capture():
        try:
            for pkt in src.container.demux(src.stream):
                demuxer.mark(len(key))
                if demuxer.first is not None:
                    break
                if not _is_real(pkt):
                    continue
                for col, v in zip(cols, (pkt.pts, pkt.dts, pkt.duration), strict=True):
                    col.append(_NOPTS if v is None else v)
                key.append(pkt.is_keyframe)
                discard.append(pkt.is_discard)
                if first.pending:
                    first.feed(pkt)
        except (av.FFmpegError, OSError) as exc:
            error = f"cannot read the file: {_reason(exc)}"
        demuxer.mark(len(key))  # logged while reading the end
    pts, dts, dur = (
        np.frombuffer(c, dtype=np.int64) if len(c) else np.zeros(0, np.int64) for c in cols
    )
    flags = [np.frombuffer(bytes(b), dtype=np.bool_) for b in (key, discard)]
    if error is None and demuxer.first is not None:
        error = f"damaged: the demuxer reports {demuxer.first!r}"
    if error is None:
        error = _shortfall(src, pts, dur)
    return _Table(pts, dts, dur, flags[0], flags[1], first.matrix, error)


def _shortfall(src: _Source, pts: np.ndarray, dur: np.ndarray) -> str | None:
    """`declared_shortfall` of the packets read, as a damage reason (None: no shortfall)."""
    known = pts != _NOPTS
    if not known.any():
        return None
    end = int((pts[known] + np.maximum(dur[known], 0)).max()) - src.origin
    why = declared_shortfall(src.container, src.stream, len(pts), float(end * src.time_base))
    return None if why is None else f"damaged or cut short: {why}"


class _FirstFrame:
    """Decodes the stream's first frame during pass 1, for its display matrix only."""

    def __init__(self, cc: av.VideoCodecContext) -> None:
        self.cc, self.pending, self.matrix, self.fed = cc, True, None, 0

    def feed(self, pkt: av.Packet) -> None:
        self.fed += 1
        frames, drained = [], False
        try:
            frames = self.cc.decode(pkt)
            if not frames and (pkt.is_keyframe or self.fed >= SEEK_MIN_PACKETS):
                frames, drained = self.cc.decode(None), True
        except av.FFmpegError as exc:
            logger.debug("first frame not decodable (%s); rotation unknown", _reason(exc))
            drained = True
        if frames:
            self.matrix = _display_matrix(frames[0])
        if frames or drained:
            self.pending = False
            self.cc.flush_buffers()


# ------------------------------------------------------------------------------ planning


@dataclass
class _Plan:
    probe: VideoProbe
    clip_pkt: list[int]  # packet index of each clip's frame
    runs: list[tuple[int, int]] | None  # packet ranges to decode; None: decode sequentially
    reason: str | None  # why decoding is sequential


def _frame_duration(duration: int, gap: int, src: _Source) -> int:
    """ffmpeg's estimate of the last frame's duration, in time base units."""
    if duration > 0:
        return duration
    if gap > 0:
        return gap
    rate, tb = src.stream.average_rate or src.stream.guessed_rate, src.time_base
    if rate:
        one = _tick(tb.denominator * rate.denominator, tb.numerator * rate.numerator)
        if one > 0:
            return one
    return 1


def _scaled(rel: np.ndarray, k: int, b: int) -> np.ndarray:
    """rel * k, as int64 when that cannot overflow in _tick, else as Python ints."""
    if rel.size and int(np.abs(rel).max()) * k * 2 + 2 * b >= 2**62:
        return rel.astype(object) * k
    return rel * k


def _plan(src: _Source, table: _Table, rate: Fraction, frame_at: str) -> _Plan:
    frames = np.flatnonzero(~table.discard)
    ts = np.where(table.pts[frames] != _NOPTS, table.pts[frames], table.dts[frames])
    frames, ts = frames[ts != _NOPTS], ts[ts != _NOPTS]
    if not len(frames):
        stop = f" (demuxing stopped: {table.error})" if table.error else ""
        raise VideoError(f"{src.path}: the video stream has no frames{stop}")
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    gap = int(ts[-1] - ts[-2]) if len(ts) > 1 else 0
    end = int(ts[-1]) + _frame_duration(int(table.dur[frames[order[-1]]]), gap, src)
    tb = src.time_base
    k, b = tb.numerator * rate.numerator, tb.denominator * rate.denominator
    scaled = _scaled(ts - src.origin, k, b)
    first_tick, end_tick = _tick(int(scaled[0]), b), _tick((end - src.origin) * k, b)
    clip_pkt = frames[order[_assign(_tick(scaled, b, frame_at).tolist(), first_tick, end_tick)]]
    rotation, steps = _orientation(table.matrix)
    transposed = not _TRANSPOSING.isdisjoint(steps)
    probe = VideoProbe(
        path=src.path,
        stream_index=src.index,
        codec=src.codec,
        fps=float(rate),
        duration=float((end - int(ts[0])) * tb),
        n_clips=len(clip_pkt),
        start=float((int(ts[0]) - src.origin) * tb),
        n_frames=len(frames),
        width=src.height if transposed else src.width,
        height=src.width if transposed else src.height,
        rotation=rotation,
    )
    reason = _why_sequential(src, table, frames)
    return _Plan(probe, clip_pkt.tolist(), None if reason else _runs(table, clip_pkt), reason)


def _why_sequential(src: _Source, table: _Table, frames: np.ndarray) -> str | None:
    """Why packet timestamps might not describe the decoded frames exactly (None: they do)."""
    if src.codec not in FAST_PATH_CODECS:
        return f"{src.codec} packets may not map one-to-one to frames"
    if (table.pts == _NOPTS).any():
        return "some packets have no timestamp"
    if len(np.unique(table.pts)) != len(table.pts):
        return "packets repeat timestamps"
    if not table.key[0]:
        return "the stream does not start with a keyframe"
    if (table.pts[frames] < table.pts[0]).any():
        return "frames precede the first keyframe"
    return None


def _runs(table: _Table, clip_pkt: np.ndarray) -> list[tuple[int, int]]:
    """Packet ranges to decode: each needed frame's keyframe interval up to the frame.

    A leading frame (shown before its interval's keyframe, open GOP) may reference the
    previous interval, so its range starts one keyframe earlier. Touching ranges merge.
    """
    n = len(table.pts)
    gop = np.maximum.accumulate(np.where(table.key, np.arange(n), 0))
    spans = []
    for p in sorted(set(clip_pkt.tolist())):
        start = int(gop[p])
        if table.pts[p] < table.pts[start] and start > 0:
            start = int(gop[start - 1])
        spans.append((start, p))
    runs: list[list[int]] = []
    for start, end in sorted(spans):
        if runs and start <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(s, e) for s, e in runs]
