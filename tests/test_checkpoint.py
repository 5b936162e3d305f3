"""Checkpoints: round trip, self-contained loading, cache refusal, atomic writes, resume state."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from train_fixtures import (
    SETTINGS,
    TINY,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
)

from r2.train.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    build_meta,
    check_cache_compatible,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from r2.train.config import QVHIGHLIGHTS
from r2.train.model import R2Model
from r2.train.resume import load_training_state, save_training_state


def _model(seed: int = 0, **overrides) -> R2Model:
    torch.manual_seed(seed)
    cfg = QVHIGHLIGHTS.model_config(video_dim=SETTINGS.video_dim, query_dim=SETTINGS.text_dim,
                                    k=SETTINGS.k, **{**TINY, **overrides})  # fmt: skip
    return R2Model(cfg)


def _meta(model: R2Model, **extra) -> dict:
    return build_meta(model.cfg, QVHIGHLIGHTS, SETTINGS, {"format_version": 1}, **extra)


def test_round_trip_needs_no_other_file(tmp_path):
    model = _model(padding_invariant=True, dropout=0.3)
    path = save_checkpoint(tmp_path / "best", model, _meta(model, epoch=3, metrics={"m": 1.5}))
    assert path == tmp_path / "best.safetensors"
    twin = json.loads((tmp_path / "best.json").read_text())
    (tmp_path / "best.json").unlink()  # the weights file alone is enough
    for ref in (path, tmp_path / "best", tmp_path):  # file, stem, run folder
        loaded, meta = load_checkpoint(ref)
        assert not loaded.training
        assert loaded.cfg == model.cfg  # config restored from the file (tuples included)
        sd = loaded.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
        assert meta["epoch"] == 3 and meta["metrics"] == {"m": 1.5}
        assert meta["cache_settings"]["fps"] == SETTINGS.fps
        assert meta["r2_version"] and meta["preset"]["name"] == "qvhighlights"
    assert twin["config"] == meta["config"]


def test_unusable_files_are_refused_with_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no r2 metadata"):
        load_checkpoint(plain)
    model = _model()
    good = save_checkpoint(tmp_path / "x", model, _meta(model))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        load_checkpoint(broken)
    meta = read_meta(good)
    meta["config"]["dims"] = 32  # weights no longer fit the stored config
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, model, meta)
    with pytest.raises(CheckpointError, match="do not match the stored model config"):
        load_checkpoint(wrong)


def test_refuses_cache_with_other_model_fps_or_fewer_layers():
    meta = _meta(_model())
    other = dataclasses.replace(SETTINGS, model_id="openai/clip-vit-large-patch14", fps=1.0,
                                k=1, model_fingerprint="sha256:" + "e" * 64)  # fmt: skip
    with pytest.raises(CheckpointMismatchError) as err:
        check_cache_compatible(meta, other)
    text = str(err.value)
    assert "model_fingerprint" in text and "fps: 0.5 (checkpoint) vs 1.0 (cache)" in text
    assert "k: the model uses 2 CLIP layers, the cache holds only 1" in text
    assert len(err.value.differences) == 3
    assert check_cache_compatible(meta, SETTINGS) == []
    # made before fingerprints: still usable, and the identity is said to rest on names
    unknown = {"model_fingerprint": None, "tokenizer_fingerprint": None}
    old = build_meta(_model().cfg, QVHIGHLIGHTS, dataclasses.replace(SETTINGS, **unknown))
    (warning,) = check_cache_compatible(old, SETTINGS)
    assert "checkpoint records no CLIP model fingerprint" in warning
    assert "can only be compared by name" in warning
    other = dataclasses.replace(SETTINGS, model_fingerprint="sha256:" + "f" * 64)
    with pytest.raises(CheckpointMismatchError, match="model_fingerprint"):
        check_cache_compatible(meta, other)  # another model under the same name
    # more layers than the model uses is fine (it takes the last K); dtype only warns
    assert check_cache_compatible(meta, dataclasses.replace(SETTINGS, k=4)) == []
    warnings = check_cache_compatible(meta, dataclasses.replace(SETTINGS, dtype="fp16"))
    assert len(warnings) == 1 and "dtype" in warnings[0]


def test_converted_weights_are_checked_on_feature_sizes(tmp_path):
    model = _model()
    path = tmp_path / "converted.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        tensors,
        str(path),
        metadata={"r2_config": json.dumps(dataclasses.asdict(model.cfg)), "source": "orig.ckpt"},
    )
    loaded, meta = load_checkpoint(path)
    assert loaded.cfg == model.cfg and meta["converted_from"] == "orig.ckpt"
    assert len(check_cache_compatible(meta, SETTINGS)) == 1  # the "unverified" warning
    with pytest.raises(CheckpointMismatchError, match="video width"):
        check_cache_compatible(meta, dataclasses.replace(SETTINGS, video_dim=768))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    path = save_checkpoint(tmp_path / "last", model, _meta(model, epoch=1))
    before = path.read_bytes()

    def killed(*args):  # the process "dies" between writing the temp file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", _model(seed=1), _meta(model, epoch=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_meta(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]


def _step(model, opt, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, SETTINGS.k * 4, generator=g)
    opt.zero_grad()
    loss = sum((p.float().mean() * x.mean()) ** 2 for p in model.parameters())
    loss.backward()
    opt.step()


def test_training_state_round_trip_continues_identically(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for i in range(3):
        _step(model, opt, i)
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    save_training_state(tmp_path / "resume.safetensors", model, opt, {"loop": {"step": 3}})
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))
    _step(model, opt, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2 = _model(seed=99)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0, weight_decay=0.5)
    info = load_training_state(tmp_path / "resume.safetensors", model2, opt2)
    assert info == {"loop": {"step": 3}}
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    assert draws[:2] == expected_draws[:2] and torch.equal(draws[2], expected_draws[2])
    _step(model2, opt2, 3)
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in expected.items())
