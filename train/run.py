"""The orchestration of one training run: settings, data, model, then `loop.fit`.

:func:`train` is what `r2 train` runs. Heavy imports (torch) happen inside it, so importing
`r2.train` stays cheap for the command line. Run settings and `--resume` checks live in
`settings.py`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r2.errors import RunFailureError, os_error_message

from .settings import (
    RunExistsError,
    check_out,
    compare_settings,
    model_config,
    preset_with,
    run_settings,
    val_anno_for_resume,
)

log = logging.getLogger(__name__)

__all__ = ["RunExistsError", "default_workers", "train"]
DEFAULT_WORKERS = 4  # loader reading threads (they wait on the disk, not on a core)


def default_workers() -> int:
    """Loader reading threads by default: 4 on any machine. They spend a cold epoch waiting
    on the disk with the GIL released (benchmarks/loader.py, 2 cores, 300 videos cold: 1.03x
    the plain read of the file with 4, 0.64x with 1) and copy from the page cache warm."""
    return DEFAULT_WORKERS


def preload_copies(cache_k: int, k: int) -> int:
    """Copies of the features a RAM preload makes on this machine: one, shared by its
    processes, when they map the cache file (all its K layers used); else one each."""
    from .distributed import local_processes

    return 1 if k == cache_k else local_processes()


@dataclass
class RunOptions:
    """How a run trains and saves (the `train` arguments that are not data or preset)."""

    seed: int
    amp: str
    k: int | None
    config: dict[str, Any]
    skip_missing: bool
    preload: str
    workers: int
    save_every: int
    max_steps: int | None
    on_step: Callable[[int], None] | None
    resume: bool
    strict_anno: bool = False


class _RunLogHandler(logging.FileHandler):
    """train.log; a failed write (e.g. a full disk) is reported once, not as a traceback."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            reason = os_error_message(err) if isinstance(err, OSError) else str(err)
            print(f"warning: cannot write {self.baseFilename} ({reason})", file=sys.stderr)


def _file_logger(out: Path) -> logging.Handler:
    handler = _RunLogHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("r2").addHandler(handler)
    return handler


def train(
    cache: str | os.PathLike,
    train_anno: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_anno: str | os.PathLike | None = None,
    preset: str = "qvhighlights",
    device: str = "auto",
    resume: bool = False,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    lr_drop: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    preload: str = "auto",
    k: int | None = None,
    save_every: int = 0,
    max_steps: int | None = None,
    amp: str = "auto",
    skip_missing: bool = False,
    config: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    strict_anno: bool = False,
) -> dict[str, Any]:
    """Train an R² model on cached features (spec §3, §5).

    Args:
        cache: feature cache (`r2 extract` output) holding the train and val ids.
        train_anno: QVHighlights-schema JSON Lines of the training queries.
        out: run folder; receives best/last checkpoints (+ .json), resume.safetensors,
            log.jsonl (metrics, one JSON object per line) and train.log.
        val_anno: validation annotations with ground truth (scored every epoch; the best
            epoch by the dataset's key metric is kept in best.safetensors). None: no
            validation and no best.safetensors (use last.safetensors); with `resume`, None
            reuses the validation file the run was started with.
        preset: dataset preset name (schedule, labels, post-processing).
        device: "auto", "cpu", "cuda", "cuda:1", ...
        resume: continue the run in `out` from its resume state (exactly; refuses changed
            settings except epochs, including another validation set). Without a resume
            state the run starts fresh.
        epochs, batch_size, lr, warmup, lr_drop: override the preset (warm-up iterations;
            LR-drop epoch, 0 = never).
        seed: seeds python, numpy, torch, data order and positive-clip draws.
        workers: loader threads reading features into the batch buffers; default
            `default_workers()` (4 reading threads).
        preload: "none", "ram", "gpu" or "auto" (decided from feature size vs free memory).
        k: CLIP layers used by the model (the last k of the cache's); default 4.
        save_every: also save the resume state every N optimizer steps (0 = per epoch).
        max_steps: stop after this many optimizer steps in total (resume continues).
        amp: "auto" (fp16 autocast on CUDA), "off", "fp16", "bf16".
        skip_missing: drop queries whose features are not in the cache (counted).
        config: `R2Config` field overrides (e.g. {"dims": 64, "padding_invariant": True}).
        on_step: called with the global step after every optimizer step.
        strict_anno: training windows that need repairs (start > end, negative, past the
            end, zero length) are errors instead of counted warnings.

    Returns:
        Summary dict (finished, epoch, step, best metric and epoch, paths).

    Raises:
        UsageError subclasses (RunExistsError, ResumeMismatchError, ConfigError,
        DeviceError, MissingFeaturesError, AnnotationError, CheckpointError, ...) for bad
        input; RunFailureError (NonFiniteLossError, a write that failed mid-run such as a
        full disk) when the run could not go on: the last saved state stays resumable.
    """
    from . import loop
    from .distributed import barrier, setup, shutdown
    from .resume import read_training_info

    out = Path(out)
    resume = check_out(out, resume, loop.RESUME_FILE)
    if resume:
        saved = read_training_info(out / loop.RESUME_FILE)["settings"]
        val_anno = val_anno_for_resume(saved, None if val_anno is None else Path(val_anno))
    p = preset_with(preset, epochs=epochs, batch_size=batch_size, lr=lr, warmup_iters=warmup,
                    lr_drop_epoch=lr_drop)  # fmt: skip
    options = RunOptions(
        seed=seed, amp=amp, k=k, config=dict(config or {}), skip_missing=skip_missing,
        preload=preload, workers=default_workers() if workers is None else workers,
        save_every=save_every, max_steps=max_steps, on_step=on_step, resume=resume,
        strict_anno=strict_anno,
    )  # fmt: skip
    d, dev = setup(device)  # torchrun / srun: join the process group (distributed.py)
    try:
        if d.main:
            _prepare_out(out, resume, loop.LOG_FILE)
        barrier(d)
        return _train_in(out, Path(cache), Path(train_anno), val_anno, p, dev, options, d)
    finally:
        shutdown(d)


def _prepare_out(out: Path, resume: bool, log_file: str) -> None:
    """Check the run folder is writable (before any long work) and clear its debris."""
    from r2.files import ensure_writable_dir, remove_stale_temps

    ensure_writable_dir(out, "run folder (--out)")
    removed = remove_stale_temps(out)
    if removed:
        log.info("removed %d temporary file(s) left in %s by a killed run", removed, out)
    if not resume:  # no resume state: any old log is from an attempt that saved nothing
        (out / log_file).unlink(missing_ok=True)


def _train_in(out: Path, cache: Path, train_anno: Path, val_anno, p, dev, options: RunOptions, d):
    """Open the cache and the run log, build the run, fit; a failed write mid-run is a
    RunFailureError that says the run is resumable. Processes other than rank 0 of a
    distributed run write no log and report warnings only."""
    from r2.cache import FeatureCache

    from . import loop

    loop.seed_everything(options.seed)
    r2_log = logging.getLogger("r2")
    handler, level = (_file_logger(out), r2_log.level) if d.main else (None, r2_log.level)
    if not d.main:
        r2_log.setLevel(logging.WARNING)
    cache_obj = FeatureCache(cache)
    try:
        run = _build_run(cache_obj, train_anno, val_anno, out, p, dev, options, d)
        try:
            summary = loop.fit(run)
        except OSError as err:  # a full disk, a folder gone read-only, ...
            raise RunFailureError(
                f"{os_error_message(err)}; the last saved state in {out} is intact: fix "
                "this, then continue with --resume"
            ) from err
        log.info("done: %s", summary)
        return summary
    finally:
        cache_obj.close()
        r2_log.setLevel(level)
        if handler is not None:
            r2_log.removeHandler(handler)
            handler.close()


def _build_run(cache, train_anno: Path, val_anno, out: Path, p, dev, o: RunOptions, d):
    """Data, model, optimizer and loop state of a run (restored when resuming)."""
    import torch

    from . import loop
    from .checkpoint import build_meta
    from .data import EpochBatchSampler, GroundingDataset, make_loader
    from .distributed import RANK_SEED_STRIDE, wrap
    from .model import R2Model

    amp_dtype = loop.autocast_dtype(o.amp, dev)
    if p.fps is not None and abs(p.fps - cache.settings.fps) > 1e-9:
        log.warning("the %s preset expects features at %g fps, %s has %g fps: training on "
                    "them anyway (labels follow the cache's clips)", p.name, p.fps,
                    cache.path, cache.settings.fps)  # fmt: skip
    cfg = model_config(p, cache.settings, o.k, o.config)
    train_items, val_items, features, mode = _data(cache, train_anno, val_anno, p, cfg.k, o, dev)
    settings = run_settings(cfg, p, cache, o.seed, train_items, val_items, o.amp, train_anno,
                            val_anno, d.world_size, d.backend)  # fmt: skip
    model = R2Model(cfg).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    dataset = GroundingDataset(train_items, features, cache.settings.fps, cfg.k, train=True,
                               seed=o.seed, repeat=p.dataset_repeat)  # fmt: skip
    sampler = EpochBatchSampler(len(dataset), p.batch_size, o.seed, rank=d.rank,
                                world_size=d.world_size, lengths=dataset.lengths)  # fmt: skip
    run = loop.Run(
        model=model, optimizer=optimizer,
        scaler=torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16),
        loader=make_loader(dataset, sampler, o.workers, o.seed, mode, dev), sampler=sampler,
        preset=p, device=dev, out=out, amp_dtype=amp_dtype, val_items=val_items,
        val_features=features, fps=cache.settings.fps, workers=o.workers, preload=mode,
        save_every=o.save_every, max_steps=o.max_steps, on_step=o.on_step,
        meta=build_meta(cfg, p, cache.settings, cache.attrs, settings=settings), dist=d,
    )  # fmt: skip
    if o.resume:
        _restore(run, settings)
    elif d.rank > 0:  # own dropout draws (a resumed run restores this process's state)
        torch.manual_seed(o.seed + RANK_SEED_STRIDE * d.rank)
    if d.enabled:
        run.ddp = wrap(model, d, dev)
    log.info("training %d queries (x%d per epoch, %d steps/epoch of %d) for %d epochs on %s"
             "%s; validating on %s; outputs in %s", len(train_items), p.dataset_repeat,
             sampler.batches_per_epoch, p.batch_size, p.epochs, dev,
             f" in {d.world_size} processes ({d.backend})" if d.enabled else " (1 process)",
             f"{len(val_items)} queries of {val_anno}" if val_items else "nothing (no --val-anno)",
             out)  # fmt: skip
    return run


def _restore(run, settings: dict) -> None:
    """Load the resume state into `run` after checking it is the same run."""
    from r2.fields import dataclass_problems

    from . import loop
    from .checkpoint import CheckpointError
    from .resume import load_training_state, read_training_info
    from .runlog import trim_log

    path = run.out / loop.RESUME_FILE
    compare_settings(read_training_info(path)["settings"], settings, path)  # world size first
    info = load_training_state(path, run.model, run.optimizer, run.scaler, rank=run.dist.rank)
    problems = dataclass_problems(loop.LoopState, info.get("loop"), "loop")
    if problems:
        raise CheckpointError(f"{path}: damaged training state: {'; '.join(problems)}")
    compare_settings(info["settings"], settings, path)
    run.state = loop.LoopState(**info["loop"])
    if run.dist.main:
        trim_log(run.out / loop.LOG_FILE, run.state)
    s = run.state
    log.info("resumed %s at epoch %d, batch %d (step %d)", run.out, s.epoch + 1, s.batch, s.step)


def _data(cache, train_anno: Path, val_anno, preset, k: int, o: RunOptions, device):
    """Prepare train/val items and their feature sources (cache file or preloaded)."""
    from r2.evaluate.records import parse_ground_truth, rows_from_dicts

    from .data import (
        PreloadedFeatures,
        feature_bytes,
        prepare_items,
        read_annotations,
        resolve_preload,
    )

    train_items = prepare_items(
        read_annotations(train_anno, strict=o.strict_anno, what="training annotations"),
        cache,
        preset.name,
        train=True,
        min_video_len=preset.min_video_len,
        skip_missing=o.skip_missing,
    )
    val_items = None
    if val_anno is not None:
        val_items = prepare_items(
            read_annotations(val_anno, what="validation annotations"),
            cache,
            preset.name,
            train=False,
            skip_missing=o.skip_missing,
        )
        # fail now, not after the first epoch, if the val file cannot be scored
        parse_ground_truth(
            rows_from_dicts(
                [it.anno.data for it in val_items], [it.anno.where for it in val_items]
            ),
            preset.name,
        )
    every = train_items + (val_items or [])
    mode = resolve_preload(o.preload, feature_bytes(cache, every, k), device,
                           preload_copies(cache.settings.k, k))  # fmt: skip
    if mode == "none":
        return train_items, val_items, cache, mode
    features = PreloadedFeatures.load(cache, every, k, device if mode == "gpu" else None)
    log.info(
        "preloaded the features of %d queries into %s",
        len(every),
        "GPU memory" if mode == "gpu" else "RAM",
    )
    return train_items, val_items, features, mode
