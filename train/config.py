"""Hyperparameters of the R² model (`R2Config`) and the per-dataset training presets.

Defaults are the released QVHighlights configuration of the original implementation
(spec §2–§5); the options reproduce the paper's analyses (Fig. 7, Tables 5, 10, 11, 12).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config_checks import (
    ATTENTIONS,
    CLS_LOSSES,
    DIRECTIONS,
    FUSIONS,
    NMS_TYPES,
    SALIENCY_TERMS,
    ConfigError,
    PresetError,
    as_tuple,
    preset_problems,
    r2config_problems,
    type_problems,
)

__all__ = [
    "ATTENTIONS", "CLS_LOSSES", "DIRECTIONS", "FUSIONS", "NMS_TYPES", "PRESETS",
    "SALIENCY_TERMS", "ConfigError", "PresetError", "R2Config", "TrainPreset", "get_preset",
]  # fmt: skip


@dataclass
class R2Config:
    """Every hyperparameter of the model and its losses (defaults: released QVHighlights)."""

    # ---- feature sizes ----
    video_dim: int = 768
    """Width Dv of the CLIP vision tokens (768 for ViT-B/32)."""
    query_dim: int = 512
    """Width Dq of the CLIP text tokens (512 for ViT-B/32)."""
    dims: int = 256
    """Hidden size C of the R² block, pyramid and heads."""

    # ---- R² block ----
    k: int = 4
    """Number K of CLIP layers used (the last K of the features); recurrent steps = K."""
    fusion: str = "recurrent"
    """How the K layers are used: "recurrent" (the R² block, one step per layer),
    "single" (one step on the K-th layer from the end only, Fig. 7a) or "mean"
    (one step on the mean of the last K layers' features, Fig. 7a)."""
    direction: str = "reversed"
    """Refinement order of the recurrent steps: "reversed" (deepest layer first,
    the released model) or "forward" (shallowest first, Fig. 7b)."""
    shared_block: bool = True
    """True: one set of block weights shared by every step (the recurrence, released);
    False: separate maps, pooling projections and decoder per step (Table 11)."""
    use_tef: bool = True
    """Append the temporal endpoint features [i/T, (i+1)/T] to every video token."""
    dropout: float = 0.5
    """Dropout probability inside `video_map` and `query_map`."""
    heads: int = 8
    """Attention heads of the temporal decoder layer."""
    ffn_ratio: int = 4
    """Hidden width of the decoder FFN as a multiple of `dims` (256 -> 1024)."""
    droppath: float = 0.1
    """DropPath probability on each decoder sub-layer's residual branch."""
    attention_order: tuple[str, ...] = ("cross", "self")
    """Order of the decoder's attentions: ("cross", "self") released, ("self", "cross")
    the standard decoder (Table 10)."""
    temporal_layers: int = 1
    """Number of stacked decoder layers per refinement step (Table 12)."""
    inplace_relu: bool = True
    """Reproduce the original's in-place ReLU: every pyramid level, the saliency cosine
    and the saliency loss see ReLU(h). False: only the stride-1 level is ReLU(h)."""
    padding_invariant: bool = False
    """False (original): a sample's numbers depend on how much the batch pads it
    (position encoding and endpoint features from the padded length, unmasked max over
    query tokens, stride convs mixing padded clips). True: none of that."""

    # ---- pyramid and heads ----
    strides: tuple[int, ...] = (1, 2, 4, 8)
    """Temporal pyramid strides in clips (powers of two, starting at 1)."""
    coord_head: bool = True
    """Build the boundary regression head (False for YouTube Highlights / TVSum)."""
    merge_cls_sal: bool = True
    """Test-time saliency = upsampled class score × cosine saliency (False: class score)."""
    max_num_moment: int = 50
    """Number of top-scoring windows kept per sample at inference."""

    # ---- targets and losses ----
    sample_radius: float = 1.5
    """A point is a positive candidate within radius × stride of a window's centre."""
    cls_loss: str = "focal"
    """Class loss: "focal" (grounding) or "bce" (highlight datasets, on saliency labels)."""
    focal_gamma: float = 2.0
    """Focal loss exponent γ."""
    focal_alpha: float | None = None
    """Focal loss α weighting; None = no weighting (released; the paper prints 0.9)."""
    loss_cls_weight: float = 1.0
    """Weight of the class loss."""
    loss_reg_weight: float = 0.2
    """Weight of the L1 boundary loss (the paper says 0.1; released 0.2)."""
    loss_sal_weight: float = 0.1
    """Weight of the sampled saliency contrastive loss."""
    saliency_terms: tuple[str, ...] = ("row", "col")
    """Terms of the saliency loss: "row" (over frames) and/or "col" (over the batch)."""
    loss_video_cal_weight: float = 0.1
    """Weight of the video-level calibration InfoNCE (0 disables it, Table 5)."""
    loss_layer_cal_weight: float = 0.1
    """Weight of the layer-wise calibration InfoNCE (0 disables it, Table 5)."""
    temperature: float = 0.07
    """Temperature of the saliency and calibration contrastive losses."""

    def __post_init__(self) -> None:
        self.attention_order = as_tuple(self.attention_order)
        self.strides = as_tuple(self.strides)
        self.saliency_terms = as_tuple(self.saliency_terms)
        problems = type_problems(self) or r2config_problems(self)  # ranges: well-typed only
        if problems:
            raise ConfigError("invalid R2Config:\n  - " + "\n  - ".join(problems))

    @property
    def num_steps(self) -> int:
        """Refinement steps actually run (K for "recurrent", 1 otherwise)."""
        return self.k if self.fusion == "recurrent" else 1

    def replace(self, **changes) -> R2Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainPreset:
    """Training schedule and data settings of one dataset (spec §5, paper Table 8)."""

    name: str
    """Dataset name (lower case)."""
    fps: float | None
    """Clips per second of the features; None = chosen per video (YouTube Highlights)."""
    batch_size: int
    """Training batch size."""
    lr: float
    """Peak AdamW learning rate."""
    epochs: int
    """Training epochs."""
    lr_drop_epoch: int | None
    """Epoch at which the learning rate is multiplied by `lr_drop_factor`; None = never."""
    warmup_iters: int
    """Linear warm-up iterations, from `warmup_ratio` × lr."""
    dropout: float
    """Dropout of the R² block maps."""
    loss_sal_weight: float
    """Weight of the saliency loss."""
    saliency_terms: tuple[str, ...] = ("row", "col")
    """Saliency loss terms ("row" only for YouTube Highlights / TVSum)."""
    nms: str | None = "normal"
    """Window NMS at evaluation: "normal", "linear" or None (no windows)."""
    nms_threshold: float = 0.7
    """IoU threshold of "normal" NMS."""
    unit: float | None = None
    """Seconds to round predicted windows to; None = no rounding."""
    min_video_len: float | None = 5.0
    """Training videos shorter than this (seconds) are dropped; None = keep all."""
    dataset_repeat: int = 1
    """How many times the training set is iterated per epoch."""
    strides: tuple[int, ...] = (1, 2, 4, 8)
    """Pyramid strides."""
    use_tef: bool = True
    """Temporal endpoint features on the video tokens."""
    grounding: bool = True
    """True: moment retrieval (coordinate head, focal loss); False: highlight detection
    (no coordinate head, class head trained with BCE on saliency, saliency = class score)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_ratio: float = 0.001
    """Warm-up starts at this fraction of the learning rate."""
    lr_drop_factor: float = 0.1
    """Learning-rate multiplier at `lr_drop_epoch`."""
    grad_clip: float = 35.0
    """Gradient clipping max L2 norm."""
    domains: tuple[str, ...] = field(default_factory=tuple)
    """Per-domain training (YouTube Highlights, TVSum): the domain names."""

    def __post_init__(self) -> None:
        for name in ("saliency_terms", "strides", "domains"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        problems = type_problems(self) or preset_problems(self)
        if problems:
            raise ConfigError("invalid TrainPreset:\n  - " + "\n  - ".join(problems))

    def model_config(self, **overrides) -> R2Config:
        """The `R2Config` of this dataset, with optional field overrides."""
        values = dict(
            dropout=self.dropout,
            loss_sal_weight=self.loss_sal_weight,
            saliency_terms=self.saliency_terms,
            strides=self.strides,
            use_tef=self.use_tef,
        )
        if not self.grounding:
            values.update(
                coord_head=False, merge_cls_sal=False, cls_loss="bce", loss_reg_weight=0.0
            )
        values.update(overrides)
        return R2Config(**values)


QVHIGHLIGHTS = TrainPreset(
    name="qvhighlights",
    fps=0.5,
    batch_size=128,
    lr=5e-4,
    epochs=30,
    lr_drop_epoch=20,
    warmup_iters=500,
    dropout=0.5,
    loss_sal_weight=0.1,
    nms="normal",
    unit=2.0,
    min_video_len=5.0,
    dataset_repeat=4,
)
EGO4D_NLQ = TrainPreset(
    name="ego4d",
    fps=0.5,
    batch_size=32,
    lr=2.5e-4,
    epochs=30,
    lr_drop_epoch=20,
    warmup_iters=500,
    dropout=0.3,
    loss_sal_weight=0.1,
    nms="linear",
    unit=None,
    min_video_len=5.0,
)
CHARADES_STA = TrainPreset(
    name="charades",
    fps=1.0,
    batch_size=32,
    lr=2.5e-4,
    epochs=50,
    lr_drop_epoch=30,
    warmup_iters=500,
    dropout=0.35,
    loss_sal_weight=0.01,
    nms="linear",
    unit=0.1,
    min_video_len=5.0,
)
TACOS = TrainPreset(
    name="tacos",
    fps=0.5,
    batch_size=32,
    lr=2.5e-4,
    epochs=100,
    lr_drop_epoch=50,
    warmup_iters=500,
    dropout=0.5,
    loss_sal_weight=0.05,
    nms="linear",
    unit=None,
    min_video_len=5.0,
)
YOUTUBE_HIGHLIGHTS = TrainPreset(
    name="youtube",
    fps=None,
    batch_size=4,
    lr=5e-4,
    epochs=200,
    lr_drop_epoch=None,
    warmup_iters=50,
    dropout=0.5,
    loss_sal_weight=0.1,
    saliency_terms=("row",),
    nms=None,
    unit=None,
    min_video_len=None,
    strides=(1,),
    use_tef=False,
    grounding=False,
    domains=("dog", "gym", "par", "ska", "ski", "sur"),
)
TVSUM = TrainPreset(
    name="tvsum",
    fps=0.5,
    batch_size=4,
    lr=5e-4,
    epochs=500,
    lr_drop_epoch=None,
    warmup_iters=50,
    dropout=0.5,
    loss_sal_weight=0.1,
    saliency_terms=("row",),
    nms=None,
    unit=None,
    min_video_len=None,
    strides=(1,),
    use_tef=False,
    grounding=False,
    domains=("BK", "BT", "DS", "FM", "GA", "MS", "PK", "PR", "VT", "VU"),
)

PRESETS: dict[str, TrainPreset] = {
    p.name: p for p in (QVHIGHLIGHTS, EGO4D_NLQ, CHARADES_STA, TACOS, YOUTUBE_HIGHLIGHTS, TVSUM)
}
_ALIASES = {
    "qvh": "qvhighlights",
    "ego4d_nlq": "ego4d",
    "ego4d-nlq": "ego4d",
    "charades_sta": "charades",
    "charades-sta": "charades",
    "youtube_highlights": "youtube",
    "youtube-highlights": "youtube",
}


def get_preset(name: str) -> TrainPreset:
    """The preset of a dataset by name (case-insensitive; e.g. "qvhighlights", "charades").

    Raises:
        PresetError: unknown name (a KeyError); the message lists the known ones.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise PresetError(f"unknown dataset preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]
