"""Memory-lean first half of `video_map`: [tokens ‖ tef] → LayerNorm → Dropout → Linear,
and a faster exact dropout.

The original materialises every video token with its 2 temporal endpoint features
appended, (B, T, P, 770) for all K layers at once, in float32, and keeps the normalised
and dropped-out copies for the backward pass (several GB at B = 32). `tef_norm_linear`
computes exactly the same function chunk by chunk of frames instead:

- the features stay in their stored dtype (float16 from the cache) and are upcast one
  chunk at a time into a reused 770-wide buffer (upcast, layout and tef in one pass);
- only the per-chunk dropout masks (one byte per value) are kept for backward; the
  normalised tokens are recomputed from the features (element-wise, cheap next to the
  matrix products);
- the dropout scale 1/(1−p) is folded into the LayerNorm affine parameters;
- the backward pass needs one product per chunk, gᵀ·[keep ⊙ x̂ | keep] (C × 2·770;
  C × 770 without dropout), from which the gradients of W, γ and β all follow — no
  (tokens × 770) gradient at the LayerNorm output is ever formed (see `backward`).

Dropout masks are drawn by `keep_mask`: for p = 0.5 every random bit is one Bernoulli(½)
draw (8 per random byte, several times faster than `bernoulli_`), otherwise uniform
float32 draws compared with 1 − p. Both are exact Bernoulli(1 − p) masks. They are kept
as uint8 0/1 and applied as float32 0/1 multipliers: on CPU, float × bool products and
`torch.where` run several times slower than a float × float product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK_TOKENS = 8192
"""Tokens per chunk: 8192 × 770 float32 ≈ 25 MB per temporary, large enough to keep the
number of parallel regions small (a loaded machine makes each one costly) and small
enough to stay below glibc's 32 MB mmap threshold (no fresh page faults per chunk)."""
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """uint8 mask of independent Bernoulli(1 − p) draws (1 = keep)."""
    n = 1
    for s in shape:
        n *= s
    if p == 0.5:
        r = torch.empty((n + 7) // 8, dtype=torch.uint8, device=device).random_()
        bits = (r[None] >> _BIT_SHIFTS.to(device)[:, None]) & 1  # (8, n/8)
        return bits.view(-1)[:n].view(shape)
    return (torch.rand(shape, device=device) < (1 - p)).view(torch.uint8)


class _ScaledMask(torch.autograd.Function):
    """x · keep · scale with a uint8 keep mask (saved as is: one byte per value)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep.to(x.dtype).mul_(scale)

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved_tensors
        return g * keep.to(g.dtype).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """`nn.Dropout` with masks from `keep_mask` (same distribution, faster on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = keep_mask(tuple(x.shape), self.p, x.device)
        return _ScaledMask.apply(x, keep, 1 / (1 - self.p))


def _fill_tokens(buf: Tensor, x: Tensor, tef: Tensor | None, f0: int, f1: int) -> Tensor:
    """Frames f0:f1 of x (F, P, D) as float32 tokens (n·P, D[+2]) in buf, tef appended."""
    n, p, d = f1 - f0, x.size(1), x.size(2)
    tok = buf[: n * p]
    tok[:, :d].view(n, p, d).copy_(x[f0:f1])
    if tef is not None:
        tok[:, d:].view(n, p, 2).copy_(tef[f0:f1, None].expand(n, p, 2))
    return tok


class _TefNormLinear(torch.autograd.Function):
    """y = Linear(Dropout(LayerNorm([x ‖ tef]))) chunk-wise; x and tef get no gradient."""

    @staticmethod
    def forward(ctx, x, tef, ln_w, ln_b, weight, bias, p, eps, chunk_frames):
        n_frames, n_tok, din = x.size(0), x.size(1), weight.size(1)
        y = x.new_empty((n_frames, n_tok, weight.size(0)), dtype=torch.float32)
        buf = x.new_empty((chunk_frames * n_tok, din), dtype=torch.float32)
        keep_f = torch.empty_like(buf) if p > 0 else None  # float copy of a chunk's mask
        scale = 1.0 / (1.0 - p)
        masks = []
        for f0 in range(0, n_frames, chunk_frames):
            f1 = min(f0 + chunk_frames, n_frames)
            tok = _fill_tokens(buf, x, tef, f0, f1)
            if p > 0:  # LN with the dropout scale folded into its affine, then the mask
                z = F.layer_norm(tok, (din,), ln_w * scale, ln_b * scale, eps)
                keep = keep_mask(tuple(z.shape), p, z.device)
                z.mul_(keep_f[: z.size(0)].copy_(keep))
                masks.append(keep)
            else:
                z = F.layer_norm(tok, (din,), ln_w, ln_b, eps)
            torch.addmm(bias, z, weight.t(), out=y[f0:f1].view(-1, weight.size(0)))
        ctx.save_for_backward(x, tef, ln_w, ln_b, weight)
        ctx.masks, ctx.p, ctx.eps, ctx.chunk_frames = masks, p, eps, chunk_frames
        return y

    @staticmethod
    def backward(ctx, gy):
        x, tef, ln_w, ln_b, weight = ctx.saved_tensors
        n_frames, din, p = x.size(0), weight.size(1), ctx.p
        # With z = keep ⊙ (x̂ γ + β) s and g = dL/dy, everything follows from
        # A = gᵀ(keep ⊙ x̂) and K = gᵀ keep (C × Din): dW = s (A ⊙ γ + K ⊙ β),
        # dγ = s Σ_o W ⊙ A, dβ = s Σ_o W ⊙ K — one product per chunk, no n × Din gradient.
        g_sum = gy.sum(dim=(0, 1))  # (C,)
        acc = weight.new_zeros(weight.size(0), 2 * din if p > 0 else din)  # [A | K]
        buf = x.new_empty((ctx.chunk_frames * x.size(1), din), dtype=torch.float32)
        pair = buf.new_empty(buf.size(0), acc.size(1)) if p > 0 else None
        for i, f0 in enumerate(range(0, n_frames, ctx.chunk_frames)):
            f1 = min(f0 + ctx.chunk_frames, n_frames)
            g = gy[f0:f1].reshape(-1, gy.size(-1))  # (n, C)
            xhat = F.layer_norm(_fill_tokens(buf, x, tef, f0, f1), (din,), eps=ctx.eps)
            if p == 0:
                acc.addmm_(g.t(), xhat)
                continue
            cols = pair[: g.size(0)]
            keep = cols[:, din:].copy_(ctx.masks[i])  # float 0/1
            torch.mul(xhat, keep, out=cols[:, :din])
            acc.addmm_(g.t(), cols)
        ctx.masks = None
        a_mat = acc[:, :din]
        k_mat = acc[:, din:] if p > 0 else g_sum[:, None].expand_as(a_mat)
        scale = 1.0 / (1.0 - p)
        g_w = (a_mat * ln_w + k_mat * ln_b) * scale
        g_lnw = (weight * a_mat).sum(0) * scale
        g_lnb = (weight * k_mat).sum(0) * scale
        return None, None, g_lnw, g_lnb, g_w, g_sum, None, None, None


def tef_norm_linear(
    x: Tensor,
    tef: Tensor | None,
    norm: nn.LayerNorm,
    drop: nn.Dropout,
    linear: nn.Linear,
    chunk_tokens: int | None = None,
) -> Tensor:
    """`linear(drop(norm(cat(x, tef))))` for frames x (F, P, D) and tef (F, 2) or None.

    Args:
        x: (F, P, D) tokens of F frames, any float dtype, no gradient.
        tef: (F, 2) float32 endpoint features appended to every token of a frame, or None.
        norm, drop, linear: the modules whose parameters (and dropout p / train mode) apply.
        chunk_tokens: tokens per chunk (default `CHUNK_TOKENS`).

    Returns:
        (F, P, C) float32.
    """
    if x.requires_grad:
        raise ValueError("tef_norm_linear: the video features must not require a gradient")
    chunk_frames = max(1, (chunk_tokens or CHUNK_TOKENS) // max(1, x.size(1)))
    p = drop.p if drop.training else 0.0
    with torch.autocast(x.device.type, enabled=False):  # float32 math, upcast per chunk
        return _TefNormLinear.apply(
            x, tef, norm.weight, norm.bias, linear.weight, linear.bias, p, norm.eps, chunk_frames
        )


def reference_tef_norm_linear(
    x: Tensor, tef: Tensor | None, norm: nn.LayerNorm, drop: nn.Dropout, linear: nn.Linear
) -> Tensor:
    """The plain (memory-hungry) computation `tef_norm_linear` is equal to; for tests."""
    tok = x.float()
    if tef is not None:
        tok = torch.cat((tok, tef[:, None].expand(-1, x.size(1), -1)), dim=-1)
    return linear(drop(norm(tok)))
