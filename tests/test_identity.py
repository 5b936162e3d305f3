"""Models are identified by what they are; query features follow their text; no network hangs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from e2e_fixtures import QUERIES, make_setup
from typer.testing import CliRunner

from r2.api import R2Predictor
from r2.cache import CacheMismatchError, FeatureCache
from r2.cli import app
from r2.extract import extract
from r2.extract.encode import ClipEncoder, ModelLoadError
from r2.extract.tiny_clip import make_tiny_clip
from r2.train.checkpoint import read_meta, save_checkpoint
from r2.train.data import prepare_items, read_annotations
from r2.train.feature_identity import StaleFeaturesError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("identity"))


def _settings(model: str):
    return ClipEncoder.load(model, device="cpu", towers=()).settings


def test_a_local_model_is_its_files_not_the_string(tmp_path, monkeypatch):
    folder = make_tiny_clip(tmp_path / "models" / "tiny")
    ref = _settings(str(folder))
    assert ref.model_id == str(folder.resolve()) and ref.model_fingerprint.startswith("sha256:")
    assert ref.tokenizer_fingerprint.startswith("clean1:sha256:")
    monkeypatch.chdir(tmp_path / "models")
    for name in ("tiny", "tiny/", "./tiny//", str(folder) + "/", "../models/tiny"):
        s = _settings(name)
        assert (s.model_id, s.model_fingerprint, s.tokenizer_fingerprint) == (
            ref.model_id, ref.model_fingerprint, ref.tokenizer_fingerprint), name  # fmt: skip
    moved = shutil.copytree(folder, tmp_path / "elsewhere")
    s = _settings(str(moved))
    assert s.model_fingerprint == ref.model_fingerprint and s.model_id != ref.model_id
    make_tiny_clip(folder, seed=1)  # another model under the same path
    assert _settings("tiny").model_fingerprint != ref.model_fingerprint
    vocab = json.loads((moved / "vocab.json").read_text())
    vocab["zz"] = len(vocab)
    (moved / "vocab.json").write_text(json.dumps(vocab))
    assert _settings(str(moved)).tokenizer_fingerprint != ref.tokenizer_fingerprint


def test_a_cache_accepts_the_same_model_by_any_path_and_refuses_another(tmp_path, monkeypatch):
    folder = make_tiny_clip(tmp_path / "tiny")
    anno = tmp_path / "q.jsonl"
    anno.write_text(json.dumps({"qid": 1, "query": "a man cooks"}) + "\n")
    cache = tmp_path / "c.h5"
    monkeypatch.chdir(tmp_path)
    extract([], cache, [anno], model="tiny")  # a relative path ...
    with FeatureCache(cache) as c:
        assert c.settings.model_id == str(folder.resolve())  # ... recorded absolute
    moved = tmp_path / "moved"
    folder.rename(moved)
    again = extract([], cache, [anno], model=str(moved) + "/")  # same files elsewhere: same
    assert again.queries_cached == 1 and again.queries_done == 0
    make_tiny_clip(tmp_path / "tiny", seed=1)  # a different model at the original path
    with pytest.raises(CacheMismatchError, match="model_fingerprint"):
        extract([], cache, [anno], model="tiny")


def test_changed_query_text_is_an_error_until_re_extracted(setup, tmp_path):
    rows = [json.loads(line) for line in setup["anno"].read_text().splitlines()]
    rows[1]["query"] = "a completely different question"
    changed = tmp_path / "val.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FeatureCache(setup["cache"]) as c, pytest.raises(StaleFeaturesError) as err:
        prepare_items(read_annotations(changed), c, "qvhighlights", train=False)
    message = str(err.value)
    assert f"{changed}:2: qid 1" in message and "r2 extract" in message
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--checkpoint", str(setup["run"]), "--cache",
                                 str(setup["cache"]), "--anno", str(changed)])  # fmt: skip
    assert result.exit_code == 2 and f"{changed}:2: qid 1" in result.output, result.output
    cache = tmp_path / "c.h5"
    shutil.copy(setup["cache"], cache)
    clip = str(Path(setup["run"]).parent / "clip")
    summary = extract([], cache, [changed], model=clip)  # re-encodes exactly the changed one
    assert (summary.queries_done, summary.queries_cached) == (1, 1)
    with FeatureCache(cache) as c:
        assert c.query_record("1").text == rows[1]["query"]
        assert len(prepare_items(read_annotations(changed), c, "qvhighlights", train=False)) == 2


def test_the_predictor_finds_its_model_from_anywhere_and_verifies_a_moved_one(
    setup, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # another working directory
    R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    clip = Path(setup["run"]).parent / "clip"
    moved = tmp_path / "clip-moved"
    shutil.copytree(clip, moved)
    hidden = clip.rename(clip.with_name("clip-hidden"))
    try:
        with pytest.raises(ModelLoadError, match=r"is not there .* pass --clip"):
            R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
        predictor = R2Predictor.from_pretrained(setup["ckpt"], device="cpu", clip_model=moved)
        assert predictor.encoder.settings.model_id == str(moved.resolve())
        result = CliRunner().invoke(
            app,
            [
                "predict",
                str(setup["video"]),
                QUERIES[0],
                "--checkpoint",
                str(setup["run"]),
                "--clip",
                str(moved),
            ],
        )
        assert result.exit_code == 0, result.output
        other = make_tiny_clip(tmp_path / "other", seed=3)
        with pytest.raises(ValueError, match="model_fingerprint"):
            R2Predictor.from_pretrained(setup["ckpt"], device="cpu", clip_model=str(other))
    finally:
        hidden.rename(clip)


def test_checkpoints_without_fingerprints_load_with_a_warning(setup, tmp_path, caplog):
    meta = read_meta(setup["ckpt"])
    old = dict(meta["cache_settings"], model_fingerprint=None, tokenizer_fingerprint=None)
    for key in ("model_fingerprint", "tokenizer_fingerprint"):
        old.pop(key)  # as r2 0.1.0 wrote them
    path = save_checkpoint(tmp_path / "old", setup["model"], {**meta, "cache_settings": old})
    with caplog.at_level("WARNING"):
        R2Predictor.from_pretrained(path, device="cpu")
    assert "can only be compared by name" in caplog.text
    assert dataclasses.is_dataclass(R2Predictor.from_pretrained(path).encoder.settings)


HUB = """
    import logging, time
    logging.basicConfig(level=logging.WARNING)
    from r2.extract.encode import ClipEncoder, ModelLoadError
    began = time.monotonic()
    try:
        enc = ClipEncoder.load(sys.argv[1], device="cpu", towers=("vision",))
        print("loaded", enc.settings.revision)
    except ModelLoadError as err:
        print("ModelLoadError:", err)
    print(f"seconds {time.monotonic() - began:.2f}")
"""


def _hub_cache(root: Path, tiny: Path) -> None:
    """`tiny` laid out as the HuggingFace cache holds the hub model r2test/tiny."""
    repo = root / "models--r2test--tiny"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(tiny.iterdir())):
        shutil.copy(file, repo / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_an_unreachable_hub_costs_one_quick_attempt(tmp_path):
    _hub_cache(tmp_path / "hub", make_tiny_clip(tmp_path / "tiny"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "hub"))
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    code += textwrap.dedent(HUB)
    for model, expect in (("r2test/absent", "cannot be reached"), ("r2test/tiny", "loaded")):
        began = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        seconds = time.monotonic() - began
        assert expect in out.stdout, out.stdout + out.stderr
        assert "Retrying" not in out.stderr and out.stderr.count("127.0.0.1:9") <= 1
        assert seconds < 20, seconds  # transformers alone retried for 24 s per file
        print(f"{model}: {out.stdout.splitlines()[-1]} ({seconds:.1f} s with interpreter start)")
    assert f"loaded {COMMIT}" in out.stdout and "using the cached copy" in out.stderr
