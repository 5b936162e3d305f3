"""Official checkpoints by name (r2.zoo): a fake Hugging Face cache, no network."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner
from zoo_fixtures import FAKE_COMMIT, original_state_dict, write_fake_hub_file

from r2.cli import app
from r2.train.checkpoint import load_checkpoint, read_meta
from r2.train.config import QVHIGHLIGHTS
from r2.train.model import R2Model
from r2.zoo import (
    ZOO,
    ZooError,
    cache_dir,
    converted_path,
    drop_path,
    fetch,
    get_entry,
    sha256_file,
)

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "spec", "model_zoo.json")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty r2 cache and Hugging Face cache, offline."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("R2_CACHE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _original(seed: int = 0) -> tuple[R2Model, dict]:
    torch.manual_seed(seed)
    model = R2Model(QVHIGHLIGHTS.model_config(video_dim=48, query_dim=32, dims=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, {"meta": {"epoch": 30}, "state_dict": original_state_dict(model)}


def test_the_zoo_is_the_specs_list():
    if not os.path.isfile(SPEC):
        pytest.skip(f"spec not found at {SPEC}")
    with open(SPEC) as fh:
        spec = json.load(fh)["checkpoints"]
    assert set(spec) == set(ZOO)
    for name, row in spec.items():
        entry = ZOO[name]
        assert (entry.repo_id, entry.filename, entry.log) == (
            row["repo_id"], row["filename"], row["log"])  # fmt: skip


def test_converts_once_from_the_hub_cache_and_records_the_source(env):
    model, payload = _original()
    src = write_fake_hub_file(env / "hub", get_entry("qvhighlights"), payload)
    path = fetch("official:qvhighlights")
    assert path == env / "xdg" / "r2" / "official" / "qvhighlights.safetensors"
    meta = read_meta(path)
    source = meta["source"]
    assert source["sha256"] == sha256_file(src) and source["commit"] == FAKE_COMMIT
    assert source["filename"] == "checkpoints/r2_tuning_qvhighlights-ed516355.pth"
    assert source["name_hash_matches"] is False  # a generated file: warned, not refused
    loaded, _ = load_checkpoint("official:qvhighlights")  # the hook every command uses
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    stamp = path.stat().st_mtime_ns
    src.unlink()  # converted once: the original is no longer needed
    assert fetch("qvhighlights") == path and path.stat().st_mtime_ns == stamp


def test_offline_with_nothing_cached_says_what_to_download_and_where(env):
    with pytest.raises(ZooError) as err:
        fetch("official:tacos")
    entry = get_entry("tacos")
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg
    assert entry.url in msg and str(drop_path(entry)) in msg
    result = CliRunner().invoke(app, ["predict", __file__, "q", "-c", "official:tacos"])
    assert result.exit_code == 2 and entry.url in result.output
    assert "Traceback" not in result.output


def test_a_file_put_in_the_drop_folder_is_used(env, monkeypatch):
    monkeypatch.setenv("R2_CACHE_DIR", str(env / "mine"))
    _, payload = _original(1)
    entry = get_entry("charades")
    drop_path(entry).parent.mkdir(parents=True)
    torch.save(payload, drop_path(entry))
    path = fetch("official:charades")
    assert path == env / "mine" / "official" / "charades.safetensors" == converted_path(entry)
    assert cache_dir() == env / "mine"
    meta = read_meta(path)
    assert meta["preset"]["name"] == "charades" and meta["cache_settings"]["fps"] == 1.0


class _Payload:  # not allow-listed: weights-only loading refuses to unpickle it
    pass


def test_refuses_to_unpickle_a_hostile_file(env):
    write_fake_hub_file(env / "hub", get_entry("ego4d"), {"x": _Payload()})
    with pytest.raises(ZooError, match="weights-only"):
        fetch("official:ego4d")
    assert not converted_path(get_entry("ego4d")).exists()


def test_unknown_names_list_the_known_ones(env):
    with pytest.raises(ZooError, match="qvhighlights"):
        fetch("official:qvhighlight")


def test_models_lists_cached_and_not_cached(env):
    _, payload = _original()
    write_fake_hub_file(env / "hub", get_entry("qvhighlights"), payload)
    write_fake_hub_file(env / "hub", get_entry("tvsum_bk"), payload)
    fetch("qvhighlights")
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[2] for line in result.output.splitlines()[1:21]}
    assert len(lines) == 20
    assert lines["official:qvhighlights"] == "cached"
    assert lines["official:tvsum_bk"] == "downloaded" and lines["official:tacos"] == "not"


def test_from_pretrained_takes_official_names(env, tmp_path):
    from r2.api import R2Predictor
    from r2.extract.tiny_clip import make_tiny_clip

    _, payload = _original()
    write_fake_hub_file(env / "hub", get_entry("qvhighlights"), payload)
    clip = make_tiny_clip(tmp_path / "clip")  # not the released ViT-B/32: must be refused
    with pytest.raises(ValueError, match="image_size: checkpoint 224"):
        R2Predictor.from_pretrained("official:qvhighlights", device="cpu", clip_model=str(clip))
    assert converted_path(get_entry("qvhighlights")).is_file()  # it got that far
