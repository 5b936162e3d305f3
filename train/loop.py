"""The training loop (spec §5): AdamW, linear warm-up then step LR drop, gradient clipping,
autocast (fp16 on CUDA, optional bf16 on CPU), per-epoch validation, checkpoints and an
exact resume.

Exactness of `--resume`: the learning rate is a pure function of (step, epoch); data order
and positive-clip draws are functions of (seed, epoch, index) (see `data.py`); the model's
dropout draws come from the torch RNG, whose state is saved with the optimizer after every
checkpointed step. A resumed run therefore replays the remaining steps bit for bit on CPU.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from r2.errors import RunFailureError
from r2.evaluate import evaluate_records
from r2.evaluate.inference import predict_items
from r2.logs import once_per_run

from .batch import Batch
from .checkpoint import save_checkpoint
from .config import TrainPreset
from .data import EpochBatchSampler, FeatureSource, Item
from .distributed import SINGLE, Dist
from .resume import save_training_state
from .runlog import (
    LOG_FILE,
    RESUME_FILE,
    _fmt,
    append_log,
    best_on_disk,
    last_good_checkpoint,
    warn_once,
)

log = logging.getLogger(__name__)

KEY_METRICS = {  # the validation metric that selects best.safetensors (higher is better)
    "qvhighlights": "MR-full-mAP",  # the official engine's first key (moment retrieval mAP)
    "charades": "mIoU", "tacos": "mIoU", "ego4d": "mIoU",  # the official's first present key
    "youtube": "mAP", "tvsum": "mAP",  # highlight detection mAP (per-domain average)
}  # fmt: skip
LOG_EVERY = 10  # optimizer steps between two "train" lines of log.jsonl


class NonFiniteLossError(RunFailureError, RuntimeError):
    """The loss (or, without a grad scaler, the gradient norm) became NaN/inf."""


def learning_rate(preset: TrainPreset, step: int, epoch: int) -> float:
    """LR of optimizer step `step` (0-based, global) in epoch `epoch` (0-based).

    Step policy per epoch: lr × `lr_drop_factor` from `lr_drop_epoch` on. Linear warm-up
    per iteration (the original's nncore rule): for step < warmup_iters the LR is
    lr × (1 − (1 − warmup_ratio) × (1 − step / warmup_iters)), i.e. warmup_ratio × lr at
    step 0 rising linearly towards lr.
    """
    lr = preset.lr
    if preset.lr_drop_epoch is not None and epoch >= preset.lr_drop_epoch:
        lr *= preset.lr_drop_factor
    if step < preset.warmup_iters:
        lr *= 1 - (1 - preset.warmup_ratio) * (1 - step / preset.warmup_iters)
    return lr


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda if available, else cpu; anything else checked (r2.device.DeviceError)."""
    from r2.device import resolve_device as resolve

    return resolve(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision: "auto" = fp16 on CUDA (the original), none elsewhere; "bf16" works
    on CPU and CUDA (on CPU every matrix product of the model runs in bfloat16, including
    the fused video_map layer: see train/fused.py); "fp16" needs CUDA."""
    choices = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp not in choices:
        raise ValueError(f"amp must be one of auto, off, fp16, bf16; got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"--amp fp16 needs a CUDA device (training runs on {device}); use --amp bf16 on CPU"
        )
    return choices[amp]


@dataclass
class LoopState:
    """Where the loop is; saved in the resume state."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of the current epoch already done
    step: int = 0  # optimizer steps done in total
    best: float | None = None  # best key-metric value so far
    best_epoch: int | None = None


@dataclass
class Run:
    """Everything the loop needs (built by `r2.train.train`)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: Iterable[Batch]  # r2.train.loader.BatchLoader
    sampler: EpochBatchSampler
    preset: TrainPreset
    device: torch.device
    out: Path
    meta: dict  # checkpoint metadata (config, preset, cache, settings)
    amp_dtype: torch.dtype | None = None
    val_items: list[Item] | None = None
    val_features: FeatureSource | None = None
    fps: float = 0.5
    workers: int = 0
    preload: str = "none"
    save_every: int = 0
    max_steps: int | None = None
    on_step: Callable[[int], None] | None = None
    state: LoopState = field(default_factory=LoopState)
    warned: set[str] = field(default_factory=set)  # warnings already given (once per run)
    dist: Dist = SINGLE  # this process's place in a distributed run (distributed.py)
    ddp: torch.nn.Module | None = None  # DistributedDataParallel over `model` when enabled

    @property
    def key_metric(self) -> str:
        return KEY_METRICS.get(self.preset.name, "mAP")


def train_step(run: Run, batch: Batch) -> tuple[dict[str, float], float]:
    """Forward, losses, backward, clip, optimizer step. Returns (losses, grad norm); in a
    distributed run the losses of the whole batch (every process raises alike)."""
    model, opt, scaler = run.model, run.optimizer, run.scaler
    model.train()
    batch = batch.to(run.device)
    with torch.autocast(
        run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None
    ):
        losses = _losses(run, batch)
    total = sum(losses.values())
    values = {k: float(v.detach()) for k, v in losses.items()}
    values["loss"] = float(total.detach())
    if run.dist.enabled:  # each process holds its part of the batch loss: add them up
        from .distributed import sum_

        parts = sum_(torch.tensor(list(values.values()), dtype=torch.float64, device=run.device),
                     run.dist).tolist()  # fmt: skip
        values = dict(zip(values, parts, strict=True))
    if not math.isfinite(values["loss"]):
        raise NonFiniteLossError(_nonfinite_message(run, batch, "loss", values))
    opt.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(opt)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, run.preset.grad_clip))
    if not math.isfinite(norm) and not scaler.is_enabled():
        raise NonFiniteLossError(
            _nonfinite_message(run, batch, "gradient norm", {**values, "grad_norm": norm})
        )
    scaler.step(opt)  # with fp16 the scaler skips steps with inf/nan gradients
    scaler.update()
    return values, norm


def _losses(run: Run, batch: Batch) -> dict[str, torch.Tensor]:
    """The weighted losses: of the batch, or this process's part of it (dist_losses.py)."""
    if not run.dist.enabled:
        return run.model.losses(run.model(batch), batch)
    from .dist_losses import distributed_losses

    share = run.sampler.share(run.state.batch)
    return distributed_losses(run.model, run.ddp(batch), batch, share, run.dist)


def _nonfinite_message(run: Run, batch: Batch, what: str, values: dict) -> str:
    s = run.state
    shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    return (
        f"non-finite {what} at step {s.step + 1} (epoch {s.epoch + 1}, batch {s.batch + 1}):"
        f" {shown}; batch qids: {batch.qids}. Training stopped; the last good checkpoint "
        f"is {last_good_checkpoint(run)} (continue with --resume, e.g. with a lower --lr, "
        "or check the features of these queries)."
    )


def run_epoch(run: Run) -> bool:
    """Train the rest of the current epoch. Returns False if stopped by `max_steps`."""
    s, preset = run.state, run.preset
    run.sampler.set_epoch(s.epoch, s.batch)
    total = run.sampler.batches_per_epoch
    bar = tqdm(
        total=total,
        initial=s.batch,
        desc=f"epoch {s.epoch + 1}/{preset.epochs}",
        unit="batch",
        disable=None if run.dist.main else True,
        dynamic_ncols=True,
    )
    t0, n_samples = time.perf_counter(), 0
    for batch in run.loader:
        lr = learning_rate(preset, s.step, s.epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        values, norm = train_step(run, batch)
        s.batch += 1
        s.step += 1
        n_samples += batch.size
        rate = n_samples / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
        if s.step % LOG_EVERY == 0 or s.batch == total:
            append_log(
                run,
                {
                    "event": "train",
                    "epoch": s.epoch + 1,
                    "step": s.step,
                    "batch": s.batch,
                    "lr": lr,
                    "grad_norm": norm,
                    "samples_per_s": round(rate * run.dist.world_size, 2),
                    "world_size": run.dist.world_size,
                    "backend": run.dist.backend,
                    **values,
                },
            )
        if run.save_every and s.step % run.save_every == 0 and s.batch < total:
            save_resume(run)
        if run.on_step is not None:
            run.on_step(s.step)
        if run.max_steps is not None and s.step >= run.max_steps and s.batch < total:
            bar.close()
            save_resume(run)
            log.info("stopped after %d steps (--max-steps); continue with --resume", s.step)
            return False
        batch = None  # its buffer may be refilled while the loader makes the next batch
    bar.close()
    return True


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Predict the validation items (B = 1 semantics), post-process, score. Distributed:
    each process predicts every world_size-th item, rank 0 scores them all, every process
    gets the metrics."""
    d = run.dist
    rows = predict_items(
        run.model,
        run.val_features,
        run.val_items[d.rank :: d.world_size],
        run.preset,
        run.fps,
        device=run.device,
        workers=run.workers,
        preload=run.preload,
        progress=d.main,
    )
    if not d.enabled:
        gt = [it.anno.data for it in run.val_items]
        return evaluate_records(rows, gt, dataset=run.preset.name)
    from .distributed import broadcast_object, gather_objects

    parts = gather_objects(rows, d)
    metrics = None
    if d.main:
        ordered = [parts[i % d.world_size][i // d.world_size] for i in range(len(run.val_items))]
        gt = [it.anno.data for it in run.val_items]
        metrics = evaluate_records(ordered, gt, dataset=run.preset.name)
    return broadcast_object(metrics, d)


def save_resume(run: Run) -> None:
    """The resume state (rank 0 writes it, with every process's random-number states)."""
    info = {"loop": asdict(run.state), "settings": run.meta.get("settings", {})}
    ranks = None
    if run.dist.enabled:
        from .distributed import gather_objects
        from .resume import capture_rng

        ranks = gather_objects(capture_rng(), run.dist)
    if run.dist.main:
        save_training_state(run.out / RESUME_FILE, run.model, run.optimizer, info, run.scaler,
                            rank_rng=ranks)  # fmt: skip


def end_epoch(run: Run) -> None:
    """Validate, write last/best checkpoints, log, then the resume state of the next epoch.

    best.safetensors is only ever replaced by an epoch that was validated and improved the
    key metric: an epoch without a finite key metric never becomes the best.
    """
    s = run.state
    metrics: dict[str, float] = validate(run) if run.val_items else {}
    key = run.key_metric
    value = metrics.get(key)
    validated = value is not None and math.isfinite(value)
    improved = validated and (s.best is None or value > s.best)
    if improved:
        s.best, s.best_epoch = value, s.epoch + 1
    if run.val_items and not validated:
        warn_once(
            run,
            f"validation gave no finite {key} (epoch {s.epoch + 1}: {value}): an "
            "epoch without it never replaces best.safetensors",
            once_key="no-key-metric",
        )
    finite = {k: v if v is None or math.isfinite(v) else None for k, v in metrics.items()}
    meta = {**run.meta, "epoch": s.epoch + 1, "step": s.step, "metrics": finite,
            "key_metric": key, "best": s.best, "best_epoch": s.best_epoch}  # fmt: skip
    if run.dist.main:
        save_checkpoint(run.out / "last", run.model, meta)
        if improved:
            save_checkpoint(run.out / "best", run.model, meta)
    append_log(run, {"event": "val", "epoch": s.epoch + 1, "step": s.step, "key": key,
                     "value": value, "best": s.best, "best_epoch": s.best_epoch,
                     **metrics})  # fmt: skip
    if run.val_items:
        log.info("epoch %d: %s = %s (best %s at epoch %s)", s.epoch + 1, key,
                 _fmt(value), _fmt(s.best), s.best_epoch)  # fmt: skip
    s.epoch += 1
    s.batch = 0
    save_resume(run)


def fit(run: Run) -> dict[str, Any]:
    """Train from `run.state` to the preset's last epoch (or `max_steps`).

    Returns:
        Summary: finished (bool), epoch, step, best value/epoch, key metric, output paths.

    Raises:
        NonFiniteLossError: NaN/inf loss; names the step, the batch's qids and the last
            good checkpoint.
    """
    s = run.state
    finished, began = True, time.perf_counter()
    with once_per_run("r2.evaluate"):  # its input checks run at every validation
        while s.epoch < run.preset.epochs:
            if not run_epoch(run):
                finished = False
                break
            end_epoch(run)
            if run.max_steps is not None and s.step >= run.max_steps:
                finished = s.epoch >= run.preset.epochs
                break
    if run.dist.enabled:  # rank 0 has written everything before anyone reads it
        from .distributed import barrier

        barrier(run.dist)
    best, best_epoch, best_path = best_on_disk(run)  # what is on disk, not what we believe
    if (best, best_epoch) != (s.best, s.best_epoch) and s.best is not None:
        log.warning("the run's best (%s at epoch %s) is not the one in %s (%s at epoch %s)",
                    s.best, s.best_epoch, run.out, best, best_epoch)  # fmt: skip
    last = run.out / "last.safetensors"
    return {
        "finished": finished,
        "epoch": s.epoch,
        "step": s.step,
        "best": best,
        "best_epoch": best_epoch,
        "key_metric": run.key_metric,
        "best_checkpoint": None if best_path is None else str(best_path),
        "last_checkpoint": str(last) if last.exists() else None,
        "log": str(run.out / LOG_FILE),
        "seconds": round(time.perf_counter() - began, 1),
    }
