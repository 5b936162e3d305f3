"""Thumbnails of a video at given times (the frame strips of the PNG and the web app).

Each time is seconds from the video's first frame, as r2's moments are. Frames are found by
seeking to the keyframe before the time and decoding forward to it, so a strip of a few
moments costs a few short decodes, not a pass over the video.
"""

from __future__ import annotations

import logging
import os

import av
import numpy as np

log = logging.getLogger(__name__)

THUMB_HEIGHT = 120  # pixels; the width keeps the display aspect ratio


def _first_time(stream) -> float:
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _decode_at(container, stream, target: float):
    """The last frame shown at `target` seconds (stream time), or None."""
    container.seek(max(0, int(target / stream.time_base)), stream=stream, backward=True)
    best = None
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        if frame.time > target + 1e-6 and best is not None:
            break
        best = frame
        if frame.time > target + 1e-6:
            break
    return best


def grab_frames(
    path: str | os.PathLike, times: list[float], height: int = THUMB_HEIGHT
) -> list[np.ndarray | None]:
    """RGB thumbnails (H, W, 3) uint8 of `path` at each time; None where none could be read."""
    out: list[np.ndarray | None] = [None] * len(times)
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            t0 = _first_time(stream)
            for i in sorted(range(len(times)), key=lambda j: times[j]):
                frame = _decode_at(container, stream, t0 + max(0.0, float(times[i])))
                if frame is None:
                    continue
                ratio = frame.width / max(frame.height, 1)
                sar = getattr(stream, "sample_aspect_ratio", None)
                if sar:
                    ratio *= float(sar)
                width = max(2, round(height * ratio / 2) * 2)
                out[i] = frame.to_ndarray(format="rgb24", width=width, height=height)
    except (av.FFmpegError, OSError, IndexError) as err:  # thumbnails are decoration
        log.warning("%s: no thumbnails (%s)", path, err)
    return out
