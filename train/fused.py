"""Memory-lean first half of `video_map`: [tokens ‖ tef] → LayerNorm → Dropout → Linear,
and a faster exact dropout.

The original materialises every video token with its 2 temporal endpoint features
appended, (B, T, P, 770) for all K layers at once, in float32, and keeps the normalised
and dropped-out copies for the backward pass (several GB at B = 32). `map_tokens`
computes exactly the same function chunk by chunk of frames instead, with
`tef_norm_linear` for the 770-wide part:

- the features stay in their stored dtype (float16 from the cache) and are upcast one
  chunk at a time (upcast, layout change and tef concatenation in one pass);
- only the per-chunk dropout masks (one byte per value) are kept for backward; the
  normalised tokens are recomputed from the features (element-wise, cheap next to the
  matrix products);
- the dropout scale 1/(1−p) is folded into the LayerNorm affine parameters;
- the backward pass needs the products gᵀ·(keep ⊙ x̂) and gᵀ·keep (C × 770 each; the
  first only without dropout), from which the gradients of W, γ and β all follow — no
  (tokens × 770) gradient at the LayerNorm output is ever formed (see `backward`);
- chunk-sized temporaries are reused by the allocator instead of being fresh pages.

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


def _tokens(x: Tensor, tef: Tensor | None) -> Tensor:
    """Frames x (n, P, D) as float32 tokens (n·P, D[+2]), tef (n, 2) appended: the upcast,
    the layout change and the concatenation in one pass into one new buffer."""
    n, p, d = x.shape
    tok = torch.empty(n * p, d + (0 if tef is None else 2), dtype=torch.float32, device=x.device)
    tok[:, :d].view(n, p, d).copy_(x)
    if tef is not None:
        tok[:, d:].view(n, p, 2).copy_(tef[:, None].expand(n, p, 2))
    return tok


class _TefNormLinear(torch.autograd.Function):
    """y = Linear(Dropout(LayerNorm([x ‖ tef]))); x and tef get no gradient."""

    @staticmethod
    def forward(ctx, x, tef, ln_w, ln_b, weight, bias, p, eps):
        din, scale = weight.size(1), 1.0 / (1.0 - p)
        tok = _tokens(x, tef)
        if p > 0:  # LayerNorm with the dropout scale folded into its affine, then the mask
            z = F.layer_norm(tok, (din,), ln_w * scale, ln_b * scale, eps)
            keep = keep_mask(tuple(z.shape), p, z.device)
            z.mul_(tok.copy_(keep))  # tok's memory reused for the float 0/1 mask
        else:
            z, keep = F.layer_norm(tok, (din,), ln_w, ln_b, eps), None
        ctx.save_for_backward(x, tef, ln_w, ln_b, weight, keep)
        ctx.p, ctx.eps = p, eps
        return torch.addmm(bias, z, weight.t()).view(x.size(0), x.size(1), -1)

    @staticmethod
    def backward(ctx, gy):
        # With z = keep ⊙ (x̂ γ + β) s and g = dL/dy, every gradient follows from
        # A = gᵀ(keep ⊙ x̂) and K = gᵀ keep (C × Din): dW = s (A ⊙ γ + K ⊙ β),
        # dγ = s Σ_o W ⊙ A, dβ = s Σ_o W ⊙ K; no (tokens × Din) gradient is formed.
        x, tef, ln_w, ln_b, weight, keep = ctx.saved_tensors
        din, p = weight.size(1), ctx.p
        g = gy.reshape(-1, gy.size(-1))  # (n, C)
        g_sum = g.sum(0)
        tok = _tokens(x, tef)
        xhat = F.layer_norm(tok, (din,), eps=ctx.eps)
        if p > 0:
            keep_f = tok.copy_(keep)  # float 0/1
            k_mat = g.t() @ keep_f
            a_mat = g.t() @ xhat.mul_(keep_f)
        else:
            a_mat = g.t() @ xhat
            k_mat = g_sum[:, None].expand_as(a_mat)
        scale = 1.0 / (1.0 - p)
        g_w = (a_mat * ln_w + k_mat * ln_b) * scale
        g_lnw = (weight * a_mat).sum(0) * scale
        g_lnb = (weight * k_mat).sum(0) * scale
        return None, None, g_lnw, g_lnb, g_w, g_sum, None, None


def tef_norm_linear(
    x: Tensor, tef: Tensor | None, norm: nn.LayerNorm, drop: nn.Dropout, linear: nn.Linear
) -> Tensor:
    """`linear(drop(norm(cat(x, tef))))` for frames x (F, P, D) and tef (F, 2) or None,
    without keeping any (F·P × 770) tensor for backward (see the module docstring).

    Args:
        x: (F, P, D) tokens of F frames, any float dtype, no gradient.
        tef: (F, 2) float32 endpoint features appended to every token of a frame, or None.
        norm, drop, linear: the modules whose parameters (and dropout p / train mode) apply.

    Returns:
        (F, P, C) float32.
    """
    if x.requires_grad:
        raise ValueError("tef_norm_linear: the video features must not require a gradient")
    p = drop.p if drop.training else 0.0
    with torch.autocast(x.device.type, enabled=False):  # float32 math
        return _TefNormLinear.apply(
            x, tef, norm.weight, norm.bias, linear.weight, linear.bias, p, norm.eps
        )


def map_tokens(
    frames: Tensor, tef: Tensor | None, mlp: nn.Sequential, chunk_tokens: int | None = None
) -> Tensor:
    """`mlp[:6]` (LayerNorm → Dropout → Linear → ReLU → LayerNorm → Dropout, the original
    `video_map` without its last Linear) of frames (F, P, D) [+ tef (F, 2)], chunk by
    chunk of `chunk_tokens` tokens. Returns (F, P, C) float32."""
    n, step = frames.size(0), max(1, (chunk_tokens or CHUNK_TOKENS) // max(1, frames.size(1)))

    def chunk(f0: int) -> Tensor:  # (step, P, C)
        t = None if tef is None else tef[f0 : f0 + step]
        y = tef_norm_linear(frames[f0 : f0 + step], t, mlp[0], mlp[1], mlp[2])
        return mlp[5](mlp[4](torch.relu(y)))

    if torch.is_grad_enabled() or step >= n:
        parts = [chunk(f0) for f0 in range(0, n, step)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    out = None  # without autograd: written in place (no list of parts + cat, less heap churn)
    for f0 in range(0, n, step):
        y = chunk(f0)
        out = y.new_empty(n, *y.shape[1:]) if out is None else out
        out[f0 : f0 + step] = y
    return out


def reference_tef_norm_linear(
    x: Tensor, tef: Tensor | None, norm: nn.LayerNorm, drop: nn.Dropout, linear: nn.Linear
) -> Tensor:
    """The plain (memory-hungry) computation `tef_norm_linear` is equal to; for tests."""
    tok = x.float()
    if tef is not None:
        tok = torch.cat((tok, tef[:, None].expand(-1, x.size(1), -1)), dim=-1)
    return linear(drop(norm(tok)))
