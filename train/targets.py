"""Point targets for the class and boundary heads (spec §3), the original's assignment.

A point t of a level with stride s is positive for a ground-truth window [a, b]
(frames) if it lies inside the window and within radius · s of its centre, and the larger
of (t − a, b − t) falls in the level's regression range; among several qualifying
windows the shortest wins (ties within 1e-3 all count for the class target; the
regression target takes the first shortest). Negative points carry the regression
values of window 0 (never used). Padded windows are +inf rows and never qualify.
"""

from __future__ import annotations

import torch
from torch import Tensor

LENGTH_TIE = 1e-3
"""Windows whose lengths differ by at most this (frames) tie for the class target."""


def point_targets(
    points: Tensor, boundary: Tensor, fps: Tensor, sample_radius: float = 1.5
) -> tuple[Tensor, Tensor]:
    """Class and regression targets of every point for every sample.

    Args:
        points: (N, 4) point table (t, range low, range high, stride).
        boundary: (B, G, 2) windows in seconds, +inf rows for padding.
        fps: (B,) clips per second.

    Returns:
        cls_tgt: (B, N) float32, 1 for positive points.
        reg_tgt: (B, N, 2) (t − start, end − t) / stride of the assigned window.
    """
    b, g = boundary.shape[:2]
    n = points.size(0)
    if g == 0:
        return points.new_zeros(b, n), points.new_zeros(b, n, 2)
    gt = boundary * fps[:, None, None]  # (B, G, 2) frames
    t, lo, hi, stride = (points[:, i, None] for i in range(4))  # each (N, 1)
    start, end = gt[:, None, :, 0], gt[:, None, :, 1]  # (B, 1, G)
    lens = (end - start).expand(b, n, g).clone()  # (B, N, G)
    r_tgt = torch.stack((t - start, end - t), dim=-1)  # (B, N, G, 2)
    if sample_radius > 0:
        centre = (start + end) / 2
        t_min = centre - stride * sample_radius
        t_max = centre + stride * sample_radius
        dist_s = t - torch.maximum(t_min, start)
        dist_e = torch.minimum(t_max, end) - t
        cls_ok = torch.minimum(dist_s, dist_e) >= 0
    else:
        cls_ok = r_tgt.min(-1)[0] >= 0
    reg_dist = r_tgt.max(-1)[0]
    reg_ok = (reg_dist >= lo) & (reg_dist <= hi)
    lens.masked_fill_(~cls_ok, float("inf"))
    lens.masked_fill_(~reg_ok, float("inf"))
    min_len, min_ind = lens.min(dim=2)  # (B, N)
    tie = (lens <= min_len[..., None] + LENGTH_TIE) & (lens < float("inf"))
    cls_tgt = tie.any(dim=2).to(points.dtype)
    idx = min_ind[..., None, None].expand(b, n, 1, 2)
    reg_tgt = r_tgt.gather(2, idx)[:, :, 0] / stride  # (B, N, 2)
    return cls_tgt, reg_tgt
