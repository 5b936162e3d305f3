"""Checkpoint metadata checked before anything is built from it.

The metadata inside a `.safetensors` checkpoint is JSON anyone can edit. Before a model is
built, :func:`validate_meta` checks its shape (an object with `config`, `preset` and
`cache_settings`), the fields of each section against the dataclasses they become
(`R2Config`, `TrainPreset`, `r2.cache.CacheSettings`: allowed keys, required keys and
value types are read from the dataclasses, so new fields need no change here), the ranges
(the dataclasses' own validation) and, in :func:`check_tensor_shapes`, every tensor's
name, dtype and shape against the model the config describes (built on the `meta` device:
no memory is allocated, so `dims: 131072` costs nothing). Every problem is reported in one
`CheckpointError` naming the file and the fields.

Keys at the top level other than the known ones are ignored (newer r2 versions may add
information there); unknown keys inside a section are refused, since they would change
what the weights mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r2.fields import dataclass_problems, value_problem

# known top-level keys besides the three sections, with their JSON types
TOP_LEVEL: dict[str, Any] = {
    "format": int, "r2_version": str, "epoch": int, "step": int, "key_metric": str,
    "best": float | None, "best_epoch": int | None, "saved_at": str,
    "converted_from": str | None,
}  # fmt: skip
SECTIONS = ("config", "preset", "cache_settings")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_SHOWN = 5  # problems listed in one error message


def meta_problems(meta: Any, converted: bool = False) -> list[str]:
    """Every problem of checkpoint metadata, each naming its field ("config.dims: ...").

    Args:
        meta: the decoded JSON.
        converted: metadata of an old `r2 convert` output (a config only).
    """
    from r2.cache import CacheSettings

    from .config import R2Config, TrainPreset

    if not isinstance(meta, dict):
        return [f"metadata: expected a JSON object, got {type(meta).__name__}"]
    problems = [f"{key}: {p}" for key, tp in TOP_LEVEL.items()
                if key in meta and (p := value_problem(meta[key], tp))]  # fmt: skip
    for key in ("epoch", "step"):
        if isinstance(meta.get(key), int) and meta[key] < 0:
            problems.append(f"{key}: must be >= 0, got {meta[key]}")
    required = ("config",) if converted else SECTIONS
    problems += [f"{key}: missing" for key in required if key not in meta]
    if "metrics" in meta and not _is_metrics(meta["metrics"]):
        problems.append("metrics: expected an object of numbers")
    for key, cls in (("config", R2Config), ("preset", TrainPreset),
                     ("cache_settings", CacheSettings)):  # fmt: skip
        if key not in meta or (key != "config" and meta[key] is None):
            continue  # a missing section was reported above; None: converted weights
        found = dataclass_problems(cls, meta[key], key)
        problems += found or _range_problems(cls, meta[key], key)
    return problems


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        for v in value.values()
    )


def _range_problems(cls: type, values: dict, where: str) -> list[str]:
    """Build the dataclass to run its own range checks; their message as problems."""
    try:
        cls(**values)
    except (ValueError, TypeError) as err:
        lines = [x.strip(" -") for x in str(err).splitlines() if x.strip(" -")]
        body = lines[1:] if len(lines) > 1 else [str(err)]
        return [f"{where}: {x}" for x in body]
    return []


def describe_problems(path: Path, problems: list[str], lead: str = "invalid metadata") -> str:
    """One line naming the file and (up to MAX_SHOWN of) the problems."""
    shown = "; ".join(problems[:MAX_SHOWN])
    more = f"; ... ({len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
    return f"{path}: {lead}: {shown}{more}"


def expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the model `cfg` describes, without allocating it."""
    import torch

    from .model import R2Model

    with torch.device("meta"):
        model = R2Model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tensor_problems(header: dict[str, tuple[str, tuple[int, ...]]], cfg) -> list[str]:
    """Differences between a file's tensors {name: (dtype, shape)} and the config's model."""
    want = expected_shapes(cfg)
    problems = [f"tensor {k}: missing" for k in want if k not in header]
    problems += [f"tensor {k}: not part of the configured model" for k in header if k not in want]
    for name, (dtype, shape) in header.items():
        if name not in want:
            continue
        if dtype not in FLOAT_DTYPES:
            problems.append(f"tensor {name}: dtype {dtype}, expected a float type")
        if tuple(shape) != want[name]:
            problems.append(f"tensor {name}: shape {tuple(shape)} but the config says {want[name]}")
    return problems


def nonfinite_tensors(tensors: dict) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity."""
    import torch

    return [k for k, v in tensors.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]  # fmt: skip
