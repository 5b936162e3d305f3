"""Rendering of the demo videos: coloured shapes on a textured background, as H.264 files.

`write_video` encodes one `VideoPlan` (its events: which shape of which colour is on screen,
how it moves, grows or spins, during which windows) bit-exactly for a seed; r2.demo_data
plans the videos and writes their annotations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SHAPE_RADIUS = 0.4  # circumradius of a shape at scale 1, as a fraction of the frame height
MOVE_TRAVEL = 0.25  # a moving shape starts/ends this far (fraction of height) from its centre
GROW_SCALE = (0.7, 1.15)  # scale of a growing shape at its window's start / end
TEXTURE_STD = (6.0, 2.0, 3.0)  # background texture: blocky grey, blocky tint, fine grain
NOISE_STD = 1.0  # per-frame sensor noise (grey levels)
NOISE_BANK = 16  # noise images drawn once per video; each frame adds a random one
CRF = "23"  # x264 quality (lower is better)
# x264's MB-tree rate control made the output depend on leftover heap contents (measured:
# the same frames gave a different file in most runs); without it the output is bit-exact.
X264_PARAMS = "mbtree=0"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 45),
    "blue": (40, 70, 235),
    "yellow": (245, 225, 35),
    "purple": (150, 45, 200),
    "cyan": (40, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "star")
SIDES = {"triangle": 3, "square": 4}  # regular polygons; circle and star are special-cased
DIRECTIONS = {  # name: (unit vector in image coords (x right, y down), "to" phrase, "-wards")
    "left": ((-1.0, 0.0), "to the left", "leftwards"),
    "right": ((1.0, 0.0), "to the right", "rightwards"),
    "up": ((0.0, -1.0), "up", "upwards"),
    "down": ((0.0, 1.0), "down", "downwards"),
}


@dataclass(frozen=True)
class Event:
    """One shape of a video and the windows during which it is on screen."""

    colour: str
    shape: str
    action: str
    direction: str  # a DIRECTIONS key for "move", else ""
    windows: tuple[tuple[int, int], ...]  # seconds, sorted, multiples of the 2-s clip
    centre: tuple[float, float]  # (x, y) as fractions of (width, height)
    angle: float  # orientation at the window's start (radians)
    turns: float  # revolutions per window for "spin"
    query: str


@dataclass(frozen=True)
class VideoPlan:
    """Everything that determines one demo video's frames."""

    vid: str
    duration: int  # seconds
    background: tuple[float, float, float]  # base RGB
    texture_seed: int
    events: tuple[Event, ...]


def render_frames(plan: VideoPlan, fps: float, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The RGB frames (H, W, 3) uint8 of one video, frame j shown at time j / fps."""
    width, height = size
    rng = np.random.default_rng(plan.texture_seed)
    coarse = rng.normal(0.0, 1.0, size=(height // 8 + 2, width // 8 + 2, 4))
    coarse = coarse[..., :1] * TEXTURE_STD[0] + coarse[..., 1:] * TEXTURE_STD[1]  # grey + tint
    texture = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]  # blocky low frequencies
    texture += rng.normal(0.0, TEXTURE_STD[2], size=(height, width, 1))
    background = (np.asarray(plan.background) + _smooth(texture)).astype(np.float32)  # (H, W, 3)
    noise = NOISE_STD * rng.standard_normal((NOISE_BANK, height, width, 1), dtype=np.float32)
    for j in range(round(plan.duration * fps)):
        t = j / fps
        frame = background + noise[rng.integers(NOISE_BANK)]  # (H, W, 3) float32
        for event in plan.events:
            for start, end in event.windows:
                if start <= t < end:
                    box, mask = _event_mask(event, (t - start) / (end - start), size)
                    frame[box][mask] = COLOURS[event.colour]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _smooth(img: np.ndarray) -> np.ndarray:
    """3x3 box blur (edges wrap), to soften the blocky texture."""
    out = np.zeros_like(img)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out += np.roll(img, (dy, dx), axis=(0, 1))
    return out / 9.0


def _event_mask(event: Event, u: float, size: tuple[int, int]) -> tuple[tuple, np.ndarray]:
    """(box, mask): the shape's pixels at progress u in [0, 1) of its window, within `box`.

    `box` is a (rows, cols) slice pair of the frame around the shape, `mask` a boolean array
    of the box's shape (computing only there keeps rendering cheap).
    """
    width, height = size
    cx, cy = event.centre[0] * width, event.centre[1] * height
    radius, angle = SHAPE_RADIUS * height, event.angle
    if event.action == "move":
        (dx, dy), travel = DIRECTIONS[event.direction][0], MOVE_TRAVEL * height
        cx, cy = cx + dx * travel * (2 * u - 1), cy + dy * travel * (2 * u - 1)
    elif event.action == "grow":
        radius *= GROW_SCALE[0] + (GROW_SCALE[1] - GROW_SCALE[0]) * u
    elif event.action == "spin":
        angle += 2 * math.pi * event.turns * u
    x0, x1 = max(0, int(cx - radius) - 1), min(width, int(cx + radius) + 2)
    y0, y1 = max(0, int(cy - radius) - 1), min(height, int(cy + radius) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), _shape_mask(event.shape, xx - cx, yy - cy, radius, angle)


def _shape_mask(shape: str, x, y, radius: float, angle: float) -> np.ndarray:
    """Boolean mask of a shape of circumradius `radius` centred at x = y = 0."""
    if shape == "circle":
        return x * x + y * y <= (0.85 * radius) ** 2  # same area scale as the polygons
    if shape == "star":  # 5 points; fold the angle into one half-spike, test one edge
        rho = np.hypot(x, y)
        half = math.pi / 5
        phi = np.abs(np.mod(np.arctan2(y, x) - angle, 2 * half) - half)  # 0 at an inner vertex
        inner = 0.45 * radius
        a = np.array([inner, 0.0])  # inner vertex, rotated to angle 0
        b = np.array([radius * math.cos(half), radius * math.sin(half)])  # outer vertex
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        cross = (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])
        return (cross >= 0) | (rho <= inner)
    sides = SIDES[shape]
    apothem = radius * math.cos(math.pi / sides)
    inside = np.ones(x.shape, dtype=bool)
    for k in range(sides):  # edge normals lie between consecutive vertices
        theta = angle + (2 * k + 1) * math.pi / sides
        inside &= x * math.cos(theta) + y * math.sin(theta) <= apothem
    return inside


def write_video(plan: VideoPlan, path: Path, fps: float, size: tuple[int, int]) -> None:
    """Encode the plan as H.264 mp4, bit-exact for a seed (single thread, no MB-tree); atomic."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": CRF, "preset": "veryfast", "x264-params": X264_PARAMS}
            stream.codec_context.thread_count = 1
            for rgb in render_frames(plan, fps, size):
                frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(rgb), format="yuv420p")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 / 2, W) uint8 planar YUV 4:2:0, BT.601 limited range.

    Integer arithmetic, so bit-exact on every machine and independent of swscale.
    """
    w = rgb.shape[1]
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))  # (H, W) each
    luma = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    r, g, b = (v[::2, ::2] + v[1::2, ::2] + v[::2, 1::2] + v[1::2, 1::2] for v in (r, g, b))
    cb = ((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128  # (H/2, W/2), from 2x2 sums
    cr = ((112 * r - 94 * g - 18 * b + 512) >> 10) + 128
    planes = np.concatenate([luma.ravel(), cb.ravel(), cr.ravel()])
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(-1, w)
