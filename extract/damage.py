"""Damaged media that raises nothing: libav's error log and the length a header declares.

Some damage never reaches Python as an exception. A Matroska block that overruns its cluster,
or a file cut short (an interrupted download), makes the demuxer log an error and then skip
ahead or simply stop: PyAV hands over fewer packets and says nothing, and the video would be
cached as a shorter (or gapped) one. Pass 1 (`packets._scan`) therefore

- captures the demuxer's error-level log while it reads packets (`DemuxerLog`): the first
  error marks the file as damaged at the packet where it appeared; the packets before it
  are the decodable prefix (what `--allow-partial` keeps);
- compares what it read with the length the header declares, for containers whose header
  states it (`declared_shortfall`): AVI's frame count, Matroska's per-track DURATION tag (or
  the segment duration of a file holding only the video). A truncated WebM logs nothing
  and is caught here.

Decoder messages are not used: decoders log errors for harmless things (a stream that
starts after a keyframe) and raise on real failures, which pass 2 handles. Files without a
declared length and without an index (MPEG-TS cut short) cannot be told from whole ones.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import av
import av.logging

DECLARED_FRAMES_FORMATS = frozenset({"avi"})  # header frame count of the video stream
DECLARED_DURATION_FORMATS = frozenset({"matroska,webm"})  # DURATION tag / segment duration
END_SLACK_S = 1.0  # a video may end this much (or END_SLACK_FRACTION) before its declared end
END_SLACK_FRACTION = 0.02
FRAME_SLACK = 1  # frames a stream may lack against its header's count
_DURATION_TAG = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


class DemuxerLog:
    """Error-level libav messages of one container's demuxer while a block runs.

    `first` is the first such message (None: none); `at` how many packets had been read
    before it appeared, set by `mark(n)` calls from the reading loop.
    """

    def __init__(self, container: av.container.InputContainer) -> None:
        self.name = container.format.name
        self.first: str | None = None
        self.at: int | None = None
        self._logs: list | None = None
        self._seen = 0

    def mark(self, packets_read: int) -> None:
        """Call before handing out each packet: notes where the first error appeared."""
        if self.first is None and self._logs is not None and len(self._logs) > self._seen:
            for entry in self._logs[self._seen :]:
                level, name, message = entry[0], entry[1], entry[2]
                if level <= av.logging.ERROR and name == self.name:
                    self.first, self.at = " ".join(str(message).split()), packets_read
                    break
            self._seen = len(self._logs)

    @contextlib.contextmanager
    def capture(self) -> Iterator[DemuxerLog]:
        level, repeated = av.logging.get_level(), av.logging.get_skip_repeated()
        if level is None or level < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # else a message held back leaks into another file
        try:
            with av.logging.Capture(local=False) as logs:
                self._logs = logs
                yield self
        finally:
            av.logging.set_level(level)
            av.logging.set_skip_repeated(repeated)


def _tag_seconds(value: str | None) -> float | None:
    """Matroska's "HH:MM:SS.nnnnnnnnn" DURATION tag in seconds."""
    found = _DURATION_TAG.match(value or "")
    if not found:
        return None
    h, m, s = found.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def declared_shortfall(
    container: av.container.InputContainer, stream: av.VideoStream, frames: int, end_s: float
) -> str | None:
    """Why the packets read (`frames` of them, ending at `end_s` seconds after the container
    start) fall short of what the header declares, or None when they do not (or it says
    nothing)."""
    fmt = container.format.name
    if fmt in DECLARED_FRAMES_FORMATS and stream.frames and frames < stream.frames - FRAME_SLACK:
        return f"{frames} of the {stream.frames} frames its header declares could be read"
    if fmt not in DECLARED_DURATION_FORMATS:
        return None
    declared = _tag_seconds(stream.metadata.get("DURATION"))
    if declared is None and len(container.streams) == 1 and container.duration:
        declared = container.duration / 1e6
    if declared and end_s < declared - max(END_SLACK_S, END_SLACK_FRACTION * declared):
        return f"the video stream ends at {end_s:.1f} s of the {declared:.1f} s its header declares"
    return None
