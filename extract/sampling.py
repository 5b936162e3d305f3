"""Which frame each clip takes: ffmpeg's fps filter on exact timestamps (spec §1).

The frames are the ones the original features were made from: ``ffmpeg -i VIDEO
-vf fps=FPS,...``. ffmpeg's rule, reproduced exactly (tests compare it with libavfilter's own
fps filter):

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

Pure arithmetic, no decoding: r2.extract.packets applies it to packet timestamps (the plan),
r2.extract.decode to decoded frames when it decodes sequentially, with libavcodec's
best-effort timestamp of each frame (``_BestEffort``).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

FRAME_AT = ("middle", "start")
FPS_MAX_DENOMINATOR = 1_001_000  # ffmpeg reads a frame rate with av_d2q(rate, 1001000)


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
