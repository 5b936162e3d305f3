"""bfloat16 CLIP encoding for prediction (`R2Predictor.from_pretrained(clip_dtype="bf16")`,
`r2 predict --clip-dtype bf16`): an option; the default stays the training features' dtype."""

from __future__ import annotations

import json

import numpy as np
import pytest
from e2e_fixtures import make_setup
from typer.testing import CliRunner

from r2.api import R2Predictor
from r2.cli import app


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("clip_bf16"))


def test_default_is_the_training_features_dtype_and_bf16_is_close(setup):
    default = R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    fast = R2Predictor.from_pretrained(setup["ckpt"], device="cpu", clip_dtype="bf16")
    assert default.encoder.settings.dtype == "fp32"  # what the cache was extracted with
    assert fast.encoder.settings.dtype == "bf16"
    va, vb = default.encode_video(setup["video"]), fast.encode_video(setup["video"])
    a, b = va.features.astype(np.float64), vb.features.astype(np.float64)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 0.03  # bf16 rounding (~1% measured)
    pa, pb = (p.predict(v, "a man opens the fridge") for p, v in ((default, va), (fast, vb)))
    assert np.abs(pa.saliency - pb.saliency).max() < 0.05
    assert abs(pa.moments[0].score - pb.moments[0].score) < 0.05


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_clip_dtype(setup, tmp_path):
    out = tmp_path / "r.json"
    result = _run("predict", setup["video"], "a dog", "-c", setup["run"], "--clip-dtype", "bf16",
                  "--json", out, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())
    bad = _run("predict", setup["video"], "a dog", "-c", setup["run"], "--clip-dtype", "fp64")
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --clip-dtype must be one of fp32, bf16, fp16")
    assert "--clip-dtype" in _run("predict", "--help").output
