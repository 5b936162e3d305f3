"""The settings of a run: the model config and preset it trains with, what it stores in its
checkpoints, and what `--resume` compares so that a resumed run is the same run.

A resumed run reuses the validation set it was started with (the path stored in its
resume state) when `--val-anno` is not given, and refuses a different one like any other
changed setting: an epoch that was not validated can never replace the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from r2.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_K = 4  # CLIP layers used by the released model
# Settings that must not change when a run is resumed (else the result is another run).
# "val_items" is compared only when the saved state has it (states written before r2 0.1.1
# stored the validation path only).
RESUME_FIXED = ("config", "preset", "cache", "seed", "train_items", "amp", "val_items")


class RunExistsError(UsageError, RuntimeError):
    """The output folder already holds a run and --resume was not given."""


class ResumeMismatchError(UsageError, ValueError):
    """--resume with settings that would make it another run; lists every difference."""


def _digest(items, with_data: bool) -> dict[str, Any] | None:
    if items is None:
        return None
    if with_data:
        text = "\n".join(json.dumps(it.anno.data, sort_keys=True, default=str) for it in items)
    else:
        text = "\n".join(it.anno.qid for it in items)
    return {"count": len(items), "sha1": hashlib.sha1(text.encode()).hexdigest()}


def run_settings(
    cfg,
    preset,
    cache,
    seed: int,
    train_items,
    val_items,
    amp: str,
    train_anno,
    val_anno,
    world_size: int = 1,
    backend: str | None = None,
) -> dict[str, Any]:
    """The run settings stored in checkpoints and compared on resume (world_size: processes
    of a distributed run, backend: its torch.distributed backend, None for one process)."""
    return {
        "config": dataclasses.asdict(cfg),
        "preset": dataclasses.asdict(preset),
        "cache": dataclasses.asdict(cache.settings),
        "seed": seed,
        "amp": amp,
        "train_items": _digest(train_items, with_data=False),
        "val_items": _digest(val_items, with_data=True),  # ids AND ground truth
        "train_anno": str(Path(train_anno).resolve()),
        "val_anno": None if val_anno is None else str(Path(val_anno).resolve()),
        "world_size": world_size,
        "backend": backend,
    }


def compare_settings(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume with settings that would make it another run."""
    norm = lambda x: json.loads(json.dumps(x, default=list))  # noqa: E731 - tuples -> lists
    was, now = int(saved.get("world_size") or 1), int(current.get("world_size") or 1)
    if was != now:
        raise ResumeMismatchError(
            f"cannot resume {path}: the run was trained by {_processes(was)}, this is "
            f"{_processes(now)}; resume it with the same number of processes (torchrun "
            f"--nproc_per_node x --nnodes = {was}): the batch shares and each process's "
            "random draws depend on it"
        )
    diffs = []
    for key in RESUME_FIXED:
        if key == "val_items" and key not in saved:
            continue
        a, b = norm(saved.get(key)), norm(current.get(key))
        if key == "val_items" and a != b:
            diffs.append(f"validation set: {_describe_val(a, saved)} (saved) vs "
                         f"{_describe_val(b, current)} (now)")  # fmt: skip
        elif isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"{key}.{k}: {a.get(k)!r} (saved) vs {b.get(k)!r} (now)"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k) and not (key == "preset" and k == "epochs")
            ]
        elif a != b:
            diffs.append(f"{key}: {a!r} (saved) vs {b!r} (now)")
    if diffs:
        raise ResumeMismatchError(
            f"cannot resume {path}: the run was started with other settings: " + "; ".join(diffs)
        )


def _processes(n: int) -> str:
    return "a single process" if n == 1 else f"{n} processes (torchrun/srun world size {n})"


def _describe_val(digest: dict | None, settings: dict) -> str:
    if digest is None:
        return "none"
    return f"{digest['count']} queries of {settings.get('val_anno')} (sha1 {digest['sha1'][:8]})"


def val_anno_for_resume(saved: dict, val_anno: Path | None) -> Path | None:
    """The validation file of a resumed run: the given one, else the one stored in `saved`."""
    stored = saved.get("val_anno")
    if val_anno is not None or stored is None:
        return val_anno
    if not Path(stored).is_file():
        raise ResumeMismatchError(
            f"--resume: the run validated on {stored}, which is not there any more; pass "
            "--val-anno with the same queries (a run never stops validating on resume)"
        )
    log.info("--resume: validating on %s, as the run did before", stored)
    return Path(stored)


def check_out(out: Path, resume: bool, resume_file: str) -> bool:
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


def model_config(preset, cache_settings, k: int | None, overrides: dict[str, Any]):
    """The model config: the preset's, sized for the cache, with user overrides."""
    from .config import ConfigError, R2Config

    known = {f.name for f in dataclasses.fields(R2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model option(s) {unknown}; R2Config fields: {sorted(known)}")
    overrides = dict(overrides)
    k = k or overrides.get("k")
    overrides.pop("k", None)
    if k is None:
        k = min(DEFAULT_K, cache_settings.k)
        if k < DEFAULT_K:
            log.warning("the cache holds only %d CLIP layers: the model uses K = %d (the "
                        "released model uses %d)", cache_settings.k, k, DEFAULT_K)  # fmt: skip
    if k > cache_settings.k:
        raise ConfigError(f"--k {k}: the cache holds only {cache_settings.k} CLIP layers")
    values = {"video_dim": cache_settings.video_dim, "query_dim": cache_settings.text_dim, "k": k}
    return preset.model_config(**{**values, **overrides})


def preset_with(name: str, **overrides: Any):
    """The named preset with the given (non-None) fields replaced."""
    from .config import get_preset

    preset = get_preset(name)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("lr_drop_epoch") == 0:
        changes["lr_drop_epoch"] = None  # --lr-drop 0: never drop
    return dataclasses.replace(preset, **changes)
