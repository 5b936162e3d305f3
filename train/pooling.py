"""The heavy part of the query-modulated spatial pooling (spec §2.3) in one autograd node.

For every frame t of sample b, with the video tokens u (P × C) and the query tokens q (L × C):

    a = softmax_P((qe · uᵀ + qc) / √C)      (L × P)
    Y = (a · u) W6ᵀ + b6 + q                 (L × C)
    o = max_L Y                              (C)

(block.R2Step.pool explains why qe, qc and W6 stand for Wq, Wv and video_map's last Linear.)
Autograd of the literal ops spends more time around the products than in them: the
`amax` backward compares the (B, T, L, C) input with its maximum and divides by the tie
counts; the transposed attention is copied to be batched; every gradient is a fresh
tensor. Here the forward keeps the argmax (the gradient goes to the maximum, as with
`torch.max`; continuous values have no ties), the backward scatters into one buffer, the
two products that give u's gradient accumulate into one tensor, and the (B·T·L) × C
products with W6 go through oneDNN (kernels.py). Under bfloat16 autocast the products run
in bfloat16 and the softmax and the max in float32, as autocast does for the literal ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels

_F32 = torch.float32


def _scores(u: Tensor, qe: Tensor) -> Tensor:
    """qe · uᵀ per sample: (B, L, T·P). u (B or 1, T, P, C), qe (B, L, C)."""
    b, n = qe.shape[:2]
    flat = u.reshape(u.size(0), -1, u.size(-1))  # (B or 1, T·P, C)
    if u.size(0) == b:
        return torch.bmm(qe, flat.transpose(1, 2))
    return kernels.linear(qe.reshape(b * n, -1), flat[0]).view(b, n, -1)  # one video, B queries


def pool_forward(u, qe, qc, w6, b6, q, q_mask):
    """o (B, T, C) float32 and what the backward needs: the argmax over L (B, T, C), the
    attention (B, T, L, P) and a · u (B·T·L, C), both in u's dtype.

    Args:
        u: (B or 1, T, P, C) video tokens (float32 or bfloat16: the products' dtype).
        qe: (B, L, C) float32 score weights; qc: (B, L) per-query score constants.
        w6, b6: video_map's last Linear, applied after the pooling (None: u is final).
        q: (B, L, C) mapped query tokens. q_mask: (B, L) bool, or None (no masking).
    """
    t, p, c = u.shape[1:]
    b, n = qe.shape[:2]
    dt = u.dtype
    s = _scores(u, qe.to(dt)).view(b, n, t, p).float()
    att = ((s + qc[:, :, None, None]) / c**0.5).softmax(-1)  # (B, L, T, P) float32
    att_d = u.new_empty(b, t, n, p).copy_(att.transpose(1, 2))  # cast + transpose
    if u.size(0) == b:
        o = torch.bmm(att_d.view(b * t, n, p), u.reshape(b * t, p, c))  # (B·T, L, C)
    else:
        o = torch.matmul(att_d, u)  # one video, B queries (inference)
    o = o.reshape(-1, c)
    y = o if w6 is None else kernels.linear(o, w6.to(dt), b6.to(dt))
    y = torch.add(y.view(b, t, n, c), q[:, None])  # float32 (promoted)
    if q_mask is not None:
        y.masked_fill_(~q_mask[:, None, :, None], float("-inf"))
    out, idx = y.max(dim=2)
    return out, idx, att_d, o


class _Pool(torch.autograd.Function):
    """o = max_L((softmax_P((qe·uᵀ + qc)/√C) · u) W6ᵀ + b6 + q); see the module docstring."""

    @staticmethod
    def forward(ctx, u, qe, qc, w6, b6, q, q_mask):
        out, idx, att, o = pool_forward(u, qe, qc, w6, b6, q, q_mask)
        ctx.save_for_backward(u, qe, w6, idx, att, o)
        return out

    @staticmethod
    def backward(ctx, g_out):
        u, qe, w6, idx, att, o = ctx.saved_tensors
        b, t, n, p = att.shape
        c, dt = u.size(-1), u.dtype
        if u.size(0) != b:
            raise RuntimeError(
                "pooling backward: one video broadcast over queries is inference only"
            )
        g_q = g_out.new_zeros(b, n, c).scatter_add_(1, idx, g_out)  # the max's rows
        g_y = u.new_zeros(b, t, n, c).scatter_(2, idx[:, :, None], g_out[:, :, None].to(dt))
        g_y = g_y.view(-1, c)
        g_w6 = g_b6 = None
        if w6 is not None:
            g_b6 = g_out.sum((0, 1))
            g_w6 = kernels.mm_tn(g_y, o).float()  # (C, C)
            g_y = kernels.linear(g_y, w6.t().to(dt).contiguous())  # gradient of a · u
        g_o = g_y.view(b * t, n, c)
        uf = u.reshape(b * t, p, c)
        g_att = torch.bmm(g_o, uf.transpose(1, 2)).view(b, t, n, p).float()  # (B, T, L, P)
        a = att.float()
        g_s = a * (g_att - (g_att * a).sum(-1, keepdim=True)) / c**0.5  # softmax backward
        g_qc = g_s.sum((1, 3))  # (B, L)
        g_s = u.new_empty(b, n, t, p).copy_(g_s.transpose(1, 2)).view(b, n, -1)
        g_qe = torch.bmm(g_s, u.reshape(b, t * p, c)).float()  # (B, L, C)
        g_u = torch.bmm(att.view(b * t, n, p).transpose(1, 2), g_o)  # (B·T, P, C)
        g_u.view(b, t * p, c).baddbmm_(g_s.transpose(1, 2), qe.to(dt))
        return g_u.view(u.shape), g_qe, g_qc, g_w6, g_b6, g_q, None


def pool(u, qe, qc, w6, b6, q, q_mask) -> Tensor:
    """max_L((a · u) W6ᵀ + b6 + q) per frame: (B, T, C) float32 (see `pool_forward`).

    The products run in u's dtype, or in autocast's when it is on (as autocast would run
    the literal ops: bfloat16 on CPU, float16 on CUDA by default)."""
    dt = kernels.autocast_dtype(u.device.type)
    if dt != _F32 and u.dtype != dt:
        u = u.to(dt)
    with torch.autocast(u.device.type, enabled=False):
        return _Pool.apply(u, qe, qc, w6, b6, q, q_mask)
