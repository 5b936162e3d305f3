"""Long videos: inference runs the per-frame stages and the attention chunk by chunk, with
no maximum length, and gives the same numbers as the one-pass (training) computation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_fixtures import batch_of, one_thread, perturbed, sample, tiny_config  # noqa: F401

from r2.train import attention, block
from r2.train.batch import collate, one_video_batch
from r2.train.model import R2Model

T_LONG = 1500  # beyond the original's fixed 1,024 positions


def _outputs(model: R2Model, batch, grad: bool) -> dict[str, torch.Tensor]:
    with torch.set_grad_enabled(grad):
        out = model(batch)
    return {
        "class": out.out_class.detach(),
        "coord": out.out_coord.detach(),
        "saliency": out.saliency_cos.detach(),
        "cls": torch.stack(out.step_cls).detach(),
    }


def _count_calls(monkeypatch, owner, name: str) -> list[int]:
    """Count the calls of owner.name (a function or method) while it keeps working."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("fusion", ["recurrent", "mean"])
def test_chunked_inference_equals_the_one_pass_forward(monkeypatch, one_thread, fusion):  # noqa: F811
    cfg = tiny_config(fusion=fusion)
    model = perturbed(R2Model(cfg), seed=3).eval()
    batch = batch_of([(T_LONG, 7), (T_LONG - 311, 4)], cfg, seed=5)
    full = _outputs(model, batch, grad=True)  # autograd on: everything in one pass

    monkeypatch.setattr(block, "INFER_CHUNK_TOKENS", 2 * 5 * 37)  # 37 frames per chunk
    monkeypatch.setattr(attention, "INFER_MAX_SCORES", 2 * 4 * T_LONG * 50)  # 50 rows
    pools = _count_calls(monkeypatch, block.R2Step, "pool")
    bmms = _count_calls(monkeypatch, torch, "bmm")
    chunked = _outputs(model, batch, grad=False)

    steps = 1 if fusion == "mean" else cfg.k
    assert pools[0] == steps * -(-T_LONG // 37)  # really chunked over frames
    assert bmms[0] > steps * 2 * -(-T_LONG // 50)  # and over the self-attention rows
    for name, ref in full.items():  # observed: bit-identical (1 thread)
        assert chunked[name].shape == ref.shape
        torch.testing.assert_close(chunked[name], ref, rtol=1e-6, atol=1e-6, msg=name)


def test_a_short_batch_is_one_pass_even_without_autograd(monkeypatch, one_thread):  # noqa: F811
    cfg = tiny_config()
    model = R2Model(cfg).eval()
    batch = batch_of([(40, 6), (33, 5)], cfg)
    pools = _count_calls(monkeypatch, block.R2Step, "pool")
    with torch.no_grad():
        model(batch)
    assert pools[0] == cfg.k  # default chunk sizes cover a whole QVHighlights batch


def test_no_fixed_maximum_length(one_thread):  # noqa: F811
    cfg = tiny_config()
    model = R2Model(cfg).eval()
    batch = batch_of([(5000, 6)], cfg, seed=1)
    with torch.inference_mode():
        out = model(batch)
        raw = model.predict(out, batch)[0]
    assert raw.saliency.shape == (5000,)
    assert torch.isfinite(out.out_class).all()
    assert raw.boundary.shape == (cfg.max_num_moment, 3)
    assert (raw.boundary[:, 1] <= 5000 / 0.5 * 1.5).all()  # windows in seconds, not positions


@pytest.mark.parametrize("chunked", [False, True])
def test_one_video_many_queries_equals_each_query_alone(monkeypatch, one_thread, chunked):  # noqa: F811
    cfg = tiny_config()
    model = perturbed(R2Model(cfg), seed=4).eval()
    samples = [sample(300, n, seed=9 + n, cfg=cfg) for n in (3, 9, 5)]  # unequal lengths
    video = samples[0].video
    if chunked:
        monkeypatch.setattr(block, "INFER_CHUNK_TOKENS", 3 * 5 * 41)
        monkeypatch.setattr(attention, "INFER_MAX_SCORES", 3 * 4 * 300 * 23)
    shared = one_video_batch(video, [s.query for s in samples], 0.5, 600.0, "v")
    with torch.inference_mode():
        together = model.predict(model(shared), shared)
        for i, s in enumerate(samples):
            alone = collate([dataclasses.replace(s, video=video)])
            (ref,) = model.predict(model(alone), alone)
            np.testing.assert_allclose(together[i].saliency, ref.saliency, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(together[i].boundary, ref.boundary, rtol=1e-5, atol=1e-4)
