"""Memory-lean, fast `video_map` up to its last Linear, and a faster exact dropout.

`video_map` is LayerNorm(770) → Dropout → Linear(770, 256) → ReLU → LayerNorm(256) →
Dropout → Linear(256, 256), applied to every video token ([CLIP token ‖ 2 temporal endpoint
features], B·T·P·K of them: 480,000 per QVHighlights batch). The original materialises all
tokens at once in float32 (several GB at B = 32). `map_tokens` computes exactly the same
function (without the last Linear, see block.R2Step.pool) frame chunk by frame chunk, in
ONE autograd node for the whole batch (`_MapTokens`):

- the features stay in their stored dtype (float16 from the cache) and are upcast one
  chunk at a time (upcast, layout change and tef concatenation in one pass);
- for backward only the dropout masks (one byte per value), the per-token LayerNorm
  statistics and the ReLU output (B·T·P × 256) are kept; the normalised 770-wide tokens
  are recomputed from the features (element-wise, cheap next to the matrix products);
- the dropout scales 1/(1−p) are folded into the LayerNorm affine parameters;
- the 770-wide backward needs only the products gᵀ·(keep ⊙ x̂) and gᵀ·keep (C × 770
  each; the first only without dropout), from which the gradients of W, γ and β all follow
  — no (tokens × 770) gradient is ever formed (see `_norm_linear_grads`);
- the chunk outputs are written into one preallocated (F, P, C) tensor (no list + cat),
  and the [CLS] tokens u[:, 0] come out as a second output, so the backward of "take token
  0" adds into its rows instead of building a zero-filled (F, P, C) gradient;
- the matrix products go through oneDNN (kernels.py). Under bfloat16 autocast they run in
  bfloat16 (float32 accumulation), the casts fused into the element-wise passes that
  produce their operands; LayerNorm statistics stay float32.

Dropout masks are drawn by `keep_mask`: for p = 0.5 every random bit is one Bernoulli(½)
draw (8 per random byte, several times faster than `bernoulli_`), otherwise uniform
float32 draws compared with 1 − p. Both are exact Bernoulli(1 − p) masks, drawn in the
original's order (per chunk: the 770-wide mask, then the 256-wide one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import kernels

CHUNK_TOKENS = 4096
"""Tokens per chunk: 4096 × 770 float32 ≈ 12.6 MB per temporary, so one chunk's passes
(upcast, LayerNorm, mask, product) stay in the last-level cache and its temporaries are
recycled by the allocator instead of being fresh (page-faulting) memory, while the
products stay large enough to run at full speed."""
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)
_F32 = torch.float32


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
    tok = torch.empty(n * p, d + (0 if tef is None else 2), dtype=_F32, device=x.device)
    tok[:, :d].view(n, p, d).copy_(x)
    if tef is not None:
        tok[:, d:].view(n, p, 2).copy_(tef[:, None].expand(n, p, 2))
    return tok


def compute_dtype(device_type: str) -> torch.dtype:
    """bfloat16 under bfloat16 autocast, float32 otherwise (float16 autocast leaves these
    layers in float32, as before)."""
    dt = kernels.autocast_dtype(device_type)
    return dt if dt == torch.bfloat16 else _F32


@dataclass(frozen=True)
class _Spec:
    """Non-tensor settings of one `_MapTokens` / `_TefNormLinear` call."""

    p1: float  # dropout after LayerNorm(770), 0 in eval mode
    p2: float  # dropout after LayerNorm(256)
    eps1: float
    eps2: float
    frames: int  # frames per chunk
    dtype: torch.dtype  # of the products and of the output
    save: bool  # keep what backward needs


def _norm_linear_fwd(x, tef, w1s, b1s, w2, b2, spec: _Spec):
    """y = Linear(keep ⊙ LayerNorm_{γs, βs}([x ‖ tef])) for one chunk; y (n, C) in
    spec.dtype (w2, b2 already in it). Returns y, keep (uint8 or None), mean, rstd."""
    tok = _tokens(x, tef)
    z, mean, rstd = torch.native_layer_norm(tok, (tok.size(1),), w1s, b1s, spec.eps1)
    keep = None
    if spec.p1 > 0:
        keep = keep_mask(tuple(z.shape), spec.p1, z.device)
        out = z if spec.dtype == _F32 else torch.empty_like(z, dtype=spec.dtype)
        z = torch.mul(z, tok.copy_(keep), out=out)  # tok's memory reused for the float mask
    elif spec.dtype != _F32:
        z = z.to(spec.dtype)
    return kernels.linear(z, w2, b2), keep, mean, rstd


def _norm_linear_bwd(x, tef, g: Tensor, keep, mean, rstd, acc: dict[str, Tensor]) -> None:
    """Add one chunk's gᵀ(keep ⊙ x̂) to acc["a"] and gᵀ keep to acc["k"] (g (n, C))."""
    tok = _tokens(x, tef)
    xhat = torch.addcmul(-mean * rstd, tok, rstd, out=tok)  # (tok − mean) · rstd, in place
    gt = g.t().contiguous()  # (C, n), the narrow operand
    if keep is None:
        acc["a"] += kernels.linear(gt, xhat.to(g.dtype).t())
        return
    keep_f = torch.empty_like(xhat, dtype=g.dtype).copy_(keep)
    acc["k"] += kernels.linear(gt, keep_f.t())
    acc["a"] += kernels.linear(gt, torch.mul(xhat, keep_f, out=keep_f).t())


def _norm_linear_grads(acc, g_b2, w1, b1, w2, p):
    """Gradients of γ (w1), β (b1), W (w2) from A = gᵀ(keep ⊙ x̂), K = gᵀ keep.

    With z = keep ⊙ (x̂ γ + β) s and y = W z + b: dW = s (A ⊙ γ + K ⊙ β),
    dγ = s Σ_o W ⊙ A, dβ = s Σ_o W ⊙ K (K = 1 gᵀ without dropout)."""
    a, s = acc["a"], 1.0 / (1.0 - p)
    k = acc["k"] if p > 0 else g_b2[:, None].expand_as(a)
    return (w2 * a).sum(0) * s, (w2 * k).sum(0) * s, (a * w1 + k * b1) * s


class _MapTokens(torch.autograd.Function):
    """(u, u[:, 0]) with u = Dropout(LayerNorm(ReLU(Linear(Dropout(LayerNorm([x ‖ tef]))))))
    for frames x (F, P, D) (no gradient) and tef (F, 2) or None, chunk by chunk."""

    @staticmethod
    def forward(ctx, x, tef, w1, b1, w2, b2, w4, b4, spec: _Spec):
        n, p = x.size(0), x.size(1)
        s1, s2, dt = 1.0 / (1.0 - spec.p1), 1.0 / (1.0 - spec.p2), spec.dtype
        w1s, b1s, w2d, b2d, w4s, b4s = w1 * s1, b1 * s1, w2.to(dt), b2.to(dt), w4 * s2, b4 * s2
        u = torch.empty(n, p, w2.size(0), dtype=dt, device=x.device)  # (F, P, C), filled in place
        saved = []
        for f0 in range(0, n, spec.frames):
            xc, tc = x[f0 : f0 + spec.frames], None if tef is None else tef[f0 : f0 + spec.frames]
            y, keep1, mean1, rstd1 = _norm_linear_fwd(xc, tc, w1s, b1s, w2d, b2d, spec)
            y = y.relu_()
            h, mean2, rstd2 = torch.native_layer_norm(y, (y.size(1),), w4s, b4s, spec.eps2)
            uc, keep2 = u[f0 : f0 + spec.frames].view(h.shape), None
            if spec.p2 > 0:
                keep2 = keep_mask(tuple(h.shape), spec.p2, h.device)
                torch.mul(h, keep2.to(dt), out=uc)
            else:
                uc.copy_(h)
            if spec.save:
                saved += [keep1, mean1, rstd1, y, mean2, rstd2, keep2]
        ctx.spec = spec
        if spec.save:
            ctx.save_for_backward(x, tef, w1, b1, w2, b2, w4, b4, *saved)
        return u, u[:, 0].clone()

    @staticmethod
    def backward(ctx, g_u, g_cls):
        spec = ctx.spec
        x, tef, w1, b1, w2, _, w4, b4, *saved = ctx.saved_tensors
        s2, c = 1.0 / (1.0 - spec.p2), w2.size(0)
        acc = {"a": w2.new_zeros(w2.shape), "k": w2.new_zeros(w2.shape)}
        g_b2, g_w4, g_b4 = w2.new_zeros(c), w2.new_zeros(c), w2.new_zeros(c)
        with torch.autocast(x.device.type, enabled=False):
            for i, f0 in enumerate(range(0, x.size(0), spec.frames)):
                keep1, mean1, rstd1, y, mean2, rstd2, keep2 = saved[7 * i : 7 * i + 7]
                sl = slice(f0, f0 + spec.frames)
                g = _chunk_grad(g_u, g_cls, sl, y, keep2)  # (n, C) at the LN output
                g_y, gw, gb = torch.ops.aten.native_layer_norm_backward(
                    g, y, [c], mean2, rstd2, w4 * s2, b4 * s2, [True, True, True]
                )
                g_w4 += gw
                g_b4 += gb
                g_y = torch.ops.aten.threshold_backward(g_y, y, 0)  # ReLU
                g_b2 += g_y.sum(0, dtype=_F32)
                tc = None if tef is None else tef[sl]
                _norm_linear_bwd(x[sl], tc, g_y, keep1, mean1, rstd1, acc)
        g_w1, g_b1, g_w2 = _norm_linear_grads(acc, g_b2, w1, b1, w2, spec.p1)
        return None, None, g_w1, g_b1, g_w2, g_b2, g_w4 * s2, g_b4 * s2, None


def _chunk_grad(g_u, g_cls, sl: slice, y: Tensor, keep2) -> Tensor:
    """The gradient at a chunk's LayerNorm(256) output, (n, C): (g_u + g_cls on the rows of
    token 0) ⊙ keep2 (the dropout scale is in the LayerNorm affine)."""
    n, c = y.shape
    g = y.new_zeros(n, c) if g_u is None else g_u[sl].reshape(n, c)
    if g_cls is not None:
        g = g.clone() if g_u is not None else g
        cls = g_cls[sl]  # (frames, C)
        g.view(cls.size(0), -1, c)[:, 0] += cls
        return g if keep2 is None else g.mul_(keep2.to(g.dtype))
    return g if keep2 is None else g * keep2.to(g.dtype)


class _TefNormLinear(torch.autograd.Function):
    """y = Linear(Dropout(LayerNorm([x ‖ tef]))) of one chunk; x and tef get no gradient."""

    @staticmethod
    def forward(ctx, x, tef, w1, b1, w2, b2, spec: _Spec):
        s1 = 1.0 / (1.0 - spec.p1)
        w2d, b2d = w2.to(spec.dtype), b2.to(spec.dtype)
        y, keep, mean, rstd = _norm_linear_fwd(x, tef, w1 * s1, b1 * s1, w2d, b2d, spec)
        ctx.save_for_backward(x, tef, w1, b1, w2, keep, mean, rstd)
        ctx.spec = spec
        return y.view(x.size(0), x.size(1), -1)

    @staticmethod
    def backward(ctx, gy):
        x, tef, w1, b1, w2, keep, mean, rstd = ctx.saved_tensors
        g = gy.reshape(-1, gy.size(-1))
        acc = {"a": w2.new_zeros(w2.shape), "k": w2.new_zeros(w2.shape)}
        with torch.autocast(x.device.type, enabled=False):
            _norm_linear_bwd(x, tef, g, keep, mean, rstd, acc)
        g_b2 = g.sum(0, dtype=_F32)
        g_w1, g_b1, g_w2 = _norm_linear_grads(acc, g_b2, w1, b1, w2, ctx.spec.p1)
        return None, None, g_w1, g_b1, g_w2, g_b2, None


def _spec(frames: Tensor, mlp: nn.Sequential, chunk_tokens: int | None) -> _Spec:
    if frames.requires_grad:
        raise ValueError("video_map: the video features must not require a gradient")
    n_frames = max(1, (chunk_tokens or CHUNK_TOKENS) // max(1, frames.size(1)))
    return _Spec(
        p1=mlp[1].p if mlp[1].training else 0.0,
        p2=mlp[5].p if len(mlp) > 5 and mlp[5].training else 0.0,
        eps1=mlp[0].eps,
        eps2=mlp[4].eps if len(mlp) > 4 else 0.0,
        frames=n_frames,
        dtype=compute_dtype(frames.device.type),
        save=torch.is_grad_enabled() and any(p.requires_grad for p in mlp.parameters()),
    )


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
        (F, P, C): float32, bfloat16 under bfloat16 autocast.
    """
    spec = _spec(x, nn.Sequential(norm, drop), None)
    with torch.autocast(x.device.type, enabled=False):
        return _TefNormLinear.apply(
            x, tef, norm.weight, norm.bias, linear.weight, linear.bias, spec
        )


def map_tokens(
    frames: Tensor, tef: Tensor | None, mlp: nn.Sequential, chunk_tokens: int | None = None
) -> tuple[Tensor, Tensor]:
    """`mlp[:6]` (LayerNorm → Dropout → Linear → ReLU → LayerNorm → Dropout, the original
    `video_map` without its last Linear) of frames (F, P, D) [+ tef (F, 2)], chunk by chunk
    of `chunk_tokens` tokens, in one autograd node.

    Returns:
        u (F, P, C) and its [CLS] tokens u[:, 0] (F, C) as a separate tensor (use it
        instead of indexing u: its gradient is added in place of a zero-filled one).
        float32; bfloat16 under bfloat16 autocast (products in bfloat16, see the module
        docstring).
    """
    spec = _spec(frames, mlp, chunk_tokens)
    with torch.autocast(frames.device.type, enabled=False):
        return _MapTokens.apply(
            frames, tef, *(t for i in (0, 2, 4) for t in (mlp[i].weight, mlp[i].bias)), spec
        )


def reference_tef_norm_linear(
    x: Tensor, tef: Tensor | None, norm: nn.LayerNorm, drop: nn.Dropout, linear: nn.Linear
) -> Tensor:
    """The plain (memory-hungry) computation `tef_norm_linear` is equal to; for tests."""
    tok = x.float()
    if tef is not None:
        tok = torch.cat((tok, tef[:, None].expand(-1, x.size(1), -1)), dim=-1)
    return linear(drop(norm(tok)))
