"""The full training state for `--resume`: `resume.safetensors` in the run folder.

Weights, AdamW state tensors and the torch RNG states are tensors (safetensors); the
optimizer hyperparameters, python/numpy RNG states, loop position and run settings are
JSON in the file's header. Written atomically (r2.train.checkpoint.atomic_write_bytes);
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from r2 import __version__

from .checkpoint import (
    CHECKPOINT_FORMAT,
    META_KEY,
    CheckpointError,
    _json_dumps,
    _state_tensors,
    atomic_write_bytes,
)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """All RNG states: (tensors for safetensors, JSON-able part)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    return tensors, {
        "numpy": [name, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state(
        (name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict,
    scaler: torch.amp.GradScaler | None = None,
    rank_rng: list[tuple[dict, dict]] | None = None,
) -> Path:
    """Atomically save everything needed to continue training exactly (see module doc).

    Args:
        path: the file to write (e.g. `runs/x/resume.safetensors`).
        info: JSON-able loop state (epoch, step, position, best metric, settings, ...).
        rank_rng: a distributed run's `capture_rng()` of every process, in rank order
            (rank 0's is this process's own); stored as `rank<r>.rng.*` for r > 0.
    """
    tensors = {f"model.{k}": v for k, v in _state_tensors(model).items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    rng_tensors, rng_info = capture_rng()
    tensors.update(rng_tensors)
    ranks_info = []
    for r, (r_tensors, r_info) in enumerate(rank_rng or []):
        if r > 0:
            tensors.update({f"rank{r}.{k}": v.contiguous() for k, v in r_tensors.items()})
            ranks_info.append(r_info)
    header = {
        "format": CHECKPOINT_FORMAT,
        "r2_version": __version__,
        "info": info,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "rng": rng_info,
        "rng_ranks": ranks_info,  # python/numpy states of ranks 1, 2, ... (distributed runs)
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    p = Path(path)
    atomic_write_bytes(p, st_save(tensors, metadata={META_KEY: _json_dumps(header)}))
    return p


def read_training_info(path: str | os.PathLike) -> dict:
    """The `info` of a resume state (loop position, run settings) without its tensors."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            info = json.loads((f.metadata() or {})[META_KEY])["info"]
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{p}: unreadable training state ({reason})") from None
    if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
        raise CheckpointError(f"{p}: damaged training state (no run settings)")
    return info


def load_training_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    rank: int = 0,
) -> dict:
    """Restore model, optimizer, grad scaler and RNG states saved by `save_training_state`
    (`rank`: the process of a distributed run whose random-number states to restore).

    Returns:
        The `info` dict given at save time.
    """
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            header = json.loads((f.metadata() or {})[META_KEY])
        tensors = load_file(str(p))
    except Exception as exc:
        raise CheckpointError(f"{p}: unreadable training state: {exc}") from exc
    try:
        return _restore(header, tensors, model, optimizer, scaler, rank)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{p}: damaged training state ({type(exc).__name__}: {reason}); "
            "start a new run or restore the file"
        ) from exc


def _restore(header: dict, tensors: dict, model, optimizer, scaler, rank: int = 0) -> dict:
    """Apply a decoded resume state; any inconsistency raises (wrapped by the caller)."""
    info = header["info"]
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in header["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = header["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scaler is not None and header.get("scaler"):
        scaler.load_state_dict(header["scaler"])
    if rank == 0:
        restore_rng(tensors, header["rng"])
    else:
        prefix = f"rank{rank}."
        mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        restore_rng(mine, header["rng_ranks"][rank - 1])
    return info
