"""Exact, fast frame sampling: one preprocessed RGB frame per clip of a video file.

The frames are the ones the original features were made from (spec §1): ``ffmpeg -i VIDEO
-vf fps=FPS,scale=W:H,crop=S:S:X:Y -pix_fmt rgb24``. ffmpeg's rule, reproduced exactly
(tests compare it with libavfilter's own fps filter):

- Time ``t`` of a frame: its presentation timestamp on the chosen video stream minus the
  container's start time (ffmpeg's default input offset), as an exact rational.
- ``end``: the last frame's ``t`` plus its duration (packet duration; else the gap to the
  previous frame; else 1 / frame rate): the timestamp ffmpeg closes the filter input with.
- Clip ticks run from ``n0 = round(t_first·fps)`` to ``round(end·fps) - 1``, rounding halves
  up, so ``T = round(end·fps) - round(t_first·fps)``, at least 1.
- ``duration = end - t_first``, the span of the video stream. The video starts at the
  container start in almost every file (always for video-only files), and then
  ``T = round(duration × fps)``: 150 s at 30 fps gives 75 clips at 0.5 fps, 30.7 s gives 15,
  exactly 5 s gives 3 (half up). Stream/container duration fields are not used: they are often
  missing (Matroska) or cover the audio, and ffmpeg's filter never sees them.
- Clip ``i`` (tick ``n = n0 + i``) takes the last frame with ``t < (n + 0.5) / fps``
  (``frame_at="middle"``, the original) or ``t <= n / fps`` (``"start"``, the frame on screen
  when the clip starts); the first frame when there is none.

Geometry, by ffmpeg's own filters (libavfilter), as its command line chains them: autorotate
by the display matrix (transpose / hflip / vflip), then swscale bicubic to shorter side ``S``
and other side ``int(long * S / short)``, centre crop ``S × S`` at ``int((w - S) / 2),
int((h - S) / 2)`` (the original's arithmetic), rgb24 with the frame's colour matrix and range.
Pixel aspect is ignored, as in the original. libavfilter's scale places 4:2:0 chroma centred
as the ffmpeg of the original did (PyAV's ``reformat`` follows the decoder's "left" chroma
location instead: up to ~30 levels apart at colour edges). Unlike the original, which sized
the scale from the coded width/height, rotated videos are sized in display orientation.

Speed without changing a single selected frame: pass 1 demuxes packets (no decoding) to get
every frame's timestamp and keyframe flag and computes the selection; pass 2 decodes, for each
keyframe interval holding a selected frame, from its keyframe up to the last selected frame
(then drains the decoder), seeking over gaps, and converts only selected frames to RGB.
Streams where packets may not map one-to-one to frames (missing or repeated timestamps,
packed B-frames, leading frames before the first keyframe, older codecs) are decoded
sequentially instead, with libavcodec's best-effort timestamps, which is what ffmpeg sees.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.filter import Graph
from av.sidedata.sidedata import Type as SideDataType
from av.stream import Discard, Disposition

logger = logging.getLogger(__name__)

FRAME_AT = ("middle", "start")
FPS_MAX_DENOMINATOR = 1_001_000  # ffmpeg reads a frame rate with av_d2q(rate, 1001000)
SEEK_MIN_PACKETS = 96  # shorter gaps are demuxed through (no decoding) instead of seeking
INTERPOLATION = "bicubic"  # the swscale flags ffmpeg's command line gives its scale filter
DEFAULT_STREAM_BONUS = 5_000_000  # ffmpeg's stream choice: width*height (+ this if default)
FAST_PATH_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg2video", "mjpeg", "prores", "ffv1", "png"}
    | {"rawvideo", "dnxhd", "utvideo", "qtrle"}
)
_NOPTS = -(2**63)


class VideoError(Exception):
    """A video cannot be sampled; the message is one line naming the file and the reason."""


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


@dataclass
class DecodedVideo:
    """Preprocessed frames of one video, one per clip."""

    frames: np.ndarray  # (T, S, S, 3) uint8 RGB
    duration: float
    n_clips: int
    partial: bool  # decoding stopped early (allow_partial): frames are the first n_clips clips
    path: str


class _FastPathError(Exception):
    """Packet timestamps turned out not to describe the decoded frames."""


# ---------------------------------------------------------------- timestamps -> selected frames


def as_rate(fps: float | Fraction) -> Fraction:
    """The exact clip rate ffmpeg uses for ``fps`` (av_d2q with its 1001000 bound)."""
    rate = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _tick(a, b, frame_at: str = "middle"):
    """a / b (b > 0) rounded to a clip tick: halves away from zero, or up for "start".

    Works on Python ints and on numpy int64/object arrays alike.
    """
    if frame_at == "start":
        return -((-a) // b)
    up, down = (2 * a + b) // (2 * b), -((b - 2 * a) // (2 * b))
    if isinstance(a, np.ndarray):
        return np.where(a >= 0, up, down)
    return up if a >= 0 else down


class _FpsCursor:
    """ffmpeg's fps filter: the frame in hand fills every tick before the next frame's tick."""

    def __init__(self, first_tick: int) -> None:
        self.next = first_tick
        self.count = 0

    def fill(self, until: int) -> int:
        """How many ticks the frame in hand fills before a frame (or the end) at ``until``."""
        n = max(0, until - self.next)
        self.next += n
        self.count += n
        return n


def _assign(ticks: Sequence[int], first_tick: int, end_tick: int) -> list[int]:
    """One frame index per clip, given each frame's tick in arrival order."""
    cursor, out = _FpsCursor(first_tick), []
    for k in range(1, len(ticks)):
        out += [k - 1] * cursor.fill(int(ticks[k]))
    out += [len(ticks) - 1] * cursor.fill(max(end_tick, first_tick + 1))
    return out


def select_frames(
    times: Sequence[Fraction | int | float],
    end: Fraction | int | float,
    fps: float | Fraction,
    frame_at: str = "middle",
) -> list[int]:
    """Which frame each clip takes (the module docstring's rule, as ffmpeg's fps filter).

    Args:
        times: frame times in seconds from the container start, in the order frames come out
            of the decoder (presentation order). Floats are taken at their exact binary value.
        end: end of the last frame, seconds.
        fps: clip rate.
        frame_at: "middle" (original) or "start".

    Returns:
        One index into ``times`` per clip; ``len`` is the number of clips (at least 1).
    """
    if frame_at not in FRAME_AT:
        raise ValueError(f"frame_at must be one of {FRAME_AT}, got {frame_at!r}")
    if not times:
        raise ValueError("no frames")
    rate = as_rate(fps)
    scaled = [Fraction(t) * rate for t in times]
    ticks = [_tick(x.numerator, x.denominator, frame_at) for x in scaled]
    last = Fraction(end) * rate
    first_tick = _tick(scaled[0].numerator, scaled[0].denominator)
    return _assign(ticks, first_tick, _tick(last.numerator, last.denominator))


class _BestEffort:
    """libavcodec's guess_correct_pts: the timestamp ffmpeg gives each decoded frame."""

    def __init__(self) -> None:
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts


# ------------------------------------------------------------------------------ geometry


def _scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The original's resize target: shorter side ``size``, the other int(long * size / short)."""
    if width > height:
        return width * size // height, size
    return size, height * size // width


def _orientation(matrix: np.ndarray | None) -> tuple[int, tuple[str, ...]]:
    """(rotation in degrees counter-clockwise, ffmpeg autorotate steps) of a display matrix."""
    if matrix is None:
        return 0, ()
    m = matrix.astype(np.float64) / 65536.0
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return 0, ()
    rotation = -math.degrees(math.atan2(m[1] / s1, m[0] / s0))  # av_display_rotation_get
    theta = -math.copysign(math.floor(abs(rotation) + 0.5), rotation)  # ffmpeg get_rotation
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        steps = ("transpose",) if matrix[3] > 0 else ("clock",)
    elif abs(theta - 180) < 1:
        steps = ("hflip",) * bool(matrix[0] < 0) + ("vflip",) * bool(matrix[4] < 0)
    elif abs(theta - 270) < 1:
        steps = ("clock_flip",) if matrix[3] < 0 else ("cclock",)
    elif abs(theta) > 1:
        logger.warning("display rotation of %.1f degrees is not applied", rotation)
        steps = ()
    else:
        steps = ("vflip",) * bool(matrix[4] < 0)
    return round(rotation), steps


_FILTERS = {  # autorotate step -> libavfilter filter, as ffmpeg inserts them
    "transpose": ("transpose", "cclock_flip"),
    "clock": ("transpose", "clock"),
    "cclock": ("transpose", "cclock"),
    "clock_flip": ("transpose", "clock_flip"),
    "hflip": ("hflip", None),
    "vflip": ("vflip", None),
}
_TRANSPOSING = frozenset({"transpose", "clock", "cclock", "clock_flip"})


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    for data in frame.side_data:
        if data.type == SideDataType.DISPLAYMATRIX:
            return np.frombuffer(bytes(data), dtype=np.int32)[:9].copy()
    return None


class _Preprocess:
    """Decoded frame -> (S, S, 3) uint8 RGB through ffmpeg's own filters, as the original:
    autorotate -> scale (bicubic, shorter side S) -> crop S × S -> rgb24.

    libavfilter's scale (unlike PyAV's reformat) ignores the decoder's chroma location, as the
    ffmpeg the original used did; the two differ by up to ~30 levels at colour edges.
    """

    def __init__(self, width: int, height: int, size: int, time_base: Fraction) -> None:
        self.width, self.height, self.size, self.time_base = width, height, size, time_base
        self.steps: tuple[str, ...] | None = None
        self._key: tuple | None = None

    def _build(self, frame: av.VideoFrame) -> None:
        if self.steps is None:  # the stream's display matrix, carried by every frame
            self.steps = _orientation(_display_matrix(frame))[1]
        sized = self.width > 0 and self.height > 0
        width, height = (self.width, self.height) if sized else (frame.width, frame.height)
        if not _TRANSPOSING.isdisjoint(self.steps):
            width, height = height, width
        out_w, out_h = _scaled_size(width, height, self.size)
        crop = f"{self.size}:{self.size}:{(out_w - self.size) // 2}:{(out_h - self.size) // 2}"
        graph = Graph()
        graph.threads = 1
        tb = frame.time_base or self.time_base
        src = graph.add_buffer(
            width=frame.width, height=frame.height, format=frame.format, time_base=tb
        )
        chain = [src, *(graph.add(*_FILTERS[s]) for s in self.steps)]
        chain.append(graph.add("scale", f"{out_w}:{out_h}:flags={INTERPOLATION}"))
        chain += [graph.add("crop", crop), graph.add("format", "rgb24")]
        chain.append(graph.add("buffersink"))
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        graph.configure()
        self._graph, self._src, self._sink = graph, src, chain[-1]
        self._key = (frame.width, frame.height, frame.format.name)

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._key != (frame.width, frame.height, frame.format.name):
            self._build(frame)
        self._src.push(frame)
        return self._sink.pull().to_ndarray()


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
    cols = [array("q"), array("q"), array("q")]
    key, discard, error = bytearray(), bytearray(), None
    first = _FirstFrame(src.stream.codec_context)
    try:
        for pkt in src.container.demux(src.stream):
            if not _is_real(pkt):
                continue
            for col, v in zip(cols, (pkt.pts, pkt.dts, pkt.duration), strict=True):
                col.append(_NOPTS if v is None else v)
            key.append(pkt.is_keyframe)
            discard.append(pkt.is_discard)
            if first.pending:
                first.feed(pkt)
    except (av.FFmpegError, OSError) as exc:
        error = _reason(exc)
    pts, dts, dur = (
        np.frombuffer(c, dtype=np.int64) if len(c) else np.zeros(0, np.int64) for c in cols
    )
    flags = [np.frombuffer(bytes(b), dtype=np.bool_) for b in (key, discard)]
    return _Table(pts, dts, dur, flags[0], flags[1], first.matrix, error)


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
            if self._table.error and not allow_partial:
                raise VideoError(f"{self.path}: cannot read the file: {self._table.error}")
            self._plan = _plan(self._src, self._table, self.rate, frame_at)
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
                raise VideoError(f"{self.path}: decoding failed {where}: {_reason(exc)}") from None
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
) -> DecodedVideo:
    """Decode one preprocessed frame per clip into an array (see iter_clip_frames).

    Returns:
        DecodedVideo with frames (T, S, S, 3) uint8 RGB.

    Raises:
        VideoError: as iter_clip_frames.
    """
    clips = iter_clip_frames(
        path, fps, image_size, frame_at, allow_partial, threads=threads, method=method
    )
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
        if table.error:
            raise VideoError(f"{src.path}: cannot read the file: {table.error}")
        return _plan(src, table, as_rate(fps), frame_at).probe
    finally:
        src.close()
