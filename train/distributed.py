"""Training on several processes: torchrun or srun -> DistributedDataParallel, exactly.

    torchrun --nproc_per_node N $(which r2) train ...                      # one machine
    torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d \\
        --rdzv-endpoint HOST:PORT $(which r2) train ...                    # M machines
    srun --ntasks M*N --kill-on-bad-exit=1 r2 train ...                    # slurm

Each process finds its rank in the environment (torchrun: RANK, WORLD_SIZE, LOCAL_RANK;
srun: SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, with MASTER_ADDR defaulting to the
step's first node and MASTER_PORT to a port derived from the job id). GPUs use NCCL (each
process the GPU of its local rank), CPUs gloo.

Semantics (README, "Several GPUs or machines"):
- The batch size (the preset's or --batch-size) is the GLOBAL batch. Each process takes its
  share of every batch: the batch's samples are split in rank order, shares differing by at
  most one sample (a process whose share of a short last batch is empty runs one sample with
  weight 0). The learning-rate schedule counts global steps, as one process does.
- A step equals a single-process step on the same batch up to float summation order: every
  share is padded to the whole batch's lengths; the loss normalisers (positive points,
  valid points, batch size) are summed over processes; the terms that compare samples of
  the batch (saliency column term, video-level InfoNCE) see the gathered batch; gradients
  are summed, not averaged (each process's loss is its part of the batch loss). Dropout
  draws differ: each process draws for its own samples from its own generator.
- The epoch order is the single-process order (seeded by (seed, epoch)); shards are its
  slices, so any world size sees the same batches.
- Validation is sharded: process r predicts queries r, r + W, ...; rank 0 gathers the rows
  in order and scores them. Only rank 0 writes checkpoints, the resume state and the logs.
- `--resume` needs the world size the run was started with (the resume state holds every
  process's random-number generators).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from r2.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_PORT = 29500  # torchrun's default MASTER_PORT
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000  # srun: MASTER_PORT = base + job id % span
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer fails the run
RANK_SEED_STRIDE = 1_000_003  # process r > 0 draws dropout from seed + r * stride


class DistributedError(UsageError, RuntimeError):
    """The distributed environment is incomplete or does not fit the run."""


class Share(NamedTuple):
    """This process's part of one global batch: samples [offset, offset + count) of
    `total` (count 0: an empty share, the process runs a placeholder sample)."""

    offset: int
    count: int
    total: int


def share_of(total: int, rank: int, world_size: int) -> Share:
    """Rank `rank`'s share of a batch of `total` samples (sizes differ by at most one)."""
    base, extra = divmod(total, world_size)
    count = base + (1 if rank < extra else 0)
    return Share(rank * base + min(rank, extra), count, total)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run; world_size 1 = a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    group: Any = None  # the process group of r2's own collectives (losses, validation)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env(env: dict[str, str] | None = None) -> tuple[int, int, int, str] | None:
    """(rank, world size, local rank, launcher) from torchrun's or srun's variables."""
    env = dict(os.environ if env is None else env)
    try:
        if "WORLD_SIZE" in env and "RANK" in env:
            world = int(env["WORLD_SIZE"])
            return int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])), "torchrun"
        if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # inside srun
            rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"])
            return rank, world, int(env.get("SLURM_LOCALID", 0)), "srun"
    except ValueError as err:
        raise DistributedError(f"malformed distributed environment: {err}") from None
    return None


def local_processes(env: dict[str, str] | None = None) -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE, srun's tasks per
    node, e.g. "8(x2)"), 1 outside a launcher: each one preloads its own copy into RAM."""
    env = dict(os.environ if env is None else env)
    if from_env(env) is None:
        return 1
    text = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or "1"
    try:
        return max(1, int(text.split("(")[0].split(",")[0]))
    except ValueError:
        return 1


def _slurm_rendezvous() -> None:
    """MASTER_ADDR / MASTER_PORT for srun tasks that were not given them."""
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
        scontrol = shutil.which("scontrol")
        if not nodes or scontrol is None:
            raise DistributedError("srun: set MASTER_ADDR (the host of rank 0); cannot derive "
                                   "it without SLURM_STEP_NODELIST and scontrol")  # fmt: skip
        out = subprocess.run([scontrol, "show", "hostnames", nodes], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        os.environ["MASTER_ADDR"] = out[0]
    if "MASTER_PORT" not in os.environ:
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        os.environ["MASTER_PORT"] = str(SLURM_PORT_BASE + job % SLURM_PORT_SPAN)


def _device(name: str, local_rank: int) -> torch.device:
    from r2.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        if name.strip().lower() not in ("auto", "cuda"):
            raise DistributedError(
                f"--device {name}: under torchrun/srun each process uses the GPU of its local "
                "rank; pass --device cuda (or auto)"
            )
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible here"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DistributedError(f"--device {name}: distributed training runs on CUDA or CPU")
    return device


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun/srun with more than one process.

    Returns:
        (Dist, this process's device). A single process gets `SINGLE` and the device as
        `r2.device.resolve_device` gives it; nothing is initialised.
    """
    import torch.distributed as dist

    found = from_env()
    if found is None or found[1] <= 1:
        from r2.device import resolve_device

        return SINGLE, resolve_device(device_name)
    rank, world, local, launcher = found
    if not dist.is_available():
        raise DistributedError(f"{launcher} started {world} processes but this torch build "
                               "has no torch.distributed")  # fmt: skip
    if launcher == "srun":
        _slurm_rendezvous()
    device = _device(device_name, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    if "MASTER_ADDR" not in os.environ:
        raise DistributedError(f"{launcher}: MASTER_ADDR is not set (the host of rank 0)")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=TIMEOUT)  # fmt: skip
        atexit.register(_destroy_default_group)
    group = dist.new_group(backend=backend)  # apart from DDP's: no interleaved collectives
    log.info("process %d of %d (%s, local rank %d) on %s", rank, world, backend, local, device)
    return Dist(rank, world, local, backend, group), device


def shutdown(d: Dist) -> None:
    """Leave the run's group (after the run, also after a failure). The default group stays
    for the process's next run (`--domain all` trains one run per domain): a second
    `init_process_group` on torchrun's store would read the first one's stale addresses.
    It is destroyed when the process exits."""
    import torch.distributed as dist

    if d.enabled and dist.is_initialized() and d.group is not None:
        dist.destroy_process_group(d.group)


def _destroy_default_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over `model` whose gradients are SUMMED over processes
    (each process's loss is its part of the batch loss, see the module doc).

    (`static_graph=True` would spare the unused-parameter search, but with it DDP's first
    step ignores the communication hook: gradients came out neither summed nor averaged.)
    """
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=has_unused_parameters(model.cfg),
    )
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def has_unused_parameters(cfg) -> bool:
    """Whether some parameters of an `R2Model` of `cfg` get no gradient: `coord_scale`
    without a coordinate head (highlight presets), the query pooling when no loss uses
    the pooled query. DDP must then search for them every step (tested against a real
    backward pass for every preset)."""
    pooled = cfg.loss_sal_weight or cfg.loss_video_cal_weight or cfg.loss_layer_cal_weight
    return not cfg.coord_head or not pooled


def _sum_hook(group, bucket):
    """DDP communication hook: all-reduce SUM of the gradient bucket (no averaging)."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def sum_(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of `x` over processes (no gradient)."""
    import torch.distributed as dist

    x = x.detach().clone()
    dist.all_reduce(x, group=d.group)
    return x


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 with per-process row counts; backward: the summed gradient
    of this process's rows (every process's loss may use every row)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], rank: int, group) -> torch.Tensor:
        import torch.distributed as dist

        most = max(counts)
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: counts[rank]] = x[: counts[rank]]
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.counts, ctx.rank, ctx.group, ctx.local = counts, rank, group, x.shape[0]
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.counts[: ctx.rank])
        out = grad.new_zeros((ctx.local, *grad.shape[1:]))
        out[: ctx.counts[ctx.rank]] = grad[start : start + ctx.counts[ctx.rank]]
        return out, None, None, None


def gather_rows(x: torch.Tensor, share: Share, d: Dist) -> torch.Tensor:
    """The whole batch's rows of `x` (this process's share holds x[:share.count]), in
    batch order, differentiable."""
    counts = [share_of(share.total, r, d.world_size).count for r in range(d.world_size)]
    return _Gather.apply(x, counts, d.rank, d.group)


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every process's `obj` (python objects, e.g. prediction rows), in rank order."""
    import torch.distributed as dist

    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj, group=d.group)
    return out


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's `obj` on every process."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=d.group)
    return box[0]


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled:
        dist.barrier(group=d.group)
