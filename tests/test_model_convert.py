"""Importing checkpoints of the original implementation (convert.py, `r2 convert`)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from r2.cli import app
from r2.train.convert import (
    ConvertError,
    config_from_official,
    load_official_state_dict,
    read_state_dict,
    rename_key,
)
from r2.train.model import R2Model


@pytest.fixture(scope="module")
def official(testdata):
    return load_file(str(testdata / "reference" / "weights.safetensors"))


def test_every_official_key_has_a_name():
    assert rename_key("adapter.tem.cross_att.m.weight") == (
        "block.steps.0.temporal.layers.0.cross_att.out.weight"
    )
    assert rename_key("pyramid.blocks.3.13.bias") == "pyramid.levels.3.2.norm.bias"
    assert rename_key("pyramid.blocks.2.4.weight") is None  # a ReLU has no parameters
    assert rename_key("class_head.module.3.bias") == "class_head.conv2.bias"
    assert rename_key("coef") == "coord_scale"
    assert rename_key("adapter.something_new") is None


def test_loads_all_83_official_keys(official):
    assert len(official) == 83
    cfg = config_from_official(official)
    assert (cfg.dims, cfg.k, cfg.video_dim, cfg.use_tef, cfg.strides) == (
        256,
        4,
        768,
        True,
        (1, 2, 4, 8),
    )
    model = R2Model(cfg)
    load_official_state_dict(model, official)
    ours = model.state_dict()
    for key, value in official.items():
        if key != "loss._loss_sal.scale":
            assert torch.equal(ours[rename_key(key)], value), key


def test_refuses_unknown_missing_and_misshaped_keys(official):
    bad = dict(official)
    bad["adapter.extra.weight"] = torch.zeros(3)
    del bad["adapter.gate"], bad["pooling.att.weight"]
    bad["coef"] = torch.ones(5)
    with pytest.raises(ValueError) as err:
        load_official_state_dict(R2Model(), bad)
    msg = str(err.value)
    assert "adapter.extra.weight" in msg and "block.gate" in msg
    assert "query_pool.att.weight" in msg and "coef: (5,)" in msg


def test_refuses_a_different_saliency_temperature(official):
    bad = dict(official, **{"loss._loss_sal.scale": torch.tensor([math.log(1 / 0.05)])})
    with pytest.raises(ValueError, match="temperature"):
        load_official_state_dict(R2Model(), bad)


def test_reads_torch_checkpoints_weights_only(official, tmp_path):
    wrapped = {"meta": {"epoch": 30}, "state_dict": {f"module.{k}": v for k, v in official.items()}}
    torch.save(wrapped, tmp_path / "epoch_30.pth")
    sd = read_state_dict(tmp_path / "epoch_30.pth")
    assert set(sd) == set(official)
    torch.save({"model": dict(official)}, tmp_path / "model.pth")
    assert set(read_state_dict(tmp_path / "model.pth")) == set(official)


class _Payload:  # not allow-listed: weights-only loading must refuse to unpickle it
    pass


def test_refuses_pickled_objects(tmp_path):
    torch.save({"state_dict": {"coef": torch.ones(4)}, "evil": _Payload()}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="weights-only"):
        read_state_dict(tmp_path / "x.pth")
    with pytest.raises(ConvertError, match=r"missing\.pth: checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_cli_convert_round_trip(official, tmp_path):
    src = tmp_path / "official.safetensors"
    save_file(dict(official), str(src))
    dst = tmp_path / "out" / "r2.safetensors"
    result = CliRunner().invoke(app, ["convert", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "2,836,242 parameters" in result.output
    model = R2Model()
    model.load_state_dict(load_file(str(dst)))
    assert torch.equal(model.block.scale, official["adapter.scale"])
    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in official.items() if k != "adapter.gate"}, str(bad))
    result = CliRunner().invoke(app, ["convert", str(bad), str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "block.gate" in result.output
