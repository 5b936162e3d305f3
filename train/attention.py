"""Temporal refinement of the R² block: position encoding, attention, decoder layer.

Post-norm decoder layer as in the original (nncore `TransformerDecoderLayer` with
order cross-attention → self-attention → FFN): x ← LayerNorm(x + DropPath(sublayer(x))).
The position encoding is added to the attention queries (both attentions) and to the
self-attention keys, never to values; cross-attention keys are the bare query tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PE_TEMPERATURE = 10000
PE_SCALE = 2 * math.pi
PE_EPS = 1e-6
INFER_MAX_SCORES = 1 << 22
"""Attention scores (B·heads × rows × keys, float32: 16 MB) formed at once without autograd;
longer inputs attend chunk by chunk of query rows, so a 2-hour video never holds T × T."""


def position_encoding(mask: Tensor, dims: int, padding_invariant: bool = False) -> Tensor:
    """Normalised sinusoidal position encoding, channels interleaved sin/cos.

    Positions p = 1..T become p / (T + 1e-6) · 2π. The original uses the PADDED length T
    for every sample; with `padding_invariant` each sample uses its own valid length.

    Args:
        mask: (B, T) bool, valid clips.
        dims: encoding width C (even).

    Returns:
        (B, T, C) float32.
    """
    b, t = mask.shape
    if padding_invariant:
        pos = mask.long().cumsum(1)  # (B, T): 1..T_b, then T_b on padding
    else:
        pos = torch.arange(1, t + 1, device=mask.device).unsqueeze(0).repeat(b, 1)
    pos = (pos + 0.0) / (pos[:, -1:] + PE_EPS) * PE_SCALE
    dt = torch.arange(dims, device=mask.device)
    dt = PE_TEMPERATURE ** (dt // 2 * 2 / dims)
    pe = pos.unsqueeze(-1) / dt  # (B, T, C)
    pe = torch.stack((pe[:, :, 0::2].sin(), pe[:, :, 1::2].cos()), dim=3)
    return pe.flatten(start_dim=2)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Drop the whole residual branch per sample with probability p (scaled by 1/(1−p)).

    The draws are float32 whatever x's dtype: in bfloat16, keep + u rounds to 1 already
    for u ≥ 0.099 (a biased mask, and not the float32 run's mask for the same seed)."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    shape = (x.size(0),) + (1,) * (x.dim() - 1)
    mask = (keep + torch.rand(shape, dtype=torch.float32, device=x.device)).floor()
    return x.div(keep) * mask.to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with q/k/v/out projections; keys masked by a (B, Lk) mask."""

    def __init__(self, dims: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dims, dims)
        self.k = nn.Linear(dims, dims)
        self.v = nn.Linear(dims, dims)
        self.out = nn.Linear(dims, dims)
        for m in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape  # (B, N, C) -> (B·heads, N, C/heads), batch-major
        return (
            x.view(b, n, self.heads, c // self.heads)
            .transpose(1, 2)
            .reshape(b * self.heads, n, c // self.heads)
        )

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        b, n, c = q.shape
        qh, kh, vh = self._split(self.q(q)), self._split(self.k(k)), self._split(self.v(v))
        bias = torch.where(key_mask, 0.0, float("-inf")).repeat_interleave(self.heads, dim=0)
        kt, bias, scale = kh.transpose(1, 2), bias.unsqueeze(1), (c // self.heads) ** 0.5
        rows = n
        if not torch.is_grad_enabled():  # bound the (B·h, rows, Lk) scores of long inputs
            rows = max(1, INFER_MAX_SCORES // (qh.size(0) * kh.size(1)))
        m = qh.new_empty(qh.shape) if rows < n else None  # (B·h, N, C/h)
        for r in range(0, n, rows):
            att = torch.bmm(qh[:, r : r + rows], kt) / scale  # (B·h, rows, Lk)
            part = torch.bmm((att + bias).softmax(-1), vh)  # (B·h, rows, C/h)
            if m is None:
                m = part
            else:
                m[:, r : r + rows] = part
        m = m.view(b, self.heads, n, c // self.heads).transpose(1, 2).reshape(b, n, c)
        return self.out(m)


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: attentions in `order`, then FFN 256→1024→256 (ReLU)."""

    def __init__(
        self,
        dims: int,
        heads: int,
        ffn_ratio: int,
        droppath: float,
        order: tuple[str, ...] = ("cross", "self"),
    ) -> None:
        super().__init__()
        self.order = tuple(order)
        self.droppath = droppath
        self.cross_att = MultiHeadAttention(dims, heads)
        self.cross_norm = nn.LayerNorm(dims)
        self.self_att = MultiHeadAttention(dims, heads)
        self.self_norm = nn.LayerNorm(dims)
        self.ffn = nn.Sequential(
            nn.Linear(dims, dims * ffn_ratio),
            nn.ReLU(inplace=True),
            nn.Linear(dims * ffn_ratio, dims),
        )
        self.ffn_norm = nn.LayerNorm(dims)
        for m in (self.ffn[0], self.ffn[2]):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def _residual(self, x: Tensor, d: Tensor, norm: nn.LayerNorm) -> Tensor:
        return norm(x + drop_path(d, self.droppath, self.training))

    def forward(
        self, x: Tensor, mem: Tensor, pe: Tensor, x_mask: Tensor, mem_mask: Tensor
    ) -> Tensor:
        """x (B, T, C) video states, mem (B, L, C) query tokens, pe (B, T, C)."""
        for name in self.order:
            if name == "cross":
                d = self.cross_att(x + pe, mem, mem, mem_mask)
                x = self._residual(x, d, self.cross_norm)
            else:
                q = x + pe
                d = self.self_att(q, q, x, x_mask)
                x = self._residual(x, d, self.self_norm)
        return self._residual(x, self.ffn(x), self.ffn_norm)


class TemporalRefiner(nn.Module):
    """`n` stacked decoder layers (1 in the released model, Table 12 varies it)."""

    def __init__(
        self,
        dims: int,
        heads: int,
        ffn_ratio: int,
        droppath: float,
        order: tuple[str, ...],
        n: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dims, heads, ffn_ratio, droppath, order) for _ in range(n)
        )

    def forward(
        self, x: Tensor, mem: Tensor, pe: Tensor, x_mask: Tensor, mem_mask: Tensor
    ) -> Tensor:
        """(B, T, C) video states refined with the (B, L, C) query tokens."""
        for layer in self.layers:
            x = layer(x, mem, pe, x_mask, mem_mask)
        return x
