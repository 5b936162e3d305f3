"""Validation of the model config and the training presets: every problem at once, by field.

Types come from the dataclasses' annotations (r2.fields); the ranges and choices are here.
"""

from __future__ import annotations

import math

from r2.errors import UsageError
from r2.fields import field_types, value_problem

FUSIONS = ("recurrent", "single", "mean")
DIRECTIONS = ("reversed", "forward")
ATTENTIONS = ("cross", "self")
CLS_LOSSES = ("focal", "bce")
SALIENCY_TERMS = ("row", "col")
NMS_TYPES = ("normal", "linear")


class ConfigError(UsageError, ValueError):
    """Invalid model or preset settings; the message lists every problem, each by field."""


class PresetError(UsageError, KeyError):
    """An unknown dataset preset name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def type_problems(obj: object) -> list[str]:
    """Fields of a dataclass instance whose value does not fit the annotated type."""
    return [
        f"{name}: {problem}"
        for name, tp in field_types(type(obj)).items()
        if (problem := value_problem(getattr(obj, name), tp))
    ]


def as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def r2config_problems(c) -> list[str]:
    """Every problem of a config, as readable lines (empty when valid)."""
    p: list[str] = []
    for name in ("video_dim", "query_dim", "dims", "k", "heads", "ffn_ratio", "temporal_layers"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            p.append(f"{name} must be a positive integer, got {value!r}")
    if isinstance(c.dims, int) and isinstance(c.heads, int) and c.heads > 0 and c.dims % c.heads:
        p.append(f"dims ({c.dims}) must be divisible by heads ({c.heads})")
    if isinstance(c.dims, int) and c.dims % 2:
        p.append(f"dims must be even for the sinusoidal position encoding, got {c.dims}")
    for name, allowed in (("fusion", FUSIONS), ("direction", DIRECTIONS), ("cls_loss", CLS_LOSSES)):
        if getattr(c, name) not in allowed:
            p.append(f"{name} must be one of {allowed}, got {getattr(c, name)!r}")
    if sorted(c.attention_order) != sorted(ATTENTIONS):
        p.append(f"attention_order must be an ordering of {ATTENTIONS}, got {c.attention_order}")
    for name in ("dropout", "droppath"):
        if not 0.0 <= getattr(c, name) < 1.0:
            p.append(f"{name} must be in [0, 1), got {getattr(c, name)}")
    if not c.strides or c.strides[0] != 1:
        p.append(f"strides must start with 1, got {c.strides}")
    if any(s < 1 or s & (s - 1) for s in c.strides):
        p.append(f"strides must be powers of two, got {c.strides}")
    if list(c.strides) != sorted(set(c.strides)):
        p.append(f"strides must be strictly increasing, got {c.strides}")
    if c.max_num_moment < 1:
        p.append(f"max_num_moment must be >= 1, got {c.max_num_moment}")
    if c.sample_radius < 0:
        p.append(f"sample_radius must be >= 0, got {c.sample_radius}")
    if c.focal_gamma < 0:
        p.append(f"focal_gamma must be >= 0, got {c.focal_gamma}")
    if c.focal_alpha is not None and not 0.0 <= c.focal_alpha <= 1.0:
        p.append(f"focal_alpha must be None or in [0, 1], got {c.focal_alpha}")
    for name in ("loss_cls_weight", "loss_reg_weight", "loss_sal_weight"):
        if getattr(c, name) < 0:
            p.append(f"{name} must be >= 0, got {getattr(c, name)}")
    for name in ("loss_video_cal_weight", "loss_layer_cal_weight"):
        if getattr(c, name) < 0:
            p.append(f"{name} must be >= 0, got {getattr(c, name)}")
    if not c.saliency_terms or any(t not in SALIENCY_TERMS for t in c.saliency_terms):
        p.append(
            f"saliency_terms must be a non-empty subset of {SALIENCY_TERMS}, got {c.saliency_terms}"
        )
    if c.temperature <= 0:
        p.append(f"temperature must be > 0, got {c.temperature}")
    if not c.coord_head and c.loss_reg_weight > 0:
        p.append(
            "coord_head=False has no boundary regression: set loss_reg_weight=0 "
            "(the class head is then trained on the saliency labels)"
        )
    return p


def preset_problems(p) -> list[str]:
    """Range problems of a well-typed preset."""
    checks = [
        ("batch_size", p.batch_size >= 1, ">= 1"), ("epochs", p.epochs >= 1, ">= 1"),
        ("lr", p.lr >= 0, ">= 0"), ("warmup_iters", p.warmup_iters >= 0, ">= 0"),
        ("lr_drop_epoch", p.lr_drop_epoch is None or p.lr_drop_epoch >= 0, "None or >= 0"),
        ("dropout", 0 <= p.dropout < 1, "in [0, 1)"),
        ("loss_sal_weight", p.loss_sal_weight >= 0, ">= 0"),
        ("nms", p.nms is None or p.nms in NMS_TYPES, f"None or one of {NMS_TYPES}"),
        ("nms_threshold", 0 <= p.nms_threshold <= 1, "in [0, 1]"),
        ("unit", p.unit is None or p.unit > 0, "None or > 0"),
        ("min_video_len", p.min_video_len is None or p.min_video_len >= 0, "None or >= 0"),
        ("dataset_repeat", p.dataset_repeat >= 1, ">= 1"),
        ("fps", p.fps is None or (math.isfinite(p.fps) and p.fps > 0), "None or > 0"),
        ("weight_decay", p.weight_decay >= 0, ">= 0"),
        ("warmup_ratio", 0 <= p.warmup_ratio <= 1, "in [0, 1]"),
        ("lr_drop_factor", p.lr_drop_factor > 0, "> 0"), ("grad_clip", p.grad_clip > 0, "> 0"),
    ]  # fmt: skip
    return [f"{name} must be {rule}, got {getattr(p, name)!r}" for name, ok, rule in checks
            if not ok]  # fmt: skip
