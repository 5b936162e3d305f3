"""The losses of a distributed step: this process's part of the single-process batch loss.

`R2Model.losses` reduces over the batch (spec §3): sums over counts for the class and
regression losses, means over the batch for the saliency and calibration terms, and two
terms compare samples with each other (the saliency column term: softmax over the batch's
samples at each positive clip; the video-level InfoNCE: each sample against the batch).
Here each process holds `share.count` samples of a batch of `share.total`; it computes

    sum over its samples of each term / the WHOLE batch's normaliser,

with the normalisers summed over processes and the compared samples gathered from all of
them (`distributed.gather_rows`, differentiable). The parts of all processes add up to the
single-process loss, and DDP sums the gradients (`distributed.wrap`), so the step is the
single-process step up to float summation order. A placeholder sample (empty share)
contributes zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import Dist, Share, gather_rows, sum_
from .losses import logit_scale, saliency_logits


def distributed_losses(model, out, batch, share: Share, d: Dist) -> dict[str, Tensor]:
    """The weighted losses of `R2Model.losses`, as this process's part (see module doc).

    Args:
        model: the `R2Model` (not its DDP wrapper).
        out: the forward output of this process's samples (padded to the batch's lengths).
        batch: this process's samples.
        share: where they lie in the global batch.
        d: the process group.
    """
    cfg, t = model.cfg, model.loss_terms(out, batch)
    n = share.count
    real = torch.zeros(batch.size, device=out.video_emb.device)
    real[:n] = 1.0  # the placeholder of an empty share counts for nothing
    losses: dict[str, Tensor] = {}
    if "reg_sum" in t:
        count = sum_((t["reg_count"] * real.long()).sum(), d)
        losses["loss_reg"] = (t["reg_sum"] * real).sum() / count.clamp(min=1) * cfg.loss_reg_weight
    count = sum_((t["cls_count"] * real.long()).sum(), d)
    losses["loss_cls"] = (t["cls_sum"] * real).sum() / count.clamp(min=1) * cfg.loss_cls_weight
    if "sal_row" not in t:
        return losses
    if cfg.loss_sal_weight > 0:
        sal = 0
        if "row" in cfg.saliency_terms:
            sal = sal + (t["sal_row"] * real).sum() / share.total
        if "col" in cfg.saliency_terms:
            sal = sal + _saliency_col(cfg, out, batch, share, d).sum() / share.total
        losses["loss_sal"] = sal * cfg.loss_sal_weight
    losses.update(_calibration(cfg, out, batch, share, d))
    return losses


def _saliency_col(cfg, out, batch, share: Share, d: Dist) -> Tensor:
    """Column terms of this process's samples: softmax over the whole batch's samples at
    each sample's positive clip (`losses.saliency_row_col`)."""
    sim = saliency_logits(out.saliency_cos, out.video_mask, batch.saliency, batch.pos_clip,
                          cfg.temperature)  # fmt: skip
    every = gather_rows(sim, share, d)  # (B, T): T is the batch's padded length everywhere
    n = share.count
    cols = every[:, batch.pos_clip[:n]].t()  # (n, B)
    i = torch.arange(n, device=sim.device)
    return -F.log_softmax(cols, dim=1)[i, share.offset + i]


def _calibration(cfg, out, batch, share: Share, d: Dist) -> dict[str, Tensor]:
    """`R2Model._calibration` as this process's part: the video-level InfoNCE against the
    gathered batch, the layer-wise one per sample."""
    losses: dict[str, Tensor] = {}
    b = torch.arange(batch.pos_clip.size(0), device=batch.pos_clip.device)
    v = F.normalize(torch.stack([cls[b, batch.pos_clip] for cls in out.step_cls], 1), dim=-1)
    q = F.normalize(torch.stack(out.step_query_emb, 1), dim=-1)  # (B_local, K, C)
    scale = logit_scale(cfg.temperature, v)
    n, k = share.count, v.size(1)
    if cfg.loss_video_cal_weight > 0:  # per layer: each sample against the batch
        v_all, q_all = gather_rows(v, share, d), gather_rows(q, share, d)  # (B, K, C)
        target = (share.offset + torch.arange(n, device=v.device)).repeat(k)
        terms = _ce_sum(v[:n].transpose(0, 1), q_all.transpose(0, 1), target, scale)
        terms = terms + _ce_sum(q[:n].transpose(0, 1), v_all.transpose(0, 1), target, scale)
        losses["loss_video_cal"] = terms / (2 * k * share.total) * cfg.loss_video_cal_weight
    if cfg.loss_layer_cal_weight > 0:  # per sample: each layer against the sample's layers
        target = torch.arange(k, device=v.device).repeat(n)
        terms = _ce_sum(v[:n], q[:n], target, scale) + _ce_sum(q[:n], v[:n], target, scale)
        losses["loss_layer_cal"] = terms / (2 * k * share.total) * cfg.loss_layer_cal_weight
    return losses


def _ce_sum(rows: Tensor, cols: Tensor, target: Tensor, scale: Tensor) -> Tensor:
    """Sum of cross-entropies of (G, m, C) rows against (G, n, C) columns (logits = cosine
    × scale), rows flattened in (G, m) order, `target` the column of each."""
    logits = torch.matmul(rows, cols.transpose(-1, -2)) * scale
    return F.cross_entropy(logits.reshape(-1, cols.size(-2)), target, reduction="sum")
