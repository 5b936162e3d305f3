"""The options of one extraction run (`ExtractOptions`) and their core-count defaults.

Light on purpose (no torch): the decode worker processes import the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from r2.extract.defaults import (
    DEFAULT_FPS,
    DEFAULT_FRAME_AT,
    DEFAULT_K,
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    FRAME_AT_CHOICES,
)
from r2.extract.inputs import InputError
from r2.extract.shard import Shard, parse_shard

MAX_DEFAULT_WORKERS = 8  # decode processes by default at most (more rarely pay on CPU)


def usable_cores() -> int:
    """Cores this process may use: affinity mask (taskset, slurm), capped by a cgroup quota."""
    from r2.device import available_cores

    return available_cores()


def default_workers(cores: int | None = None) -> int:
    """Decode processes: one per core, at most MAX_DEFAULT_WORKERS (benchmarks/extract.py).

    Workers run at a lower priority (workers.DECODE_NICE) than the forward pass, so they
    take the cores only while the forward pass leaves them idle: with one worker per core,
    decoding can use every core whenever the forward pass waits for frames.
    """
    return max(1, min(MAX_DEFAULT_WORKERS, cores or usable_cores()))


def default_threads(cores: int | None = None) -> int:
    """Torch threads of the CPU forward pass: every core (decoding fills its idle gaps)."""
    return max(1, cores or usable_cores())


@dataclass(frozen=True)
class ExtractOptions:
    """How `extract` runs; every field is also a keyword of `extract(...)`."""

    model: str = DEFAULT_MODEL
    """HuggingFace CLIP id or local folder; never replaced by a random model."""
    revision: str | None = None
    """Hub branch/tag/commit; the resolved commit is recorded in the cache."""
    k: int = DEFAULT_K
    """Number of last CLIP blocks kept."""
    fps: float = DEFAULT_FPS
    """Clips per second of videos whose annotations give none."""
    frame_at: str = DEFAULT_FRAME_AT
    """Frame of each clip: "middle" (the original's ffmpeg fps filter) or "start" of each clip."""
    dtype: str | None = None
    """Compute dtype "fp32" | "fp16" | "bf16"; default fp32 on CPU, fp16 on CUDA."""
    device: str = "auto"
    """Device: "auto", "cpu", "cuda", "cuda:N"; under torchrun "auto"/"cuda" is cuda:LOCAL_RANK."""
    workers: int | None = None
    """Decode processes (0: decode in this process); default `default_workers()`."""
    threads: int | None = None
    """Torch threads of the CPU forward pass; default `default_threads()`."""
    batch_frames: int | None = None
    """Frames per forward pass; default 32 on CPU, 256 on CUDA."""
    allow_partial: bool = False
    """Keep the decodable beginning of a damaged video (recorded as partial)."""
    strict: bool = False
    """Stop at the first video that can't be used (SkipError) instead of skipping it."""
    shard: Shard | str | None = None
    """This process's shard, "I/N" or a Shard; None: from torchrun/slurm, else unsharded."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            problems.append(f"k must be a positive integer, got {self.k!r}")
        fps = self.fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
            problems.append(f"fps must be a positive number, got {fps!r}")
        if self.frame_at not in FRAME_AT_CHOICES:
            problems.append(f"frame_at must be one of {FRAME_AT_CHOICES}, got {self.frame_at!r}")
        if self.dtype is not None and self.dtype not in DTYPE_CHOICES:
            problems.append(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        for name, low in (("workers", 0), ("threads", 1), ("batch_frames", 1)):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, int) or value < low
            if value is not None and bad:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.shard, str):
            object.__setattr__(self, "shard", parse_shard(self.shard))
        if problems:
            raise InputError("; ".join(problems))

    @property
    def n_workers(self) -> int:
        return default_workers() if self.workers is None else self.workers

    @property
    def n_threads(self) -> int:
        return default_threads() if self.threads is None else self.threads

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
