"""Checkpoints: model weights + metadata, and the atomic writes every run file uses.

Files of a run directory (every write is atomic: temporary file, fsync, `os.replace`, so a
process killed at any instant leaves either the old or the new file, never a broken one):

- `best.safetensors` / `last.safetensors`: model weights; the metadata (model config,
  preset, cache settings, metrics, r2 version, epoch, step) is stored INSIDE the file
  (safetensors header, key "r2_meta"), so loading needs no other file. `best.json` /
  `last.json` are human-readable copies of that metadata.
- `resume.safetensors`: the full training state for `--resume` (see r2.train.resume).

Nothing is ever unpickled: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from r2 import __version__
from r2.cache import CacheSettings
from r2.cache.identity import by_name_warning, model_difference, tokenizer_difference
from r2.errors import UsageError
from r2.fields import dataclass_problems
from r2.files import atomic_write

from .config import R2Config, TrainPreset
from .metadata import describe_problems, meta_problems, nonfinite_tensors, tensor_problems
from .model import R2Model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1  # bump on any incompatible change of the metadata layout
META_KEY = "r2_meta"  # safetensors header key holding the JSON metadata
CONVERTED_KEY = "r2_config"  # header key of `r2 convert` output (model config only)
WEIGHTS_SUFFIX = ".safetensors"
# Cache settings that must equal the checkpoint's (k is checked separately: cache K >= model K;
# the CLIP model and tokenizer by identity, r2.cache.identity).
MUST_MATCH = ("fps", "frame_at", "image_size", "mean", "std",
              "tokens_per_frame", "video_dim", "text_dim")  # fmt: skip


class CheckpointError(UsageError):
    """A checkpoint cannot be read or used; the message names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the features at hand; `differences` lists every one."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


# ---------------------------------------------------------------- atomic file writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (r2.files: temporary file beside it, fsync, rename)."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    try:  # make the rename itself durable
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - e.g. platforms without directory fsync
        pass


def _json_dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve_path(path: str | os.PathLike) -> Path:
    """`runs/x` -> `runs/x/best.safetensors` (`last.safetensors` when the run has no best);
    `runs/x/best` or `best.json` -> `.safetensors`; `official:NAME` -> the released
    checkpoint NAME, fetched and converted once (r2.zoo)."""
    if str(path).startswith("official:"):
        from r2.zoo import fetch

        return fetch(str(path))
    p = Path(path)
    if p.is_dir():  # a run folder: its best epoch, or its last one if it never validated
        best, last = p / f"best{WEIGHTS_SUFFIX}", p / f"last{WEIGHTS_SUFFIX}"
        return last if last.is_file() and not best.exists() else best
    if p.suffix == ".json":
        return p.with_suffix(WEIGHTS_SUFFIX)
    if p.suffix == WEIGHTS_SUFFIX:
        return p
    return p.with_name(p.name + WEIGHTS_SUFFIX)


# ---------------------------------------------------------------- model checkpoints


def build_meta(
    cfg: R2Config,
    preset: TrainPreset,
    cache_settings: CacheSettings,
    cache_attrs: dict | None = None,
    **extra: Any,
) -> dict:
    """The metadata stored with every checkpoint (extra: epoch, step, metrics, ...)."""
    attrs = {
        k: v
        for k, v in (cache_attrs or {}).items()
        if k in ("format_version", "r2_version", "created")
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "r2_version": __version__,
        "config": dataclasses.asdict(cfg),
        "preset": dataclasses.asdict(preset),
        "cache_settings": dataclasses.asdict(cache_settings),
        "cache_attrs": attrs,
    }
    meta.update(extra)
    return json.loads(_json_dumps(meta))  # normalise: tuples -> lists, numpy -> python


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: dict) -> Path:
    """Save weights + metadata to `<path>.safetensors` (atomic) and a `<path>.json` copy.

    Args:
        path: target with or without the `.safetensors` suffix (e.g. `runs/x/best`).
        model: the model whose `state_dict` is saved.
        meta: JSON-serialisable metadata (see `build_meta`); saved in the weights file.

    Returns:
        The path of the weights file.
    """
    p = Path(path)
    p = p if p.suffix == WEIGHTS_SUFFIX else p.with_name(p.name + WEIGHTS_SUFFIX)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = _json_dumps({**meta, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_bytes(p, st_save(_state_tensors(model), metadata={META_KEY: text}))
    atomic_write_bytes(p.with_suffix(".json"), (text + "\n").encode())
    return p


def _read_header(p: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(string metadata, {tensor: (dtype, shape)}) of a safetensors file, tensors unread."""
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, not a checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                part = f.get_slice(name)
                tensors[name] = (part.get_dtype(), tuple(part.get_shape()))
    except Exception as exc:  # safetensors raises several types for corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{p}: not a readable safetensors checkpoint ({reason})") from None
    return header, tensors


def _decode(p: Path, text: str, key: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = f"{p}: invalid metadata: {key} is not JSON ({exc})"
        raise CheckpointError(msg) from None


def read_meta(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint (from the weights file's header), without loading it.

    The metadata is validated (see r2.train.metadata): a malformed one is refused with one
    error naming the file and every bad field.
    """
    p = resolve_path(path)
    header, _ = _read_header(p)
    if META_KEY not in header and CONVERTED_KEY in header:  # old `r2 convert` output
        meta = {
            "format": CHECKPOINT_FORMAT,
            "config": _decode(p, header[CONVERTED_KEY], CONVERTED_KEY),
            "cache_settings": None,
            "converted_from": header.get("source"),
        }
        problems = meta_problems(meta, converted=True)
    elif META_KEY not in header:
        raise CheckpointError(
            f"{p}: no r2 metadata in the file (not an r2 checkpoint; "
            "convert original weights with `r2 convert`)"
        )
    else:
        meta = _decode(p, header[META_KEY], META_KEY)
        fmt = meta.get("format") if isinstance(meta, dict) else None
        if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{p}: checkpoint format {fmt} is newer than this "
                f"r2 ({__version__}) understands ({CHECKPOINT_FORMAT}); upgrade r2"
            )
        problems = meta_problems(meta)
    if problems:
        raise CheckpointError(describe_problems(p, problems))
    return meta


def config_from_meta(meta: dict) -> R2Config:
    """The `R2Config` stored in checkpoint metadata (unknown fields are an error)."""
    problems = dataclass_problems(R2Config, meta.get("config"), "config")
    if problems:
        raise CheckpointError("checkpoint metadata: " + "; ".join(problems))
    try:
        return R2Config(**meta["config"])
    except ValueError as err:
        raise CheckpointError(f"checkpoint metadata: {err}") from None


def preset_from_meta(meta: dict) -> TrainPreset:
    """The (possibly overridden) `TrainPreset` stored in checkpoint metadata."""
    problems = dataclass_problems(TrainPreset, meta.get("preset"), "preset")
    if problems:
        raise CheckpointError("checkpoint metadata: " + "; ".join(problems))
    try:
        return TrainPreset(**meta["preset"])
    except ValueError as err:
        raise CheckpointError(f"checkpoint metadata: {err}") from None


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[R2Model, dict]:
    """Load a model checkpoint; the model config comes from the file itself.

    The metadata and every tensor's name, dtype and shape are checked against the stored
    config before the model is built (nothing is allocated for a lying config); weights
    holding NaN or infinity are refused.

    Args:
        path: a `.safetensors` checkpoint, its `.json` twin, its stem, or a run directory
            (then `best.safetensors` inside it, or `last.safetensors` for a run without
            validation).
        device: where to put the model.

    Returns:
        (model in eval mode, metadata dict).

    Raises:
        CheckpointError: missing, corrupt, not an r2 checkpoint, malformed metadata, or
            weights not matching the stored config.
    """
    p = resolve_path(path)
    meta = read_meta(p)
    cfg = config_from_meta(meta)
    problems = tensor_problems(_read_header(p)[1], cfg)
    if problems:
        raise CheckpointError(
            describe_problems(p, problems, "weights do not match the stored model config")
        )
    try:  # tensors own their memory (writable, aligned), unlike views into a bytes object
        state = load_file(str(p))
    except Exception as exc:
        raise CheckpointError(f"{p}: unreadable weights: {exc}") from exc
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{p}: weights hold NaN or infinity: {', '.join(bad[:5])}")
    model = R2Model(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: weights do not match the stored model config: {exc}") from exc
    return model.to(device).eval(), meta


def check_cache_compatible(meta: dict, cache_settings: CacheSettings) -> list[str]:
    """Refuse features the checkpoint's model was not trained on.

    The CLIP model (by content fingerprint; by name for checkpoints or caches made before
    fingerprints, with a warning saying so), the tokenizer, fps, frame choice,
    preprocessing and feature sizes must equal the checkpoint's; the cache must hold at
    least the model's K layers (the model uses the last K). A different encoder compute
    dtype is only warned about.

    Returns:
        Warnings (already logged) about differences that do not prevent use.

    Raises:
        CheckpointMismatchError: listing every incompatible setting (checkpoint vs cache).
    """
    model_k = int(meta["config"]["k"])
    if not meta.get("cache_settings"):  # converted original weights: only sizes are known
        return _check_sizes_only(meta["config"], cache_settings)
    trained = CacheSettings(**meta["cache_settings"])
    diffs = [
        f"{name}: {getattr(trained, name)!r} (checkpoint) vs "
        f"{getattr(cache_settings, name)!r} (cache)"
        for name in MUST_MATCH
        if getattr(trained, name) != getattr(cache_settings, name)
    ]
    if cache_settings.k < model_k:
        diffs.append(
            f"k: the model uses {model_k} CLIP layers, the cache holds only {cache_settings.k}"
        )
    for diff in (model_difference(trained, cache_settings),
                 tokenizer_difference(trained, cache_settings)):  # fmt: skip
        if diff:
            diffs.append(f"{diff} (checkpoint vs cache)")
    if diffs:
        raise CheckpointMismatchError(
            "the checkpoint was trained on features made with other settings:\n  - "
            + "\n  - ".join(diffs),
            diffs,
        )
    warnings = []
    if trained.dtype != cache_settings.dtype:
        warnings.append(
            f"encoder dtype {trained.dtype} (checkpoint) vs {cache_settings.dtype} "
            "(cache): features differ slightly"
        )
    by_name = by_name_warning(trained, cache_settings, ("checkpoint", "cache"))
    if by_name:
        warnings.append(by_name)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _check_sizes_only(config: dict, cache_settings: CacheSettings) -> list[str]:
    """Compatibility of a checkpoint without cache settings: feature widths and K."""
    s = cache_settings
    diffs = [f"{what}: {config[key]} (checkpoint) vs {getattr(s, attr)} (cache)"
             for what, key, attr in (("video width", "video_dim", "video_dim"),
                                     ("text width", "query_dim", "text_dim"))
             if int(config[key]) != getattr(s, attr)]  # fmt: skip
    if s.k < int(config["k"]):
        diffs.append(f"k: the model uses {config['k']} CLIP layers, the cache holds only {s.k}")
    if diffs:
        raise CheckpointMismatchError(
            "the checkpoint does not fit the cache's features:\n  - " + "\n  - ".join(diffs), diffs
        )
    warning = (
        "the checkpoint records no cache settings (converted weights): only feature "
        "widths and K were checked; CLIP model, fps and preprocessing are unverified"
    )
    log.warning("%s", warning)
    return [warning]
