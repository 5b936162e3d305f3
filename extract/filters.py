"""Frame geometry through ffmpeg's own filters: decoded frame -> (S, S, 3) uint8 RGB.

Geometry, by ffmpeg's own filters (libavfilter), as its command line chains them: autorotate
by the display matrix (transpose / hflip / vflip), then swscale bicubic to shorter side ``S``
and other side ``int(long * S / short)``, centre crop ``S × S`` at ``int((w - S) / 2),
int((h - S) / 2)`` (the original's arithmetic), rgb24 with the frame's colour matrix and range.
Pixel aspect is ignored, as in the original. libavfilter's scale places 4:2:0 chroma centred
as the ffmpeg of the original did (PyAV's ``reformat`` follows the decoder's "left" chroma
location instead: up to ~30 levels apart at colour edges). Unlike the original, which sized
the scale from the coded width/height, rotated videos are sized in display orientation.
"""

from __future__ import annotations

import itertools
import logging
import math
from fractions import Fraction

import av
import numpy as np
from av.filter import Graph
from av.sidedata.sidedata import Type as SideDataType

logger = logging.getLogger(__name__)

INTERPOLATION = "bicubic"  # the swscale flags ffmpeg's command line gives its scale filter


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
