"""Videos with known content for the decoder tests and benchmarks, written with PyAV.

Each frame shows its own index as a 4 × 4 grid of black/white cells inside the display's
centre square (the part a centre crop keeps), so a test can read back WHICH source frame a
decoded, resized and cropped output came from. The grid's corner cells are orientation
markers (top-left white, the other three black): a frame shown rotated or mirrored does not
read back. The 12 other cells hold the index (0..4095). Videos too small for a grid (1×1,
8×8) use a solid grey level per frame instead.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = 4  # cells per side of the index code
MARGIN = 1 / 8  # of the centre square, on each side of the grid
MARKERS = {(0, 0): 1, (0, GRID - 1): 0, (GRID - 1, 0): 0, (GRID - 1, GRID - 1): 0}
BITS = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in MARKERS]
MAX_INDEX = 2 ** len(BITS) - 1
DARK, LIGHT = 32, 224  # cell values, inside the limited YUV range
LEVEL_BASE, LEVEL_STEP = 16, 20  # "level" content: grey = base + step * index
MAX_LEVEL_INDEX = (235 - LEVEL_BASE) // LEVEL_STEP


def _grid_box(width: int, height: int) -> tuple[float, float, float]:
    """(x0, y0, cell) of the code grid in a width × height display image."""
    side = min(width, height)
    cell = side * (1 - 2 * MARGIN) / GRID
    return (width - side) / 2 + side * MARGIN, (height - side) / 2 + side * MARGIN, cell


def index_image(
    index: int, width: int, height: int, background: np.ndarray | None = None
) -> np.ndarray:
    """An RGB display image (H, W, 3) uint8 showing ``index`` as the code grid.

    ``background`` (H, W) or (H, W, 3) uint8 is drawn behind the grid; by default a pattern
    that moves from frame to frame.
    """
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} outside 0..{MAX_INDEX}")
    if background is None:
        yy, xx = np.mgrid[0:height, 0:width]
        background = 96 + 32 * np.sin((xx + 3 * index) / 5.0) * np.cos((yy - 2 * index) / 7.0)
    image = np.broadcast_to(
        np.asarray(background)[..., None] if np.ndim(background) == 2 else np.asarray(background),
        (height, width, 3),
    ).astype(np.uint8)
    x0, y0, cell = _grid_box(width, height)
    bits = {**MARKERS, **{rc: (index >> i) & 1 for i, rc in enumerate(BITS)}}
    for (r, c), bit in bits.items():
        ys = slice(round(y0 + r * cell), round(y0 + (r + 1) * cell))
        xs = slice(round(x0 + c * cell), round(x0 + (c + 1) * cell))
        image[ys, xs] = LIGHT if bit else DARK
    return image


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (H, W, 3) uint8, twice the size asked, for moving backgrounds."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    big = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[: 2 * height, : 2 * width]
    kernel = np.ones(9, np.float32) / 9
    for axis in (0, 1):
        big = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, big)
    noise = rng.normal(0, 6, big.shape)
    return (big + noise).clip(0, 255).astype(np.uint8)


def read_index(image: np.ndarray) -> int:
    """The index shown by an image (any size whose centre square is the display's centre square).

    Raises:
        ValueError: the orientation markers do not read back (wrong rotation or not a code).
    """
    height, width = image.shape[:2]
    x0, y0, cell = _grid_box(width, height)
    grey = image.astype(np.float64).mean(axis=2)

    def bit(r: int, c: int) -> int:
        cy, cx, q = y0 + (r + 0.5) * cell, x0 + (c + 0.5) * cell, max(cell / 4, 0.5)
        patch = grey[round(cy - q) : round(cy + q) + 1, round(cx - q) : round(cx + q) + 1]
        return int(patch.mean() > (DARK + LIGHT) / 2)

    if any(bit(r, c) != v for (r, c), v in MARKERS.items()):
        raise ValueError("orientation markers do not read back")
    return sum(bit(r, c) << i for i, (r, c) in enumerate(BITS))


def level_image(index: int, width: int, height: int) -> np.ndarray:
    """A solid grey RGB image encoding a small ``index`` (for videos too small for the grid)."""
    if not 0 <= index <= MAX_LEVEL_INDEX:
        raise ValueError(f"index {index} outside 0..{MAX_LEVEL_INDEX}")
    return np.full((height, width, 3), LEVEL_BASE + LEVEL_STEP * index, np.uint8)


def read_level(image: np.ndarray) -> int:
    """The index a level_image shows."""
    return round((float(image.mean()) - LEVEL_BASE) / LEVEL_STEP)


def _to_coded(display: np.ndarray, rotation: int) -> np.ndarray:
    """The coded picture a display matrix of ``rotation`` (ccw degrees) shows as ``display``."""
    return np.ascontiguousarray(np.rot90(display, -rotation // 90))


def _x264_options(keyint: int, bframes: int, open_gop: bool, crf: int) -> dict[str, str]:
    params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}"
    params += f":open-gop={int(open_gop)}:log-level=error"
    preset = "veryfast" if bframes else "ultrafast"
    return {"preset": preset, "crf": str(crf), "x264-params": params}


class _Audio:
    """A silent mono AAC stream, written interleaved with the video up to a given time."""

    RATE, FRAME = 48000, 1024

    def __init__(self, container: av.container.OutputContainer, seconds: float) -> None:
        self.container, self.next = container, 0
        self.stream = container.add_stream("aac", rate=self.RATE)
        self.stream.layout = "mono"
        self.total = max(1, int(seconds * self.RATE / self.FRAME) + 1)

    def write_until(self, seconds: float) -> None:
        while self.next < self.total and self.next * self.FRAME <= seconds * self.RATE:
            samples = np.zeros((1, self.FRAME), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, "fltp", "mono")
            frame.sample_rate, frame.time_base = self.RATE, Fraction(1, self.RATE)
            frame.pts = self.next * self.FRAME
            self._mux(frame)
            self.next += 1

    def finish(self) -> None:
        self.write_until(float("inf"))
        self._mux(None)

    def _mux(self, frame: av.AudioFrame | None) -> None:
        for packet in self.stream.encode(frame):
            self.container.mux(packet)


def write_video(
    path: str | Path,
    n_frames: int,
    *,
    fps: float = 30,
    size: tuple[int, int] = (64, 48),
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    keyint: int = 30,
    bframes: int = 0,
    open_gop: bool = False,
    crf: int = 12,
    content: str = "index",
    rotation: int = 0,
    audio: str | None = None,
    extra_video: tuple[int, int] | None = None,
) -> Path:
    """Write a video whose frame k shows index k.

    ``content``: "index" (code grid on a moving pattern), "level" (solid grey, tiny videos)
    or "texture" (code grid on a panning textured image: realistic bitrate, fast to draw).

    Args:
        path: output file; the container follows the extension (.mp4, .mkv, .mov).
        n_frames: number of frames.
        fps: nominal frame rate (also the time base 1/fps unless ``time_base`` is given).
        size: display (width, height).
        pts: presentation timestamps in ``time_base`` units (VFR / non-zero start); default k.
        codec, pix_fmt: encoder and pixel format; keyint/bframes/open_gop/crf for libx264
            (B-frames use preset veryfast, otherwise ultrafast).
        rotation: display matrix rotation in degrees counter-clockwise (ffprobe's value);
            frames are stored so that they DISPLAY upright.
        audio: "first" adds an AAC stream before the video stream, "last" after it.
        extra_video: size of a second, smaller, video stream added before the main one.
    """
    path = Path(path)
    time_base = time_base or Fraction(1, 1) / Fraction(fps).limit_denominator(1001)
    pts = list(range(n_frames)) if pts is None else list(pts)
    seconds = float((pts[-1] + 1) * time_base) if pts else 0.0
    width, height = size
    coded_w, coded_h = (height, width) if rotation % 180 else (width, height)
    with av.open(str(path), "w") as container:
        sound = _Audio(container, seconds) if audio == "first" else None
        extra = (
            _add_video(container, codec, pix_fmt, extra_video, fps, time_base, 0)
            if extra_video
            else None
        )
        stream = _add_video(container, codec, pix_fmt, (coded_w, coded_h), fps, time_base, rotation)
        if codec == "libx264":
            stream.options = _x264_options(keyint, bframes, open_gop, crf)
        if audio == "last":
            sound = _Audio(container, seconds)
        tex = texture(width, height) if content == "texture" else None
        for k, stamp in enumerate(pts):
            coded = _to_coded(_draw(content, k, width, height, tex), rotation)
            _mux_frame(container, stream, coded, stamp, time_base)
            if sound is not None:
                sound.write_until(float(stamp * time_base))
            if extra is not None:
                _mux_frame(container, extra, level_image(0, *extra_video), stamp, time_base)
        for s in (stream, extra):
            if s is not None:
                for packet in s.encode(None):
                    container.mux(packet)
        if sound is not None:
            sound.finish()
    return path


def _draw(content: str, k: int, width: int, height: int, tex: np.ndarray | None) -> np.ndarray:
    if content == "level":
        return level_image(k, width, height)
    if content == "texture":  # a panning texture (realistic bitrate), index code on top
        dy, dx = (3 * k) % height, (5 * k) % width
        return index_image(
            k % (MAX_INDEX + 1), width, height, tex[dy : dy + height, dx : dx + width]
        )
    return index_image(k, width, height)


def _add_video(container, codec, pix_fmt, size, fps, time_base, rotation):
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt
    stream.codec_context.time_base = time_base
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def _mux_frame(container, stream, rgb: np.ndarray, stamp: int, time_base: Fraction) -> None:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = stamp, time_base
    for packet in stream.encode(frame):
        container.mux(packet)


# ------------------------------------------------------------------------ known colours

MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}  # (Kr, Kb)
COLORSPACE_TAGS = {"bt601": 6, "bt709": 1}  # AVColorSpace: SMPTE170M, BT709
RANGE_TAGS = {"limited": 1, "full": 2}  # AVColorRange: MPEG, JPEG


def rgb_to_yuv(rgb: np.ndarray, matrix: str, color_range: str, bits: int) -> np.ndarray:
    """Exact Y'CbCr code values (…, 3) of RGB colours (…, 3) in 0..255 (no swscale involved)."""
    kr, kb = MATRICES[matrix]
    r, g, b = (np.asarray(rgb, np.float64)[..., i] / 255 for i in range(3))
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    scale = 2 ** (bits - 8)
    if color_range == "limited":
        code = [(16 + 219 * y) * scale, (128 + 224 * cb) * scale, (128 + 224 * cr) * scale]
    else:
        top = 2**bits - 1
        code = [top * y, top * cb + 2 ** (bits - 1), top * cr + 2 ** (bits - 1)]
    return np.rint(np.stack(code, axis=-1)).clip(0, 2**bits - 1)


def yuv_to_rgb(yuv: np.ndarray, matrix: str, color_range: str, bits: int) -> np.ndarray:
    """Inverse of rgb_to_yuv (float RGB 0..255): what a reader assuming these tags would show."""
    kr, kb = MATRICES[matrix]
    scale = 2 ** (bits - 8)
    yuv = np.asarray(yuv, np.float64)
    if color_range == "limited":
        y = (yuv[..., 0] / scale - 16) / 219
        cb, cr = ((yuv[..., i] / scale - 128) / 224 for i in (1, 2))
    else:
        top = 2**bits - 1
        y = yuv[..., 0] / top
        cb, cr = ((yuv[..., i] - 2 ** (bits - 1)) / top for i in (1, 2))
    r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.stack([r, g, b], axis=-1) * 255


def patch_layout(width: int, height: int, n: int) -> list[tuple[slice, slice]]:
    """n vertical colour bars across the centre square: (rows, cols) of each bar."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    edges = [x0 + round(side * i / n) for i in range(n + 1)]
    return [(slice(y0, y0 + side), slice(edges[i], edges[i + 1])) for i in range(n)]


def write_colour_video(
    path: str | Path,
    colours: list[tuple[int, int, int]],
    *,
    matrix: str = "bt709",
    color_range: str = "limited",
    pix_fmt: str = "yuv420p",
    codec: str = "ffv1",
    size: tuple[int, int] = (96, 64),
    n_frames: int = 2,
) -> Path:
    """Write solid colour bars whose Y'CbCr values are computed here exactly, tagged with
    the given matrix and range; a correct reader shows ``colours`` again."""
    path, (width, height) = Path(path), size
    bits = 10 if "10" in pix_fmt else 8
    yuv = np.zeros((height, width, 3))
    yuv[...] = rgb_to_yuv(np.array([128, 128, 128]), matrix, color_range, bits)
    for (rows, cols), colour in zip(
        patch_layout(width, height, len(colours)), colours, strict=True
    ):
        yuv[rows, cols] = rgb_to_yuv(np.array(colour), matrix, color_range, bits)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.color_range = RANGE_TAGS[color_range]
        stream.codec_context.colorspace = COLORSPACE_TAGS[matrix]
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "qp": "0"}
        for k in range(n_frames):
            frame = _yuv_frame(yuv, pix_fmt, bits)
            frame.color_range, frame.colorspace = RANGE_TAGS[color_range], COLORSPACE_TAGS[matrix]
            frame.pts, frame.time_base = k, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _yuv_frame(yuv: np.ndarray, pix_fmt: str, bits: int) -> av.VideoFrame:
    """A 4:2:0 frame from full-resolution Y'CbCr (chroma averaged over 2 × 2 blocks)."""
    height, width = yuv.shape[:2]
    frame = av.VideoFrame(width, height, pix_fmt)
    dtype = np.uint16 if bits > 8 else np.uint8
    chroma = yuv[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    planes = [yuv[..., 0], chroma[..., 0], chroma[..., 1]]
    for plane, values in zip(frame.planes, planes, strict=True):
        padded = np.zeros((plane.height, plane.line_size // np.dtype(dtype).itemsize), dtype)
        padded[:, : plane.width] = np.rint(values)
        plane.update(padded.tobytes())
    return frame
