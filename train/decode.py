"""Inference decoding (spec §4): points → windows in seconds, class scores → saliency.

The per-level class scores are brought back to T clips by the evaluation stage's
`upsample_saliency` (the original's rule); post-processing of the windows (clamping,
rounding, NMS) is `r2.evaluate.postprocess.postprocess_windows`, applied by the caller.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from r2.evaluate.postprocess import upsample_saliency

from .batch import Batch
from .config import R2Config


def windows(coord: Tensor, points: Tensor, fps: float, scores: Tensor, top: int) -> Tensor:
    """(n, 3) [start_s, end_s, score] of the `top` highest-scoring points, by score.

    start = (t − d_left · stride) / fps, end = (t + d_right · stride) / fps.
    """
    bnd = coord.clone()
    bnd[:, 0] *= -1
    bnd *= points[:, 3, None].repeat(1, 2)
    bnd += points[:, 0, None].repeat(1, 2)
    bnd /= fps
    bnd = torch.cat((bnd, scores[:, None]), dim=-1)
    _, order = scores.sort(descending=True)
    return bnd[order[:top]]


def decode_sample(cfg: R2Config, out, batch: Batch, i: int):
    """The `RawPrediction` of sample i of a batch (see `R2Model.predict`)."""
    from .model import RawPrediction

    n_clips = int(out.video_mask[i].sum())
    scores = out.out_class[i].float().sigmoid()  # (N,)
    valid = out.point_mask[i]
    level_scores, start = [], 0
    for m in out.level_masks:
        level = scores[start : start + m.size(1)][m[i]]
        start += m.size(1)
        if level.numel():
            level_scores.append(level)
    saliency = upsample_saliency([lv.cpu().numpy() for lv in level_scores], n_clips)
    if cfg.merge_cls_sal:
        saliency = saliency * out.saliency_cos[i, :n_clips].float().cpu().numpy()
    boundary = None
    if out.out_coord is not None:
        boundary = windows(
            out.out_coord[i][valid].float(),
            out.points[valid],
            float(batch.fps[i]),
            scores[valid],
            cfg.max_num_moment,
        )
        boundary = boundary.cpu().numpy().astype(np.float32)
    return RawPrediction(
        qid=batch.qids[i] if batch.qids else str(i),
        vid=batch.vids[i] if batch.vids else "",
        duration=float(batch.duration[i]),
        boundary=boundary,
        saliency=saliency.astype(np.float32),
    )
