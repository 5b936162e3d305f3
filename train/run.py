"""The orchestration of one training run: settings, data, model, then `loop.fit`.

:func:`train` is what `r2 train` runs. Heavy imports (torch) happen inside it, so importing
`r2.train` stays cheap for the command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r2.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_K = 4  # CLIP layers used by the released model
# Settings that must not change when a run is resumed (else the result is another run).
RESUME_FIXED = ("config", "preset", "cache", "seed", "train_items", "amp")


class RunExistsError(UsageError, RuntimeError):
    """The output folder already holds a run and --resume was not given."""


def _settings(
    cfg, preset, cache, seed: int, train_items, amp: str, train_anno: Path, val_anno: Path | None
) -> dict[str, Any]:
    """The run settings stored in checkpoints and compared on resume."""
    ids = "\n".join(it.anno.qid for it in train_items).encode()
    return {
        "config": dataclasses.asdict(cfg),
        "preset": dataclasses.asdict(preset),
        "cache": dataclasses.asdict(cache.settings),
        "seed": seed,
        "amp": amp,
        "train_items": {"count": len(train_items), "sha1": hashlib.sha1(ids).hexdigest()},
        "train_anno": str(train_anno),
        "val_anno": None if val_anno is None else str(val_anno),
    }


def _compare_settings(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume with settings that would make it another run."""
    import json

    norm = lambda x: json.loads(json.dumps(x, default=list))  # noqa: E731 - tuples -> lists
    diffs = []
    for key in RESUME_FIXED:
        a, b = norm(saved.get(key)), norm(current.get(key))
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"{key}.{k}: {a.get(k)!r} (saved) vs {b.get(k)!r} (now)"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k) and not (key == "preset" and k == "epochs")
            ]
        elif a != b:
            diffs.append(f"{key}: {a!r} (saved) vs {b!r} (now)")
    if diffs:
        raise ValueError(
            f"cannot resume {path}: the run was started with other settings:\n  - "
            + "\n  - ".join(diffs)
        )


def _model_config(preset, cache_settings, k: int | None, overrides: dict[str, Any]):
    """The model config: the preset's, sized for the cache, with user overrides."""
    from .config import R2Config

    known = {f.name for f in dataclasses.fields(R2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; R2Config fields: {sorted(known)}")
    k = k or overrides.get("k")
    overrides.pop("k", None)
    if k is None:
        k = min(DEFAULT_K, cache_settings.k)
        if k < DEFAULT_K:
            log.warning(
                "the cache holds only %d CLIP layers: the model uses K = %d (the "
                "released model uses %d)",
                cache_settings.k,
                k,
                DEFAULT_K,
            )
    if k > cache_settings.k:
        raise ValueError(f"--k {k}: the cache holds only {cache_settings.k} CLIP layers")
    values = {
        "video_dim": cache_settings.video_dim,
        "query_dim": cache_settings.text_dim,
        "k": k,
        **overrides,
    }
    return preset.model_config(**values)


def _file_logger(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("r2").addHandler(handler)
    return handler


def _preset(name: str, **overrides: Any):
    """The named preset with the given (non-None) fields replaced."""
    from .config import get_preset

    preset = get_preset(name)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("lr_drop_epoch") == 0:
        changes["lr_drop_epoch"] = None  # --lr-drop 0: never drop
    return dataclasses.replace(preset, **changes)


def _check_out(out: Path, resume: bool, resume_file: str) -> bool:
    """Protect an existing run; returns whether there is a state to resume."""
    path = out / resume_file
    if path.exists() and not resume:
        raise RunExistsError(
            f"{out} already holds a run ({path.name}); pass --resume to "
            "continue it or choose another --out"
        )
    if resume and not path.exists():
        log.warning("--resume: no resume state in %s, starting a new run", out)
        return False
    return resume


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
    workers: int = 4,
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
            epoch by the dataset's key metric is kept). None: no validation, best = last.
        preset: dataset preset name (schedule, labels, post-processing).
        device: "auto", "cpu", "cuda", "cuda:1", ...
        resume: continue the run in `out` from its resume state (exactly; refuses changed
            settings except epochs). Without a resume state the run starts fresh.
        epochs, batch_size, lr, warmup, lr_drop: override the preset (warm-up iterations;
            LR-drop epoch, 0 = never).
        seed: seeds python, numpy, torch, data order and positive-clip draws.
        workers: data-loader processes (each opens the cache read-only).
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
        RunExistsError, MissingFeaturesError, AnnotationError, CheckpointError,
        NonFiniteLossError, ValueError: with actionable messages.
    """
    from r2.cache import FeatureCache

    from . import loop

    out, train_anno = Path(out), Path(train_anno)
    resume = _check_out(out, resume, loop.RESUME_FILE)
    dev = loop.resolve_device(device)
    p = _preset(
        preset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_iters=warmup,
        lr_drop_epoch=lr_drop,
    )
    loop.seed_everything(seed)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # no resume state: any old log is from an attempt that saved nothing
        (out / loop.LOG_FILE).unlink(missing_ok=True)
    handler = _file_logger(out)
    cache_obj = FeatureCache(cache)
    try:
        run = _build_run(
            cache_obj,
            train_anno,
            val_anno,
            out,
            p,
            dev,
            seed=seed,
            amp=amp,
            k=k,
            config=dict(config or {}),
            skip_missing=skip_missing,
            preload=preload,
            workers=workers,
            save_every=save_every,
            max_steps=max_steps,
            on_step=on_step,
            resume=resume,
            strict_anno=strict_anno,
        )
        summary = loop.fit(run)
        log.info("done: %s", summary)
        return summary
    finally:
        cache_obj.close()
        logging.getLogger("r2").removeHandler(handler)
        handler.close()


def _build_run(
    cache,
    train_anno: Path,
    val_anno,
    out: Path,
    p,
    dev,
    *,
    seed: int,
    amp: str,
    k: int | None,
    config: dict[str, Any],
    skip_missing: bool,
    preload: str,
    workers: int,
    save_every: int,
    max_steps: int | None,
    on_step,
    resume: bool,
    strict_anno: bool = False,
):
    """Data, model, optimizer and loop state of a run (restored when resuming)."""
    import torch

    from . import loop
    from .checkpoint import build_meta
    from .data import EpochBatchSampler, GroundingDataset, make_loader
    from .model import R2Model
    from .resume import load_training_state

    amp_dtype = loop.autocast_dtype(amp, dev)
    if p.fps is not None and abs(p.fps - cache.settings.fps) > 1e-9:
        log.warning("the %s preset expects features at %g fps, %s has %g fps: training on "
                    "them anyway (labels follow the cache's clips)", p.name, p.fps,
                    cache.path, cache.settings.fps)  # fmt: skip
    cfg = _model_config(p, cache.settings, k, config)
    train_items, val_items, features, mode = _data(
        cache, train_anno, val_anno, p, cfg.k, skip_missing, preload, dev, strict_anno
    )
    settings = _settings(
        cfg,
        p,
        cache,
        seed,
        train_items,
        amp,
        train_anno,
        None if val_anno is None else Path(val_anno),
    )
    model = R2Model(cfg).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    dataset = GroundingDataset(
        train_items,
        features,
        cache.settings.fps,
        cfg.k,
        train=True,
        seed=seed,
        repeat=p.dataset_repeat,
    )
    sampler = EpochBatchSampler(len(dataset), p.batch_size, seed)
    run = loop.Run(
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        loader=make_loader(dataset, sampler, workers, seed, mode),
        sampler=sampler,
        preset=p,
        device=dev,
        out=out,
        amp_dtype=amp_dtype,
        val_items=val_items,
        val_features=features,
        fps=cache.settings.fps,
        workers=workers,
        preload=mode,
        save_every=save_every,
        max_steps=max_steps,
        on_step=on_step,
        meta=build_meta(cfg, p, cache.settings, cache.attrs, settings=settings),
    )
    if resume:
        path = out / loop.RESUME_FILE
        info = load_training_state(path, model, optimizer, scaler)
        _compare_settings(info["settings"], settings, path)
        run.state = loop.LoopState(**info["loop"])
        loop.trim_log(out / loop.LOG_FILE, run.state)
        log.info(
            "resumed %s at epoch %d, batch %d (step %d)",
            out,
            run.state.epoch + 1,
            run.state.batch,
            run.state.step,
        )
    log.info(
        "training %d queries (x%d per epoch, %d steps/epoch) for %d epochs on %s; outputs in %s",
        len(train_items),
        p.dataset_repeat,
        sampler.batches_per_epoch,
        p.epochs,
        dev,
        out,
    )
    return run


def _data(
    cache,
    train_anno: Path,
    val_anno,
    preset,
    k: int,
    skip_missing: bool,
    preload: str,
    device,
    strict_anno: bool = False,
):
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
        read_annotations(train_anno, strict=strict_anno, what="training annotations"),
        cache,
        preset.name,
        train=True,
        min_video_len=preset.min_video_len,
        skip_missing=skip_missing,
    )
    val_items = None
    if val_anno is not None:
        val_items = prepare_items(
            read_annotations(val_anno, what="validation annotations"),
            cache,
            preset.name,
            train=False,
            skip_missing=skip_missing,
        )
        # fail now, not after the first epoch, if the val file cannot be scored
        parse_ground_truth(
            rows_from_dicts(
                [it.anno.data for it in val_items], [it.anno.where for it in val_items]
            ),
            preset.name,
        )
    every = train_items + (val_items or [])
    mode = resolve_preload(preload, feature_bytes(cache, every, k), device)
    if mode == "none":
        return train_items, val_items, cache, mode
    features = PreloadedFeatures.load(cache, every, k, device if mode == "gpu" else None)
    log.info(
        "preloaded the features of %d queries into %s",
        len(every),
        "GPU memory" if mode == "gpu" else "RAM",
    )
    return train_items, val_items, features, mode
