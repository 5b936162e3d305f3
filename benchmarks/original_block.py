"""The R² block computed literally as the original implementation does, for A/B timing.

Same parameters and results as `r2.train.block.R2Block` (default config), but with the
original's data flow: all K layers upcast to float32 and concatenated with the
temporal endpoint features at once ((K, B, T, P, 770)), the whole `video_map` (with
`torch.nn.functional.dropout`) and `v_map` applied to every token, and the query
tokens repeated for every frame. Used by `benchmarks/train.py --original`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from r2.train.attention import position_encoding
from r2.train.block import BlockOutput, R2Block


def _mlp(seq, x: Tensor) -> Tensor:
    """`video_map` / `query_map` with plain torch dropout (the original's kernels)."""
    x = F.dropout(seq[0](x), seq[1].p, seq[1].training)
    x = seq[4](torch.relu(seq[2](x)))
    return seq[6](F.dropout(x, seq[5].p, seq[5].training))


def original_block_forward(
    block: R2Block, video: Tensor, query: Tensor, video_mask: Tensor, query_mask: Tensor
) -> BlockOutput:
    """The original adapter forward (default config: shared, reversed, recurrent)."""
    cfg, step = block.cfg, block.steps[0]
    k = cfg.k
    video = video[:, :, -k:].permute(2, 0, 1, 3, 4).float()  # (K, B, T, P, D)
    query = query[:, :, -k:].permute(2, 0, 1, 3).float()  # (K, B, L, D)
    _, b, t, p, _ = video.shape
    tef_s = torch.arange(0, 1, 1 / t)
    tef = torch.stack((tef_s, tef_s + 1.0 / t), dim=1)
    tef = tef.unsqueeze(1).unsqueeze(0).unsqueeze(0).repeat(k, b, 1, p, 1)
    video = torch.cat((video, tef[:, :, :t]), dim=-1)
    step_cls, step_query, last = [], [], None
    for i in range(k - 1, -1, -1):
        v = _mlp(step.video_map, video[i])  # (B, T, P, C)
        q = _mlp(step.query_map, query[i])  # (B, L, C)
        step_cls.append(v[:, :, 0])
        step_query.append(q)
        v_pool = v.view(b * t, -1, cfg.dims)
        q_pool = q.repeat_interleave(t, dim=0)
        att = torch.bmm(step.q_map(q_pool), step.v_map(v_pool).transpose(1, 2)) / cfg.dims**0.5
        o = (torch.bmm(att.softmax(-1), v_pool) + q_pool).amax(dim=1, keepdim=True)
        e = (v_pool[:, 0, None] + o * block.scale[i].tanh()).view(b, t, cfg.dims)
        if i < k - 1:
            g = block.gate[i].sigmoid()
            e = g * e + (1 - g) * last
        pe = position_encoding(video_mask, cfg.dims)
        last = step.temporal(e, q, pe, video_mask, query_mask)
    return BlockOutput(hidden=last, query=q, step_cls=step_cls, step_query=step_query)
