"""The loss functions (spec §3), unweighted; `R2Model.losses` applies the weights.

Element-wise / per-sample forms are returned where the reduction depends on the batch,
so the model can reduce them exactly as the original does (sum / count over the batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_LOGIT_SCALE = 100.0
"""Upper clamp of the contrastive logit scale 1/temperature (the original's max_scale)."""


def logit_scale(temperature: float, like: Tensor) -> Tensor:
    """exp(log(1/τ)) clamped to 100, computed in float32 like the original's buffer."""
    return like.new_tensor([math.log(1 / temperature)]).exp().clamp(max=MAX_LOGIT_SCALE)


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = None
) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al.); α = None means no α weighting."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss


def saliency_logits(
    cos: Tensor, video_mask: Tensor, saliency: Tensor, pos_clip: Tensor, temperature: float
) -> Tensor:
    """(B, T) logits of the saliency contrastive loss: cosine / τ where a frame's saliency
    is at most that of the sample's positive clip and the frame is valid, else -inf."""
    b = torch.arange(cos.size(0), device=cos.device)
    pos_score = saliency[b, pos_clip].unsqueeze(-1)
    keep = (saliency <= pos_score) & video_mask  # (B, T)
    return cos * logit_scale(temperature, cos) + torch.where(keep, 0.0, float("-inf"))


def saliency_row_col(
    cos: Tensor, video_mask: Tensor, saliency: Tensor, pos_clip: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample terms of the sampled saliency contrastive loss (before averaging).

    Logits = cosine(h_t, pooled q) / τ over the frames t of each video whose saliency is
    ≤ saliency[p] (p = the sampled positive clip). Row term: cross-entropy over the frames
    of the sample at p. Column term: cross-entropy over the batch for column p_b at b.
    Only the B used columns are computed: the original takes a softmax over every
    column, and a column masked in every sample gives NaN gradients (spec §3).

    Args:
        cos: (B, T) cosine similarities.
        video_mask: (B, T) bool.
        saliency: (B, T) labels; pos_clip: (B,) long.

    Returns:
        row, col: (B,) negative log-likelihoods.
    """
    b = torch.arange(cos.size(0), device=cos.device)
    sim = saliency_logits(cos, video_mask, saliency, pos_clip, temperature)
    row = -F.log_softmax(sim, dim=1)[b, pos_clip]
    cols = sim[:, pos_clip].t()  # (B, B'): row b holds column p_b of every sample b'
    col = -F.log_softmax(cols, dim=1)[b, b]
    return row, col


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between paired rows of a and b (…, n, C); positives on the
    diagonal of each (n × n) similarity matrix, averaged over the leading dims."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    n = a.size(-2)
    target = torch.arange(n, device=a.device)
    a_sim = torch.matmul(a, b.transpose(-1, -2)) * logit_scale(temperature, a)
    b_sim = a_sim.transpose(-1, -2).contiguous()
    a_sim, b_sim = a_sim.view(-1, n), b_sim.view(-1, n)
    reps = a_sim.size(0) // n
    return (
        F.cross_entropy(a_sim, target.repeat(reps)) + F.cross_entropy(b_sim, target.repeat(reps))
    ) / 2
