"""Decoded frames of long videos on disk instead of in memory.

A 2-hour video at 0.5 clip/s is 3,600 frames of 224 × 224 × 3 bytes: 540 MB, held by the
decoding worker, pickled through its pipe and held again by the encoding process. Frames of a
video larger than `SPILL_BYTES` are written instead, as they are decoded, to a raw file in the
run's spill folder; the encoding process reads them back one batch at a time. Memory then
stays flat in the video's length (only its features grow) and the pipe carries a file name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2.errors import RunFailureError

SPILL_BYTES = 16 * 2**20  # bytes of decoded frames above which a video's frames go to disk


class SpillError(RunFailureError):
    """Decoded frames could not be written to the spill folder (disk full, read-only)."""


@dataclass(frozen=True)
class SpilledFrames:
    """(n, S, S, 3) uint8 frames in a raw file; `frames[a:b]` reads those frames only."""

    path: str
    n: int
    size: int  # S, pixels

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.size, self.size, 3)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("SpilledFrames supports slices only")
        start, stop, step = index.indices(self.n)
        if step != 1:
            raise ValueError("SpilledFrames supports contiguous slices only")
        frame = self.size * self.size * 3
        count = max(0, stop - start) * frame
        data = np.fromfile(self.path, np.uint8, count=count, offset=start * frame)
        if data.size != count:
            raise OSError(f"{self.path}: spilled frames truncated ({data.size} of {count} bytes)")
        return data.reshape(-1, self.size, self.size, 3)

    def release(self) -> None:
        """Delete the file (the frames are no longer needed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def spill_frames(frames: Iterable[np.ndarray], folder: str | Path, size: int) -> SpilledFrames:
    """Write (S, S, 3) uint8 frames to a new raw file in `folder` as they come.

    The file is deleted if the iteration raises (e.g. a VideoError midway).
    """
    try:
        fd, name = tempfile.mkstemp(suffix=".rgb", dir=folder)
    except OSError as exc:
        raise SpillError(f"{folder}: cannot write decoded frames: {exc.strerror or exc}") from None
    n = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for rgb in frames:
                if rgb.shape != (size, size, 3) or rgb.dtype != np.uint8:
                    raise ValueError(f"frame {n}: expected ({size}, {size}, 3) uint8")
                out.write(np.ascontiguousarray(rgb).data)
                n += 1
    except OSError as exc:  # the disk, not the video: the run cannot go on
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise SpillError(f"{folder}: cannot write decoded frames: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return SpilledFrames(name, n, size)


def release(frames: object) -> None:
    """Free decoded frames: deletes a spill file; in-memory arrays need nothing."""
    if isinstance(frames, SpilledFrames):
        frames.release()
