"""The options that reproduce the paper's analyses build, train and do what they claim."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import K_FEATURES, batch_of, one_thread, perturbed, tiny_config  # noqa: F401

from r2.train.config import get_preset
from r2.train.model import R2Model

SIZES = [(12, 4), (9, 6)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _train_step(cfg, batch=None):
    model = perturbed(R2Model(cfg)).train()
    batch = batch or batch_of(SIZES, cfg)
    losses = model.losses(model(batch), batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    return model, losses


def test_qvhighlights_parameter_count():
    assert _n_params(R2Model()) == 2_836_242


@pytest.mark.parametrize(
    "changes",
    [
        dict(fusion="single"),
        dict(fusion="mean"),
        dict(direction="forward"),
        dict(shared_block=False),
        dict(attention_order=("self", "cross")),
        dict(temporal_layers=3),
        dict(k=2),
        dict(k=1),
        dict(padding_invariant=True),
        dict(inplace_relu=False),
        dict(loss_video_cal_weight=0.0),
        dict(loss_layer_cal_weight=0.0, loss_video_cal_weight=0.0),
    ],
)
def test_variant_trains(changes):
    _train_step(tiny_config(**changes))


def test_calibration_losses_can_be_switched_off():
    _, losses = _train_step(tiny_config(loss_video_cal_weight=0.0))
    assert "loss_video_cal" not in losses and "loss_layer_cal" in losses
    _, losses = _train_step(tiny_config(loss_layer_cal_weight=0.0))
    assert "loss_layer_cal" not in losses and "loss_video_cal" in losses


def test_parameter_sharing_and_layers_change_the_parameter_count():
    base = _n_params(R2Model(tiny_config()))
    step = _n_params(R2Model(tiny_config()).block.steps[0])
    assert _n_params(R2Model(tiny_config(shared_block=False))) == base + 3 * step
    layer = _n_params(R2Model(tiny_config()).block.steps[0].temporal.layers[0])
    assert _n_params(R2Model(tiny_config(temporal_layers=3))) == base + 2 * layer
    single = R2Model(tiny_config(fusion="single"))
    assert not hasattr(single.block, "gate") and single.block.scale.numel() == 1


def _layers_used(cfg):
    """Feature layers (0 = first stored) each step's query_map receives, in step order."""
    model = perturbed(R2Model(cfg)).eval()
    batch = batch_of(SIZES, cfg)
    seen = []
    for step in model.block.steps:
        step.query_map.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(batch)
    q = batch.query.float()
    return [[j for j in range(K_FEATURES) if torch.equal(x, q[:, :, j])] for x in seen], seen, q


def test_reversed_goes_deepest_first_and_uses_the_last_k_layers():
    assert _layers_used(tiny_config())[0] == [[3], [2], [1], [0]]
    assert _layers_used(tiny_config(direction="forward"))[0] == [[0], [1], [2], [3]]
    assert _layers_used(tiny_config(k=2))[0] == [[3], [2]]
    assert _layers_used(tiny_config(fusion="single", k=3))[0] == [[1]]  # the K-th from the end
    _, seen, q = _layers_used(tiny_config(fusion="mean", k=2))
    torch.testing.assert_close(seen[0], q[:, :, 2:].mean(2))


def test_unused_layers_are_not_read():
    cfg = tiny_config(k=2)
    model = perturbed(R2Model(cfg)).eval()
    batch = batch_of(SIZES, cfg)
    batch.video[:, :, :2] = float("nan")  # the first two stored layers are not among the last 2
    batch.query[:, :, :2] = float("nan")
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out.out_class).all()


def test_options_change_the_function():
    cfg = tiny_config()
    batch = batch_of(SIZES, cfg)
    ref = perturbed(R2Model(cfg)).eval()
    with torch.no_grad():
        base = ref(batch).out_class
        for changes in (
            dict(direction="forward"),
            dict(attention_order=("self", "cross")),
            dict(inplace_relu=False),
        ):
            other = R2Model(cfg.replace(**changes)).eval()
            other.load_state_dict(ref.state_dict())
            assert (other(batch).out_class - base).abs().max() > 1e-4, changes


@pytest.mark.parametrize("name", ["youtube", "tvsum"])
def test_highlight_presets_train_on_saliency(name):
    cfg = get_preset(name).model_config(
        **{
            k: v
            for k, v in tiny_config().__dict__.items()
            if k in ("video_dim", "query_dim", "dims", "heads")
        }
    )
    assert cfg.strides == (1,) and not cfg.use_tef and not cfg.coord_head
    model, losses = _train_step(cfg, batch_of(SIZES, cfg))
    assert set(losses) == {"loss_cls", "loss_sal", "loss_video_cal", "loss_layer_cal"}
    batch = batch_of(SIZES, cfg)
    with torch.no_grad():
        out = model.eval()(batch)
        pred = model.predict(out, batch)
    assert pred[0].boundary is None and pred[0].saliency.shape == (12,)
    torch.testing.assert_close(
        torch.from_numpy(pred[1].saliency),  # class score alone
        out.out_class[1, :9].sigmoid(),
    )
