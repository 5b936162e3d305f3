"""The model's building blocks against their literal (original) formulations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import one_thread, perturbed, tiny_config  # noqa: F401
from torch import nn

from r2.train import fused
from r2.train.attention import position_encoding
from r2.train.block import R2Step, endpoint_features
from r2.train.fused import Dropout, keep_mask, reference_tef_norm_linear, tef_norm_linear
from r2.train.heads import point_table, regression_ranges
from r2.train.losses import info_nce, saliency_row_col
from r2.train.targets import point_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(*modules):
    out = [p.grad.clone() for m in modules for p in m.parameters()]
    for m in modules:
        m.zero_grad()
    return out


def _maps(din=20, dout=8, seed=0):
    torch.manual_seed(seed)
    norm, linear = nn.LayerNorm(din), nn.Linear(din, dout)
    with torch.no_grad():  # non-trivial affine so its gradients are tested
        norm.weight.add_(torch.randn(din) * 0.3)
        norm.bias.add_(torch.randn(din) * 0.3)
    return norm, linear


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("with_tef", [True, False])
def test_tef_norm_linear_equals_plain_eval(dtype, with_tef):
    x = torch.randn(13, 5, 18).to(dtype)
    tef = torch.rand(13, 2) if with_tef else None
    norm, linear = _maps(20 if with_tef else 18)
    drop = Dropout(0.5).eval()
    g = torch.randn(13, 5, 8)
    y = tef_norm_linear(x, tef, norm, drop, linear)
    (y * g).sum().backward()
    ours = _grads(norm, linear)
    y_ref = reference_tef_norm_linear(x, tef, norm, drop, linear)
    (y_ref * g).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, _grads(norm, linear), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_map_tokens_chunked_equals_plain_sequential():
    torch.manual_seed(0)
    mlp = perturbed(R2Step(tiny_config()).video_map).eval()  # (16 + 2) -> 32
    x, tef = torch.randn(9, 5, 16).half(), torch.rand(9, 2)
    g, g_cls = torch.randn(9, 5, 32), torch.randn(9, 32)
    y, cls = fused.map_tokens(x, tef, mlp, chunk_tokens=12)  # 5 chunks of 2 frames
    ((y * g).sum() + (cls * g_cls).sum()).backward()
    ours = _grads(mlp[0], mlp[2], mlp[4])
    plain = mlp[:6](torch.cat((x.float(), tef[:, None].expand(-1, 5, -1)), dim=-1))
    ((plain * g).sum() + (plain[:, 0] * g_cls).sum()).backward()
    torch.testing.assert_close(y, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, plain[:, 0], rtol=0, atol=0)
    for a, b in zip(ours, _grads(mlp[0], mlp[2], mlp[4]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tef_norm_linear_equals_plain_with_dropout(monkeypatch):
    """Train mode: same masks -> same outputs and gradients as LayerNorm→Dropout→Linear."""
    x, tef = torch.randn(11, 5, 18).half(), torch.rand(11, 2)
    norm, linear = _maps()
    masks = []

    def recorded_mask(shape, p, device="cpu"):
        masks.append((torch.rand(shape) < 1 - p).to(torch.uint8))
        return masks[-1]

    monkeypatch.setattr(fused, "keep_mask", recorded_mask)
    g = torch.randn(11, 5, 8)
    y = torch.cat(
        [
            tef_norm_linear(x[i : i + 3], tef[i : i + 3], norm, Dropout(0.3).train(), linear)
            for i in range(0, 11, 3)
        ]
    )
    (y * g).sum().backward()
    ours = _grads(norm, linear)
    keep = torch.cat(masks).view(11, 5, 20).bool()
    z = norm(torch.cat((x.float(), tef[:, None].expand(-1, 5, -1)), dim=-1))
    y_ref = linear(torch.where(keep, z / 0.7, 0.0))
    (y_ref * g).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, _grads(norm, linear), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_keep_mask_is_bernoulli(p):
    torch.manual_seed(0)
    m = keep_mask((400, 250), p)
    assert m.dtype == torch.uint8 and m.shape == (400, 250) and m.max() == 1
    assert abs(m.float().mean().item() - (1 - p)) < 0.01
    # neighbouring draws are independent (the p = 0.5 path packs 8 draws per random byte)
    a, b = m.flatten()[:-1].float(), m.flatten()[1:].float()
    assert abs((a * b).mean().item() - (1 - p) ** 2) < 0.01
    d = Dropout(p).train()
    x = torch.ones(1000, 100, requires_grad=True)
    y = d(x)
    y.backward(torch.full_like(y, 3.0))
    torch.testing.assert_close(x.grad, 3.0 * y.detach())  # the same mask and scale
    values = torch.unique(y)
    assert len(values) == 2 and values[0] == 0
    assert values[1].item() == pytest.approx(1 / (1 - p))
    assert d.eval()(x) is x


def _literal_pool(step: R2Step, u, q):
    """The original's spatial pooling with v = video_map's last Linear(u) on every token."""
    b, t, p, c = u.shape
    v = step.video_map[6](u)
    v_pool = v.reshape(b * t, p, c)
    q_pool = q.repeat_interleave(t, dim=0)
    att = torch.bmm(step.q_map(q_pool), step.v_map(v_pool).transpose(1, 2)) / c**0.5
    o = torch.bmm(att.softmax(-1), v_pool) + q_pool
    return v[:, :, 0], o.amax(dim=1).view(b, t, c)


@pytest.mark.parametrize("n_tokens", [3, 7])  # fewer than P = 5 (W6 late) and more (early)
def test_pool_equals_literal_form(n_tokens):
    cfg = tiny_config()
    torch.manual_seed(1)
    step = R2Step(cfg)
    u = torch.randn(2, 4, 5, cfg.dims, requires_grad=True)
    q = torch.randn(2, n_tokens, cfg.dims, requires_grad=True)
    mask = torch.ones(2, n_tokens, dtype=torch.bool)
    g1, g2 = torch.randn(2, 4, cfg.dims), torch.randn(2, 4, cfg.dims)
    outs = []
    for fn in (lambda: step.pool(u, q, mask, False), lambda: _literal_pool(step, u, q)):
        v_cls, o = fn()
        ((v_cls * g1).sum() + (o * g2).sum()).backward()
        outs.append(
            (
                v_cls.detach(),
                o.detach(),
                u.grad.clone(),
                q.grad.clone(),
                *_grads(step.v_map, step.q_map, step.video_map[6]),
            )
        )
        u.grad, q.grad = None, None
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_position_encoding_values_and_padding():
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    pe = position_encoding(mask, 8)
    p = torch.arange(1, 7) / (6 + 1e-6) * 2 * math.pi
    div = torch.tensor([10000 ** (2 * (j // 2) / 8) for j in range(8)])
    want = torch.where(torch.arange(8) % 2 == 0, (p[:, None] / div).sin(), (p[:, None] / div).cos())
    torch.testing.assert_close(pe[0], want, rtol=1e-6, atol=1e-6)  # padded length for all
    inv = position_encoding(mask, 8, padding_invariant=True)
    torch.testing.assert_close(inv[0, :4], position_encoding(mask[:1, :4], 8)[0])
    torch.testing.assert_close(inv[1], pe[1])


def test_endpoint_features():
    mask = torch.tensor([[True] * 3 + [False], [True] * 4])
    tef = endpoint_features(mask)
    torch.testing.assert_close(
        tef[0], torch.tensor([[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1]])
    )
    inv = endpoint_features(mask, padding_invariant=True)
    torch.testing.assert_close(inv[0, :3], endpoint_features(mask[:1, :3])[0])
    assert inv[0, 3].abs().sum() == 0


def test_point_table_and_ranges():
    assert regression_ranges((1, 2, 4, 8)) == [(0, 2), (2, 4), (4, 8), (8, math.inf)]
    assert regression_ranges((1,)) == [(0, math.inf)]
    pts = point_table([5, 2], (1, 2, 4, 8))
    assert pts[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 2]
    assert pts[:, 3].tolist() == [1] * 5 + [2] * 2
    assert pts[5:, 1:3].tolist() == [[2, 4], [2, 4]]


def test_point_targets_rules():
    pts = point_table([8, 4, 2, 1], (1, 2, 4, 8))  # t = 0..7 | 0,2,4,6 | 0,4 | 0
    inf = float("inf")
    # windows in frames (fps 1): [2, 4] and a longer [1, 7]; padded row of +inf
    boundary = torch.tensor([[[2.0, 4.0], [1.0, 7.0], [inf, inf]]])
    cls_tgt, reg_tgt = point_targets(pts, boundary, torch.tensor([1.0]))
    assert torch.isfinite(reg_tgt).all()
    pos = {(int(pts[i, 0]), int(pts[i, 3])) for i in torch.nonzero(cls_tgt[0])[:, 0]}
    # stride 1: t within 1.5 of centre 3 and inside [2, 4], max distance in [0, 2]: 2, 3, 4
    assert {(t, s) for t, s in pos if s == 1} == {(2, 1), (3, 1), (4, 1)}
    # stride 2 (range [2, 4], radius 3): t = 2 and 4 for [2, 4] (max distance 2); t = 6 is
    # inside [1, 7] but 5 away from its start; stride 4 / 8: no distance in [4, 8] / [8, ∞)
    assert {(t, s) for t, s in pos if s > 1} == {(2, 2), (4, 2)}
    i = next(k for k in range(len(pts)) if pts[k, 0] == 3 and pts[k, 3] == 1)
    assert reg_tgt[0, i].tolist() == [1.0, 1.0]
    j = next(k for k in range(len(pts)) if pts[k, 0] == 4 and pts[k, 3] == 2)
    assert reg_tgt[0, j].tolist() == [1.0, 0.0]  # both qualify: the shorter [2, 4] wins
    neg = torch.nonzero(cls_tgt[0] == 0)[:, 0]
    torch.testing.assert_close(
        reg_tgt[0, neg],
        torch.stack(  # window 0's values
            (pts[neg, 0] - 2, 4 - pts[neg, 0]), dim=1
        )
        / pts[neg, 3, None],
    )


def _official_sampled_nce(cos, video_mask, saliency, pos_clip, temperature=0.07):
    """The original SampledNCELoss: a softmax over EVERY column (NaN-prone backward)."""
    b = torch.arange(cos.size(0))
    keep = (saliency <= saliency[b, pos_clip].unsqueeze(-1)) & video_mask
    sim = cos * math.exp(math.log(1 / temperature)) + torch.where(keep, 0.0, float("-inf"))
    row = F.log_softmax(sim, dim=1)[b, pos_clip]
    col = F.log_softmax(sim.t(), dim=1)[pos_clip, b]
    return -row.sum() / len(b) - col.sum() / len(b)


def test_saliency_loss_finite_where_original_is_nan():
    torch.manual_seed(0)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :30], mask[1, :4] = True, True  # one video much longer: columns 4.. masked in one
    saliency = torch.rand(2, 30) * mask
    pos = torch.tensor([3, 1])
    saliency[0, 10:] = 2.0  # above sample 0's positive: masked in sample 0 too -> all-masked
    cos = torch.randn(2, 30, requires_grad=True)
    official = _official_sampled_nce(cos, mask, saliency, pos)
    (g_off,) = torch.autograd.grad(official, cos)
    row, col = saliency_row_col(cos, mask, saliency, pos, 0.07)
    ours = row.mean() + col.mean()
    (g_ours,) = torch.autograd.grad(ours, cos)
    assert torch.isnan(g_off).any() and torch.isfinite(g_ours).all()
    torch.testing.assert_close(ours, official)
    finite = torch.isfinite(g_off)
    torch.testing.assert_close(g_ours[finite], g_off[finite])


def test_info_nce_matches_definition():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2) / 0.07
    t = torch.arange(4)
    want = sum(F.cross_entropy(s, t) + F.cross_entropy(s.t(), t) for s in sim) / 6
    torch.testing.assert_close(info_nce(a, b, 0.07), want)
