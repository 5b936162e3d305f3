"""The training hot paths (oneDNN products, one-node video_map and pooling) compute exactly
the literal modules' function: outputs and gradients within the parity tolerances
(tests/test_parity.py: outputs 1e-5, gradients 1e-4 relative)."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import batch_of, one_thread, perturbed, tiny_config  # noqa: F401

from r2.train import fused, kernels
from r2.train.block import R2Step
from r2.train.model import R2Model

pytestmark = pytest.mark.usefixtures("one_thread")
OUT_TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_linear_equals_torch_float32(layout):
    torch.manual_seed(0)
    x, w, b = torch.randn(300, 70), torch.randn(40, 70), torch.randn(40)
    if layout == "transposed":  # x read through a transposed view, as the gradient products do
        x = torch.randn(70, 300).t()
    want = (x.double() @ w.double().t() + b.double()).float()
    torch.testing.assert_close(kernels.linear(x, w, b), want, **OUT_TOL)
    torch.testing.assert_close(kernels.mm_tn(x, x[:, :5]), (x.t() @ x[:, :5]), **OUT_TOL)
    assert kernels.linear(x[:0], w).shape == (0, 40)


def _recorded_masks(monkeypatch) -> list[torch.Tensor]:
    masks = []
    draw = fused.keep_mask

    def recorded(shape, p, device="cpu"):
        masks.append(draw(shape, p, device))
        return masks[-1]

    monkeypatch.setattr(fused, "keep_mask", recorded)
    return masks


def _plain_map(mlp, x, tef, masks, chunk_frames):
    """mlp[:6] with nn modules, the recorded masks applied in their draw order."""
    parts, it = [], iter(masks)
    for f0 in range(0, x.size(0), chunk_frames):
        xc, tc = x[f0 : f0 + chunk_frames].float(), tef[f0 : f0 + chunk_frames]
        z = mlp[0](torch.cat((xc, tc[:, None].expand(-1, x.size(1), -1)), dim=-1))
        z = z * next(it).view(z.shape) / (1 - mlp[1].p)
        h = mlp[4](torch.relu(mlp[2](z)))
        parts.append(h * next(it).view(h.shape) / (1 - mlp[5].p))
    return torch.cat(parts)


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_map_tokens_in_train_mode_equals_the_modules(monkeypatch, p):
    """Chunked, with dropout (same masks), [CLS] gradient added in place: same numbers."""
    torch.manual_seed(0)
    mlp = perturbed(R2Step(tiny_config(dropout=p)).video_map).train()
    x, tef = torch.randn(9, 5, 16).half(), torch.rand(9, 2)
    g, g_cls = torch.randn(9, 5, 32), torch.randn(9, 32)
    masks = _recorded_masks(monkeypatch)
    u, cls = fused.map_tokens(x, tef, mlp, chunk_tokens=12)  # 5 chunks of 2 frames
    ((u * g).sum() + (cls * g_cls).sum()).backward()
    ours = [None if q.grad is None else q.grad.clone() for q in mlp.parameters()]
    mlp.zero_grad()
    plain = _plain_map(mlp, x, tef, masks, 2)
    ((plain * g).sum() + (plain[:, 0] * g_cls).sum()).backward()
    torch.testing.assert_close(u, plain, **OUT_TOL)
    torch.testing.assert_close(cls, u[:, 0], rtol=0, atol=0)
    for a, b in zip(ours, [q.grad for q in mlp.parameters()], strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, **GRAD_TOL)


def _literal_pool(step: R2Step, u, q, mask):
    b, t, p, c = u.shape
    v = step.video_map[6](u)
    v_pool = v.reshape(b * t, p, c)
    q_pool = q.repeat_interleave(t, dim=0)
    att = torch.bmm(step.q_map(q_pool), step.v_map(v_pool).transpose(1, 2)) / c**0.5
    o = torch.bmm(att.softmax(-1), v_pool) + q_pool  # (B·T, L, C)
    o = o.masked_fill(~mask.repeat_interleave(t, dim=0)[:, :, None], float("-inf"))
    return v[:, :, 0], o.amax(dim=1).view(b, t, c)


@pytest.mark.parametrize("n_tokens", [3, 7])  # fewer than P = 5 (W6 late) and more (early)
def test_pool_with_masked_queries_and_cls_equals_literal_form(n_tokens):
    cfg = tiny_config()
    torch.manual_seed(1)
    step = perturbed(R2Step(cfg))
    u = torch.randn(2, 4, 5, cfg.dims, requires_grad=True)
    q = torch.randn(2, n_tokens, cfg.dims, requires_grad=True)
    mask = torch.ones(2, n_tokens, dtype=torch.bool)
    mask[1, -2:] = False  # padded query tokens left out of the max
    g1, g2 = torch.randn(2, 4, cfg.dims), torch.randn(2, 4, cfg.dims)
    outs = []
    for fn in (
        lambda: step.pool(u, q, mask, True, u[:, :, 0]),
        lambda: _literal_pool(step, u, q, mask),
    ):
        v_cls, o = fn()
        ((v_cls * g1).sum() + (o * g2).sum()).backward()
        outs.append([v_cls, o, u.grad, q.grad] + [x.grad for x in step.parameters()])
        outs[-1] = [x.detach().clone() if x is not None else None for x in outs[-1]]
        u.grad = q.grad = None
        step.zero_grad()
    for a, b in zip(*outs, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, **GRAD_TOL)


def test_model_step_equals_without_onednn(monkeypatch):
    """The whole training step (train mode, one seed) with and without the oneDNN products."""
    cfg = tiny_config(dropout=0.3)
    batch = batch_of([(11, 6), (8, 4), (13, 5)], cfg, seed=2)
    model = perturbed(R2Model(cfg), seed=4).train()
    runs = []
    for onednn in (True, False):
        monkeypatch.setattr(kernels, "use_onednn", onednn)
        torch.manual_seed(0)
        model.zero_grad()
        loss = sum(model.losses(model(batch), batch).values())
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(runs[0][0], runs[1][0], **OUT_TOL)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, **GRAD_TOL)
