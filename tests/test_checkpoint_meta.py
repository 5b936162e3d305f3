"""A checkpoint is what its metadata says: malformed metadata is refused before anything is
built, with one error naming the file and the field; tensors are checked against the config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from train_fixtures import (
    SETTINGS,
    TINY,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
)

import r2.train.checkpoint as ckpt_mod
from r2.train.checkpoint import (
    META_KEY,
    CheckpointError,
    build_meta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from r2.train.config import QVHIGHLIGHTS
from r2.train.model import R2Model


def _model() -> R2Model:
    torch.manual_seed(0)
    cfg = QVHIGHLIGHTS.model_config(video_dim=SETTINGS.video_dim, query_dim=SETTINGS.text_dim,
                                    k=SETTINGS.k, **TINY)  # fmt: skip
    return R2Model(cfg)


@pytest.fixture
def good(tmp_path):
    model = _model()
    meta = build_meta(model.cfg, QVHIGHLIGHTS, SETTINGS, epoch=2, step=10, metrics={"m": 1.0})
    return save_checkpoint(tmp_path / "good", model, meta)


def _rewrite(src, dst, meta_text: str):
    """A copy of checkpoint `src` at `dst` whose r2 metadata is `meta_text` (any JSON)."""
    from safetensors.torch import load_file

    save_file(load_file(str(src)), str(dst), metadata={META_KEY: meta_text})
    return dst


def _edit(meta: dict, path: str, value) -> dict:
    """Set (or with value=DELETE remove) the dotted key `path` of a copy of `meta`."""
    meta = json.loads(json.dumps(meta))
    *parents, last = path.split(".")
    node = meta
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return meta


DELETE = object()
# (edit of the metadata, text the error must contain besides the file name)
MALFORMED = [
    ("[1, 2]", "expected a JSON object, got list"),
    ("null", "expected a JSON object, got NoneType"),
    ('"text"', "expected a JSON object, got str"),
    ("{not json", "is not JSON"),
    (("config", DELETE), "config: missing"),
    (("preset", DELETE), "preset: missing"),
    (("cache_settings", DELETE), "cache_settings: missing"),
    (("config", [1, 2]), "config: expected an object of R2Config fields, got list"),
    (("config.dims", "16"), "config.dims: expected an integer, got '16'"),
    (("config.padding_invariant", "False"), "config.padding_invariant: expected a boolean"),
    (("config.dropout", None), "config.dropout: expected a number"),
    (("config.strides", 4), "config.strides: expected a list of integers"),
    (("config.fusion", "sum"), "config: fusion must be one of"),
    (("config.dims", -4), "config: dims must be a positive integer"),
    (("config.colour", "red"), "config.colour: unknown field"),
    (("preset.batch_size", "big"), "preset.batch_size: expected an integer"),
    (("preset.name", DELETE), "preset.name: missing"),
    (("preset.nms", "fancy"), "preset: nms must be None or one of"),
    (("preset.lr", -1.0), "preset: lr must be >= 0"),
    (("preset.extra", 1), "preset.extra: unknown field"),
    (("cache_settings.fps", "0.5"), "cache_settings.fps: expected a number"),
    (("cache_settings.mean", [0.5]), "cache_settings.mean: expected a list of 3 values"),
    (("cache_settings.model_id", DELETE), "cache_settings.model_id: missing"),
    (("cache_settings.zoom", 2), "cache_settings.zoom: unknown field"),
    (("epoch", "two"), "epoch: expected an integer"),
    (("step", -1), "step: must be >= 0"),
    (("metrics", [1]), "metrics: expected an object of numbers"),
]


@pytest.mark.parametrize("edit, needle", MALFORMED, ids=[str(m[1])[:40] for m in MALFORMED])
def test_malformed_metadata_is_one_error_naming_file_and_field(good, tmp_path, edit, needle):
    text = edit if isinstance(edit, str) else json.dumps(_edit(read_meta(good), *edit))
    bad = _rewrite(good, tmp_path / "bad.safetensors", text)
    for call in (read_meta, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            call(bad)
        message = str(err.value)
        assert message.startswith(f"{bad}: "), message
        assert needle in message, message
        assert "\n" not in message


def test_a_lying_config_allocates_nothing(good, tmp_path, monkeypatch):
    built = []

    class Guard(R2Model):  # the model the loader builds for real
        def __init__(self, cfg):
            built.append(cfg.dims)
            assert cfg.dims < 1000, "tried to allocate the model of a lying config"
            super().__init__(cfg)

    monkeypatch.setattr(ckpt_mod, "R2Model", Guard)
    bad = _rewrite(good, tmp_path / "huge.safetensors",
                   json.dumps(_edit(read_meta(good), "config.dims", 131072)))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"huge\.safetensors: weights do not match") as err:
        load_checkpoint(bad)
    assert "shape (16,) but the config says (131072,)" in str(err.value)
    assert built == []
    model, _ = load_checkpoint(good)  # the real thing still loads
    assert built == [16] and model.cfg.dims == 16


def test_missing_extra_and_mistyped_tensors_are_named(good, tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(str(good))
    meta = {META_KEY: json.dumps(read_meta(good))}
    name = sorted(tensors)[0]
    extra = {**tensors, "surprise.weight": torch.zeros(2)}
    missing = {k: v for k, v in tensors.items() if k != name}
    ints = {**tensors, name: tensors[name].to(torch.int32)}
    for tensors_, needle in ((extra, "tensor surprise.weight: not part of the configured model"),
                             (missing, f"tensor {name}: missing"),
                             (ints, f"tensor {name}: dtype I32")):  # fmt: skip
        path = tmp_path / "t.safetensors"
        save_file(tensors_, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=r"t\.safetensors") as err:
            load_checkpoint(path)
        assert needle in str(err.value)


def test_nonfinite_weights_are_refused(good, tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(str(good))
    name = next(k for k, v in tensors.items() if v.numel() > 1)
    tensors[name][0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(read_meta(good))})
    with pytest.raises(CheckpointError, match=f"NaN or infinity: {name}"):
        load_checkpoint(path)


def test_a_folder_or_garbage_is_named(tmp_path):
    folder = tmp_path / "run.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"run\.safetensors/best\.safetensors: .*not found"):
        read_meta(folder)  # a folder is a run folder
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable"):
        load_checkpoint(junk)


def test_a_run_without_validation_resolves_to_its_last_checkpoint(good, tmp_path):
    run = tmp_path / "novalrun"
    run.mkdir()
    (run / "last.safetensors").write_bytes(good.read_bytes())
    _, meta = load_checkpoint(run)
    assert meta["epoch"] == 2


def test_cli_reports_malformed_metadata_in_one_line(good, tmp_path):
    from typer.testing import CliRunner

    from r2.cli import app

    bad = _rewrite(good, tmp_path / "bad.safetensors",
                   json.dumps(_edit(read_meta(good), "config.dims", "16")))  # fmt: skip
    anno = tmp_path / "a.jsonl"
    anno.write_text('{"qid": 1, "query": "q", "vid": "v", "duration": 10}\n')
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(bad), "--cache",
                                      str(tmp_path / "c.h5"), "--anno", str(anno),
                                      "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"error: {bad}: invalid metadata: config.dims: expected an integer" in result.output
