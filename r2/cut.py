"""Write the chosen time intervals of a video, in time order, as one new video (PyAV).

The picture is re-encoded (H.264, yuv420p, the source's frame rate and display rotation)
because cuts rarely fall on keyframes; the first audio stream, when there is one, is kept
(AAC) and cut at the same instants to the sample. Timestamps are rebased so that the
intervals play back to back. The file is written atomically (r2.files).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VIDEO_CODEC, AUDIO_CODEC = "libx264", "aac"
X264_OPTIONS = {"crf": "20", "preset": "veryfast"}
VIDEO_TIME_BASE = Fraction(1, 90000)  # MPEG's 90 kHz clock
FALLBACK_RATE = Fraction(25)


class _Writer:
    """Output streams and the running position of the summary."""

    def __init__(self, out, vin, ain, rotation: int):
        self.out = out
        rate = vin.average_rate or vin.guessed_rate or FALLBACK_RATE
        self.video = out.add_stream(VIDEO_CODEC, rate=rate)
        self.video.width = vin.codec_context.width // 2 * 2
        self.video.height = vin.codec_context.height // 2 * 2
        self.video.pix_fmt = "yuv420p"
        self.video.options = dict(X264_OPTIONS)
        self.video.codec_context.time_base = VIDEO_TIME_BASE
        if rotation:
            self.video.set_display_rotation(rotation)
        self.audio = None
        if ain is not None:
            self.audio = out.add_stream(AUDIO_CODEC, rate=ain.codec_context.sample_rate)
            self.audio.layout = ain.codec_context.layout
        self.last_pts = -1
        self.samples = 0  # audio samples written
        self.frames = 0

    def video_frame(self, frame: av.VideoFrame, out_t: float) -> None:
        pts = round(out_t / VIDEO_TIME_BASE)
        if pts <= self.last_pts:
            return  # duplicate timestamp: keep the first
        self.last_pts = pts
        image = frame.reformat(width=self.video.width, height=self.video.height, format="yuv420p")
        image.pts, image.time_base = pts, VIDEO_TIME_BASE
        self.out.mux(self.video.encode(image))
        self.frames += 1

    def audio_part(self, frame: av.AudioFrame, first: int, stop: int) -> None:
        data = frame.to_ndarray()
        if not frame.format.is_planar:  # packed: (1, n * channels) -> (channels, n)
            data = data.reshape(-1, len(frame.layout.channels)).T
        part = np.ascontiguousarray(data[:, first:stop])
        if not frame.format.is_planar:
            part = part.T.reshape(1, -1)
        piece = av.AudioFrame.from_ndarray(part, format=frame.format.name, layout=frame.layout.name)
        piece.sample_rate = frame.sample_rate
        piece.pts, piece.time_base = self.samples, Fraction(1, frame.sample_rate)
        self.samples += stop - first
        self.out.mux(self.audio.encode(piece))

    def close(self) -> None:
        self.out.mux(self.video.encode(None))
        if self.audio is not None:
            self.out.mux(self.audio.encode(None))


def _copy_interval(
    inp, vin, ain, writer: _Writer, start: float, end: float, at: float, origin: float
) -> None:
    """Frames of [start, end) (seconds from the first frame) placed at `at` in the summary."""
    inp.seek(max(0, int((origin + start) / vin.time_base)), stream=vin, backward=True)
    streams = [s for s in (vin, ain) if s is not None]
    done = {s.index: False for s in streams}
    for packet in inp.demux(streams):
        for frame in packet.decode():
            if frame.time is None:
                continue
            t = frame.time - origin
            if isinstance(frame, av.VideoFrame):
                if t >= end:
                    done[vin.index] = True
                elif t >= start - 1e-6:
                    writer.video_frame(frame, at + max(0.0, t - start))
            else:
                rate = frame.sample_rate
                first = max(0, math.ceil((start - t) * rate - 1e-6))
                stop = min(frame.samples, math.floor((end - t) * rate + 1e-6))
                if t >= end:
                    done[ain.index] = True
                elif stop > first:
                    writer.audio_part(frame, first, stop)
        if all(done.values()):
            return


def write_intervals(
    src: str | os.PathLike,
    intervals: list[tuple[float, float]],
    out: str | os.PathLike,
    rotation: int = 0,
) -> Path:
    """Write `intervals` ([(start_s, end_s)], time order, from the first frame) of `src` to
    `out` (mp4), atomically. Returns `out`."""
    from r2.files import atomic_path

    out = Path(out)
    with av.open(os.fspath(src)) as inp, atomic_path(out) as tmp:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        origin = float(vin.start_time * vin.time_base) if vin.start_time is not None else 0.0
        with av.open(str(tmp), "w", format="mp4") as container:
            writer = _Writer(container, vin, ain, rotation)
            at = 0.0
            for start, end in intervals:
                _copy_interval(inp, vin, ain, writer, start, end, at, origin)
                at += end - start
            writer.close()
    return out
