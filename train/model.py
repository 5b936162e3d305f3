"""The R² model: R² block → temporal pyramid → heads; its losses and raw predictions.

Usage: `out = model(batch)` (an `R2Output`), `model.losses(out, batch)` (the weighted
losses; their sum is the training objective), `model.predict(out, batch)` (per sample,
the top windows and per-clip saliency before post-processing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import Batch
from .block import R2Block
from .config import R2Config
from .heads import ConvHead, ConvPyramid, QueryPool, point_table
from .losses import focal_loss, info_nce, saliency_row_col
from .targets import point_targets


@dataclass
class R2Output:
    """Everything the forward pass produces (tensors keep their autograd graph)."""

    video_emb: Tensor  # (B, T, C) ReLU(h): saliency cosine / loss input
    query_tokens: Tensor  # (B, L, C) last step's mapped query tokens
    query_emb: Tensor  # (B, C) attention-pooled query
    levels: list[Tensor]  # per pyramid level (B, T_j, C)
    level_masks: list[Tensor]  # per level (B, T_j) bool valid points
    points: Tensor  # (N, 4) t, range low, range high, stride
    out_class: Tensor  # (B, N) class logits
    out_coord: Tensor | None  # (B, N, 2) distances (left, right) in strides, or None
    step_cls: list[Tensor]  # per step (B, T, C) mapped [CLS] tokens
    step_query_emb: list[Tensor]  # per step (B, C) pooled mapped query
    video_mask: Tensor  # (B, T) bool
    query_mask: Tensor  # (B, L) bool

    @property
    def point_mask(self) -> Tensor:
        """(B, N) bool valid points, levels concatenated."""
        return torch.cat(self.level_masks, dim=1)

    @property
    def saliency_cos(self) -> Tensor:
        """(B, T) cosine(ReLU(h)_t, pooled query)."""
        return F.cosine_similarity(self.video_emb, self.query_emb.unsqueeze(1), dim=-1)


@dataclass
class RawPrediction:
    """One sample's model output before post-processing."""

    qid: str
    vid: str
    duration: float
    boundary: np.ndarray | None  # (≤ max_num_moment, 3) [start_s, end_s, score], by score
    saliency: np.ndarray  # (T,) float32 per-clip saliency


class R2Model(nn.Module):
    """The learnable part of R²-Tuning (CLIP features in, windows and saliency out)."""

    def __init__(self, cfg: R2Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or R2Config()
        self.block = R2Block(cfg)
        self.pyramid = ConvPyramid(cfg.dims, cfg.strides)
        self.query_pool = QueryPool(cfg.dims)
        self.class_head = ConvHead(cfg.dims, 1)
        self.coord_head = ConvHead(cfg.dims, 2) if cfg.coord_head else None
        self.coord_scale = nn.Parameter(torch.ones(len(cfg.strides)))  # per-level scale

    def forward(self, batch: Batch) -> R2Output:
        cfg = self.cfg
        vmask, qmask = batch.video_mask, batch.query_mask
        blk = self.block(batch.video, batch.query, vmask, qmask)
        levels, masks = self.pyramid(blk.hidden, vmask, cfg.inplace_relu, cfg.padding_invariant)
        video_emb = levels[0]  # ReLU(h), stride 1
        head_masks = masks if cfg.padding_invariant else [None] * len(levels)
        out_class = torch.cat(
            [self.class_head(x, m) for x, m in zip(levels, head_masks, strict=True)], dim=1
        )
        out_coord = None
        if self.coord_head is not None:
            out_coord = torch.cat(
                [
                    self.coord_head(x, m).exp() * self.coord_scale[j]
                    for j, (x, m) in enumerate(zip(levels, head_masks, strict=True))
                ],
                dim=1,
            )
        sizes = [x.size(1) for x in levels]
        return R2Output(
            video_emb=video_emb,
            query_tokens=blk.query,
            query_emb=self.query_pool(blk.query, qmask),
            levels=levels,
            level_masks=masks,
            points=point_table(sizes, cfg.strides, device=video_emb.device),
            out_class=out_class.squeeze(-1),
            out_coord=out_coord,
            step_cls=blk.step_cls,
            step_query_emb=[self.query_pool(q, qmask) for q in blk.step_query],
            video_mask=vmask,
            query_mask=qmask,
        )

    def targets(self, out: R2Output, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Class targets (B, N) and regression targets (B, N, 2) (None without coord head).

        Without a coordinate head the class targets are the saliency labels (one level).
        In padding-invariant mode positives are limited to the valid points.
        """
        if self.coord_head is None:
            return batch.saliency, None
        if batch.boundary is None:
            raise ValueError("the batch has no ground-truth windows (boundary) to train on")
        cls_tgt, reg_tgt = point_targets(
            out.points, batch.boundary, batch.fps, self.cfg.sample_radius
        )
        if self.cfg.padding_invariant:
            cls_tgt = cls_tgt * out.point_mask
        return cls_tgt, reg_tgt

    def loss_terms(self, out: R2Output, batch: Batch) -> dict[str, Tensor]:
        """Unweighted per-sample sums and counts (each (B,)): cls_sum, cls_count, reg_sum,
        reg_count, sal_row, sal_col. The batch losses are sums of these over counts."""
        cfg = self.cfg
        cls_tgt, reg_tgt = self.targets(out, batch)
        valid = out.point_mask
        if cfg.cls_loss == "focal":
            cls = focal_loss(out.out_class, cls_tgt, cfg.focal_gamma, cfg.focal_alpha)
        else:
            cls = F.binary_cross_entropy_with_logits(out.out_class, cls_tgt, reduction="none")
        terms = {"cls_sum": torch.where(valid, cls, 0.0).sum(1), "cls_count": valid.sum(1)}
        if reg_tgt is not None:
            pos = (cls_tgt > 0)[..., None].expand_as(reg_tgt)
            l1 = torch.where(pos, (out.out_coord - reg_tgt).abs(), 0.0)
            terms.update(reg_sum=l1.sum((1, 2)), reg_count=pos.sum((1, 2)))
        if batch.saliency is not None and batch.pos_clip is not None:
            row, col = saliency_row_col(
                out.saliency_cos, out.video_mask, batch.saliency, batch.pos_clip, cfg.temperature
            )
            terms.update(sal_row=row, sal_col=col)
        return terms

    def losses(self, out: R2Output, batch: Batch) -> dict[str, Tensor]:
        """The weighted losses, in the original's order: loss_reg (with a coordinate head),
        loss_cls, loss_sal, loss_video_cal, loss_layer_cal (the last three when weighted
        > 0 and the batch has saliency labels). Their sum is the training objective."""
        cfg, t = self.cfg, self.loss_terms(out, batch)
        losses: dict[str, Tensor] = {}
        if "reg_sum" in t:
            losses["loss_reg"] = (
                t["reg_sum"].sum() / t["reg_count"].sum().clamp(min=1) * cfg.loss_reg_weight
            )
        losses["loss_cls"] = (
            t["cls_sum"].sum() / t["cls_count"].sum().clamp(min=1) * cfg.loss_cls_weight
        )
        if "sal_row" not in t:
            return losses
        b = out.video_emb.size(0)
        if cfg.loss_sal_weight > 0:
            sal = 0
            if "row" in cfg.saliency_terms:
                sal = sal + t["sal_row"].sum() / b
            if "col" in cfg.saliency_terms:
                sal = sal + t["sal_col"].sum() / b
            losses["loss_sal"] = sal * cfg.loss_sal_weight
        losses.update(self._calibration(out, batch))
        return losses

    def _calibration(self, out: R2Output, batch: Batch) -> dict[str, Tensor]:
        """Video-level (across the batch) and layer-wise (across steps) InfoNCE between the
        mapped [CLS] token of the positive clip and the pooled query of every step."""
        cfg, losses = self.cfg, {}
        b = torch.arange(batch.pos_clip.size(0), device=batch.pos_clip.device)
        v = [cls[b, batch.pos_clip] for cls in out.step_cls]  # K × (B, C)
        q = out.step_query_emb
        if cfg.loss_video_cal_weight > 0:
            losses["loss_video_cal"] = (
                info_nce(torch.stack(v), torch.stack(q), cfg.temperature)
                * cfg.loss_video_cal_weight
            )
        if cfg.loss_layer_cal_weight > 0:
            losses["loss_layer_cal"] = (
                info_nce(torch.stack(v, 1), torch.stack(q, 1), cfg.temperature)
                * cfg.loss_layer_cal_weight
            )
        return losses

    @torch.no_grad()
    def predict(self, out: R2Output, batch: Batch) -> list[RawPrediction]:
        """Per sample: the top `max_num_moment` windows [start_s, end_s, score] by score
        and the per-clip saliency (class scores brought back to T clips, max over levels,
        × the cosine saliency when `merge_cls_sal`). Not yet post-processed."""
        from .decode import decode_sample

        return [decode_sample(self.cfg, out, batch, i) for i in range(out.video_emb.size(0))]
