"""Padding: the original's dependence (default) and `padding_invariant`; finite gradients."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import batch_of, one_thread, perturbed, sample, tiny_config  # noqa: F401

from r2.train.batch import collate
from r2.train.model import R2Model

SIZES = [(21, 7), (6, 3), (13, 5)]  # (T, L): the short samples are padded in the batch


pytestmark = pytest.mark.usefixtures("one_thread")


def _per_sample(model, out, batch, i):
    """Sample i's outputs and per-sample loss terms, padding removed."""
    t = int(batch.video_mask[i].sum())
    valid = out.point_mask[i]
    terms = model.loss_terms(out, batch)
    res = {
        "video_emb": out.video_emb[i, :t],
        "query_emb": out.query_emb[i],
        "class": out.out_class[i][valid],
        "coord": out.out_coord[i][valid],
        "points": out.points[valid],
        "saliency_cos": out.saliency_cos[i, :t],
        **{f"step_cls.{j}": c[i, :t] for j, c in enumerate(out.step_cls)},
        **{f"step_q.{j}": q[i] for j, q in enumerate(out.step_query_emb)},
        **{k: terms[k][i] for k in ("cls_sum", "cls_count", "reg_sum", "reg_count", "sal_row")},
    }
    pred = model.predict(out, batch)[i]
    res.update(boundary=torch.from_numpy(pred.boundary), saliency=torch.from_numpy(pred.saliency))
    return res


def _alone_vs_batched(cfg):
    model = perturbed(R2Model(cfg)).eval()
    samples = [sample(t, n, seed=i, cfg=cfg) for i, (t, n) in enumerate(SIZES)]
    with torch.no_grad():
        batch = collate(samples)
        out = model(batch)
        batched = [_per_sample(model, out, batch, i) for i in range(len(samples))]
        alone = []
        for s in samples:
            b1 = collate([s])
            alone.append(_per_sample(model, model(b1), b1, 0))
    return batched, alone


def test_padding_invariant_outputs_and_loss_terms_equal_alone():
    """Equal up to float rounding (the batched products run in another order)."""
    batched, alone = _alone_vs_batched(tiny_config(padding_invariant=True))
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        for key in a:
            assert b[key].shape == a[key].shape, (i, key)
            torch.testing.assert_close(
                b[key].float(), a[key].float(), rtol=1e-4, atol=1e-4, msg=f"sample {i} {key}"
            )


def test_default_reproduces_the_original_padding_dependence():
    batched, alone = _alone_vs_batched(tiny_config())
    # the longest sample is not padded; the shorter ones change (spec §2.9)
    torch.testing.assert_close(batched[0]["video_emb"], alone[0]["video_emb"], rtol=1e-5, atol=1e-5)
    assert (batched[1]["video_emb"] - alone[1]["video_emb"]).abs().max() > 1e-3


def test_padding_invariant_is_the_original_for_unpadded_input():
    cfg = tiny_config()
    ref = perturbed(R2Model(cfg)).eval()
    inv = R2Model(cfg.replace(padding_invariant=True)).eval()
    inv.load_state_dict(ref.state_dict())
    b1 = collate([sample(11, 4, seed=3, cfg=cfg)])
    with torch.no_grad():
        a, b = ref(b1), inv(b1)
    assert torch.equal(a.out_class, b.out_class) and torch.equal(a.video_emb, b.video_emb)


@pytest.mark.parametrize("invariant", [False, True])
def test_gradients_finite_with_one_much_longer_video(invariant):
    """The original's saliency column softmax gives NaN gradients here (spec §3)."""
    cfg = tiny_config(padding_invariant=invariant)
    model = perturbed(R2Model(cfg)).eval()
    batch = batch_of([(40, 5), (6, 4)], cfg, seed=5)
    losses = model.losses(model(batch), batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
