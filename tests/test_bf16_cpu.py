"""bfloat16 training on CPU (`r2 train --amp bf16`): it runs, every product of the fused
layers is bfloat16, the fused layers equal autocast applied to the literal modules, and a
step's loss and gradient stay close to float32's.

Tolerances of a bf16 step vs the float32 step (released model size, train mode, B = 4
random samples, 6 initialisations): loss relative difference 2.5e-4 – 1.2e-3 (asserted
≤ 3e-3), gradient cosine 0.9964 – 0.9990 (asserted ≥ 0.99); plain autocast of the literal
block gives 2.9e-4 – 8.7e-4 and 0.985 – 0.998. benchmarks/train.py prints both at B = 32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import batch_of, one_thread, perturbed, tiny_config  # noqa: F401
from train_fixtures import TINY, tiny_run

from r2.train import fused, train
from r2.train.attention import drop_path
from r2.train.block import R2Step
from r2.train.config import R2Config
from r2.train.loop import autocast_dtype
from r2.train.model import R2Model

pytestmark = pytest.mark.usefixtures("one_thread")
LOSS_RTOL = 3e-3
GRAD_COSINE = 0.99


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_amp_bf16_is_accepted_on_cpu_and_fp16_points_to_it():
    cpu = torch.device("cpu")
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("off", cpu) is None
    with pytest.raises(ValueError, match="--amp bf16 on CPU"):
        autocast_dtype("fp16", cpu)


def test_fused_video_map_in_bf16_equals_autocast_of_the_modules():
    """Same function as LayerNorm → Linear → ReLU → LayerNorm under autocast (eval mode):
    bfloat16 output and products; differences are bfloat16 rounding only."""
    torch.manual_seed(0)
    mlp = perturbed(R2Step(tiny_config(video_dim=64, dims=64)).video_map).eval()
    x, tef = torch.randn(12, 5, 64).half(), torch.rand(12, 2)
    g, g_cls = torch.randn(12, 5, 64), torch.randn(12, 64)
    with bf16():
        u, cls = fused.map_tokens(x, tef, mlp, chunk_tokens=20)
        ((u.float() * g).sum() + (cls.float() * g_cls).sum()).backward()
    ours = [p.grad.clone() for p in list(mlp.parameters())[:6]]
    mlp.zero_grad()
    tok = torch.cat((x.float(), tef[:, None].expand(-1, 5, -1)), dim=-1)
    with bf16():
        ref = mlp[:6](tok)
        ((ref.float() * g).sum() + (ref[:, 0].float() * g_cls).sum()).backward()
    exact = mlp[:6](tok).detach()  # float32
    assert u.dtype == ref.dtype == cls.dtype == torch.bfloat16
    err_ref = (ref.float() - exact).abs().max().item()
    assert 0 < (u.float() - exact).abs().max().item() <= 2 * err_ref  # bf16 rounding, no more
    for a, p in zip(ours, list(mlp.parameters())[:6], strict=True):
        assert _cosine(a, p.grad) > 0.999
        assert a.norm() == pytest.approx(p.grad.norm().item(), rel=1e-2)


def _literal_pool(step: R2Step, u, q):
    v = step.video_map[6](u)  # (B, T, P, C)
    qm = step.q_map(q)
    att = (qm @ step.v_map.weight)[:, None] @ v.transpose(2, 3)  # (B, T, L, P)
    att = att + (qm * step.v_map.bias).sum(-1)[:, None, :, None]
    return ((att / u.size(-1) ** 0.5).softmax(-1) @ v + q[:, None]).amax(2)


def test_pooling_in_bf16_equals_autocast_of_the_literal_form():
    """Output and gradients as far from float32 as autocast of the literal ops, no farther."""
    cfg = tiny_config(dims=64)
    torch.manual_seed(1)
    step = perturbed(R2Step(cfg))
    u0, q0 = torch.randn(2, 6, 5, 64).bfloat16(), torch.randn(2, 3, 64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    g = torch.randn(2, 6, 64)
    runs = {}
    for name in ("fp32", "literal bf16", "ours bf16"):
        u = (u0.float() if name == "fp32" else u0).detach().requires_grad_()
        q = q0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
            o = (
                step.pool(u, q, mask, False)[1]
                if name == "ours bf16"
                else _literal_pool(step, u, q)
            )
        (o.float() * g).sum().backward()
        runs[name] = [o.detach().float(), u.grad.float(), q.grad]
    for i, what in enumerate(("output", "u gradient", "q gradient")):
        exact = runs["fp32"][i]
        err_ours = (runs["ours bf16"][i] - exact).norm() / exact.norm()
        err_literal = (runs["literal bf16"][i] - exact).norm() / exact.norm()
        assert err_ours <= 1.5 * err_literal + 1e-3, (what, err_ours, err_literal)


def test_drop_path_draws_the_same_mask_in_bf16():
    """Same seed, same kept samples whatever x's dtype (bfloat16 draws would round
    0.9 + u up to 1 for u ≥ 0.099: a different, biased mask)."""
    x = torch.ones(200_000, 2)
    torch.manual_seed(0)
    a = drop_path(x, 0.1, True)
    torch.manual_seed(0)
    b = drop_path(x.bfloat16(), 0.1, True)
    assert b.dtype == torch.bfloat16
    assert torch.equal(a == 0, b == 0)
    assert (a[:, 0] == 0).float().mean().item() == pytest.approx(0.1, abs=0.003)


def test_bf16_step_is_close_to_float32():
    """Released model size, train mode, same dropout draws: loss and gradient close."""
    cfg = R2Config(video_dim=768, query_dim=512)
    batch = batch_of([(30, 10), (24, 8), (30, 12), (18, 6)], cfg, seed=3)
    torch.manual_seed(0)
    model = R2Model(cfg).train()
    runs = []
    for amp in (False, True):
        torch.manual_seed(0)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = sum(model.losses(model(batch), batch).values())
        loss.backward()
        runs.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (l32, g32), (l16, g16) = runs
    assert abs(l16 - l32) <= LOSS_RTOL * abs(l32), (l16, l32)
    assert _cosine(g16, g32) >= GRAD_COSINE


def test_train_with_amp_bf16_on_cpu(tmp_path):
    data = tiny_run(tmp_path, n_train=6, n_val=2)
    summary = train(data["cache"], data["train"], tmp_path / "run", val_anno=data["val"],
                    epochs=1, batch_size=3, device="cpu", workers=0, preload="ram",
                    amp="bf16", config=TINY)  # fmt: skip
    assert summary["finished"] and summary["step"] == 8
    assert (tmp_path / "run" / "best.safetensors").exists()
