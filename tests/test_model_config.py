"""R2Config validation and the per-dataset presets (spec §5)."""

from __future__ import annotations

import dataclasses

import pytest

from r2.train.config import PRESETS, R2Config, TrainPreset, get_preset


def test_defaults_are_the_released_qvhighlights_model():
    c = R2Config()
    assert (c.dims, c.k, c.strides, c.heads, c.ffn_ratio, c.dropout, c.droppath) == (
        256,
        4,
        (1, 2, 4, 8),
        8,
        4,
        0.5,
        0.1,
    )
    assert (c.loss_cls_weight, c.loss_reg_weight, c.loss_sal_weight) == (1.0, 0.2, 0.1)
    assert (c.loss_video_cal_weight, c.loss_layer_cal_weight, c.temperature) == (0.1, 0.1, 0.07)
    assert c.focal_alpha is None and c.focal_gamma == 2.0 and c.sample_radius == 1.5
    assert (c.fusion, c.direction, c.shared_block, c.attention_order) == (
        "recurrent",
        "reversed",
        True,
        ("cross", "self"),
    )
    assert c.inplace_relu and not c.padding_invariant and c.max_num_moment == 50


def test_every_field_is_documented():
    import inspect

    source = inspect.getsource(R2Config)
    for f in dataclasses.fields(R2Config):
        after = source.split(f"    {f.name}:", 1)[1].split("\n", 2)[1]
        assert after.strip().startswith('"""'), f"{f.name} has no docstring"


def test_validation_reports_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        R2Config(
            dims=30,
            heads=8,
            k=0,
            fusion="sum",
            dropout=1.5,
            strides=(2, 3),
            attention_order=("cross", "cross"),
            saliency_terms=("diag",),
        )
    msg = str(err.value)
    for needle in (
        "dims (30) must be divisible by heads",
        "k must be a positive integer",
        "fusion must be one of",
        "dropout must be in [0, 1)",
        "strides must start with 1",
        "powers of two",
        "attention_order",
        "saliency_terms",
    ):
        assert needle in msg, needle


def test_replace_revalidates():
    assert R2Config().replace(k=2).k == 2
    with pytest.raises(ValueError, match="temperature"):
        R2Config().replace(temperature=0)


SPEC_TABLE = {  # spec §5: fps, batch, lr, epochs, drop, warm-up, dropout, sal weight, nms, unit
    "qvhighlights": (0.5, 128, 5e-4, 30, 20, 500, 0.5, 0.1, "normal", 2.0, 5.0),
    "ego4d": (0.5, 32, 2.5e-4, 30, 20, 500, 0.3, 0.1, "linear", None, 5.0),
    "charades": (1.0, 32, 2.5e-4, 50, 30, 500, 0.35, 0.01, "linear", 0.1, 5.0),
    "tacos": (0.5, 32, 2.5e-4, 100, 50, 500, 0.5, 0.05, "linear", None, 5.0),
    "youtube": (None, 4, 5e-4, 200, None, 50, 0.5, 0.1, None, None, None),
    "tvsum": (0.5, 4, 5e-4, 500, None, 50, 0.5, 0.1, None, None, None),
}


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_presets_follow_the_spec_table(name):
    p = get_preset(name)
    got = (
        p.fps,
        p.batch_size,
        p.lr,
        p.epochs,
        p.lr_drop_epoch,
        p.warmup_iters,
        p.dropout,
        p.loss_sal_weight,
        p.nms,
        p.unit,
        p.min_video_len,
    )
    assert got == SPEC_TABLE[name]
    assert (p.weight_decay, p.warmup_ratio, p.grad_clip, p.lr_drop_factor) == (
        1e-4,
        0.001,
        35.0,
        0.1,
    )
    cfg = p.model_config()
    assert cfg.dropout == p.dropout and cfg.loss_sal_weight == p.loss_sal_weight
    if name in ("youtube", "tvsum"):
        assert cfg.strides == (1,) and not cfg.use_tef and not cfg.coord_head
        assert cfg.saliency_terms == ("row",) and cfg.cls_loss == "bce"
        assert not cfg.merge_cls_sal and len(p.domains) == (6 if name == "youtube" else 10)
    else:
        assert cfg.strides == (1, 2, 4, 8) and cfg.use_tef and cfg.coord_head
    assert p.dataset_repeat == (4 if name == "qvhighlights" else 1)


def test_get_preset_names():
    assert get_preset("QVHighlights") is PRESETS["qvhighlights"]
    assert get_preset("charades-sta").name == "charades"
    with pytest.raises(KeyError, match="known: qvhighlights"):
        get_preset("kinetics")
    assert get_preset("tacos").model_config(k=2).k == 2
    assert isinstance(get_preset("tvsum"), TrainPreset)
