"""Sharded extraction: N processes (or machines) each extract a deterministic 1/N of the inputs.

Which shard: `--shard I/N` (0-based I), else the environment of a torchrun process
(RANK / WORLD_SIZE) or of a slurm array task (SLURM_ARRAY_TASK_ID relative to
SLURM_ARRAY_TASK_MIN, in steps of SLURM_ARRAY_TASK_STEP, of SLURM_ARRAY_TASK_COUNT). An
explicit --shard wins over the environment; an environment that defines two different
shards (torchrun inside an array task) or an incomplete/out-of-range one is refused.

Which videos: every shard probes every input's duration from its container header (no
packet is read) and runs the same greedy balancing (longest first, each onto the shard with
the least seconds so far; ties to the lower shard): the shards' total durations differ by at
most the longest video. A video whose duration cannot be read counts as the median.

Which queries: a query goes with its video (the shard holding the input whose id is the
query's `vid`, or `vid` + "-cam-002" as TACoS files are named); queries without a video
among the inputs go to shard 0. So the shards' caches hold disjoint items and
`r2 cache merge` of all of them holds exactly what one unsharded run writes.

Output: shard I of N writes `<out stem>.shard-I-of-N<suffix>` beside `--out`.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from r2.data.check import TACOS_CAMERA
from r2.errors import UsageError

log = logging.getLogger(__name__)

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """One shard of a sharded extraction."""

    index: int
    """0-based shard number, 0 <= index < count."""
    count: int
    """Number of shards N."""
    source: str = "--shard"
    """Where it came from: "--shard", "torchrun (RANK/WORLD_SIZE)" or "slurm array"."""

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"shard {self.index}/{self.count} ({self.source}): the shard number "
                             f"is 0-based, 0..N-1 with N >= 1")  # fmt: skip

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def path(self, out: Path) -> Path:
        """This shard's cache beside `out`: name.h5 -> name.shard-I-of-N.h5."""
        if self.count == 1:
            return out
        return out.with_name(f"{out.stem}.shard-{self.index}-of-{self.count}{out.suffix}")


def parse_shard(text: str) -> Shard:
    """Parse "I/N" (0-based I) into a Shard; UsageError naming the value otherwise."""
    found = _SHARD.match(str(text))
    if not found:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shards 0..N-1 of N)")
    return Shard(int(found.group(1)), int(found.group(2)))


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _torchrun(env: Mapping[str, str]) -> Shard | None:
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    if "RANK" not in env or "WORLD_SIZE" not in env:
        raise UsageError("RANK and WORLD_SIZE must both be set (torchrun sets both), or neither")
    return Shard(_int(env, "RANK"), _int(env, "WORLD_SIZE"), "torchrun (RANK/WORLD_SIZE)")


def _slurm_array(env: Mapping[str, str]) -> Shard | None:
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    if "SLURM_ARRAY_TASK_COUNT" not in env:
        raise UsageError("SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT")
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
    step = _int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
    if step < 1 or (task - first) % step:
        raise UsageError(f"slurm array task {task} is not on the array's grid (min {first}, "
                         f"step {step}); use --array=0-{count - 1} or pass --shard")  # fmt: skip
    return Shard((task - first) // step, count, "slurm array")


def resolve_shard(explicit: str | Shard | None, env: Mapping[str, str] | None = None):
    """The shard to run: explicit (--shard) first, else torchrun's or slurm's environment.

    Returns None for an unsharded run (also for a 1-process torchrun / 1-task array).

    Raises:
        UsageError: malformed --shard or environment, or two environments that disagree.
    """
    env = os.environ if env is None else env
    shard = parse_shard(explicit) if isinstance(explicit, str) else explicit
    if shard is not None:  # the flag wins, whatever the environment says
        return shard if shard.count > 1 else None
    found = [s for s in (_torchrun(env), _slurm_array(env)) if s is not None and s.count > 1]
    if len(found) == 2:
        a, b = found
        raise UsageError(f"both {a.source} (shard {a}) and {b.source} (shard {b}) define a "
                         "shard; pass --shard I/N to choose")  # fmt: skip
    return found[0] if found else None


def cuda_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """Under torchrun, "auto"/"cuda" -> "cuda:LOCAL_RANK" (one GPU per process) when CUDA
    exists; other devices, or no LOCAL_RANK, are returned unchanged."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    rank, count = _int(env, "LOCAL_RANK"), torch.cuda.device_count()
    if not 0 <= rank < count:
        raise UsageError(f"LOCAL_RANK={rank} but this machine has {count} CUDA device(s)")
    return f"cuda:{rank}"


def probe_duration(path: str | os.PathLike) -> float | None:
    """Seconds from the container header (no packet read); None when unknown or unreadable."""
    import av

    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as container:
            return container.duration / 1e6 if container.duration else None
    except Exception:  # any unreadable file: its decode will report it (in its shard)
        return None


def balance(vids: Sequence[str], durations: Sequence[float | None], count: int) -> dict[str, int]:
    """vid -> shard: longest first onto the least-loaded shard (ties: lower shard, then vid)."""
    known = [d for d in durations if d is not None and d > 0]
    fill = statistics.median(known) if known else 1.0
    pairs = zip(vids, durations, strict=True)
    weight = {v: (d if d is not None and d > 0 else fill) for v, d in pairs}
    loads = [0.0] * count
    owner = {}
    for vid in sorted(vids, key=lambda v: (-weight[v], v)):
        shard = min(range(count), key=lambda s: (loads[s], s))
        owner[vid] = shard
        loads[shard] += weight[vid]
    return owner


def query_shard(vid: str | None, owner: Mapping[str, int]) -> int:
    """The shard that encodes a query of video `vid`: its video's, else 0."""
    if vid is None:
        return 0
    return owner.get(vid, owner.get(vid + TACOS_CAMERA, 0))
