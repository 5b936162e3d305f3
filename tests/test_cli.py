"""`r2 predict` and `r2 eval --checkpoint` as a user runs them (typer's test runner)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from e2e_fixtures import N_CLIPS, QUERIES, make_setup
from typer.testing import CliRunner

from r2.api import R2Predictor
from r2.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBMISSION_KEYS = {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("cli"))


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_predict_several_queries_encodes_once_and_writes_plots_and_json(
    setup, tmp_path, monkeypatch
):
    calls = []
    encode = R2Predictor.encode_video

    def counted(self, *args, **kwargs):
        calls.append(args)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(R2Predictor, "encode_video", counted)
    plot, out = tmp_path / "p.png", tmp_path / "res" / "r.json"
    result = _run("predict", setup["video"], *QUERIES, "--checkpoint", setup["run"],
                  "--top", 2, "--plot", plot, "--json", out, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # one encoding for both queries
    for i, query in enumerate(QUERIES, 1):
        assert repr(query) in result.output
        assert (tmp_path / f"p-{i}.png").read_bytes()[:8] == PNG_MAGIC
    rows = json.loads(out.read_text())
    assert [r["query"] for r in rows] == QUERIES
    for r in rows:
        assert 1 <= len(r["moments"]) <= 2 and r["fps"] == 0.5
        assert all(0 <= s < e <= r["duration"] and 0 < c <= 1 for s, e, c in r["moments"])
        sal = np.asarray(r["saliency"])
        assert sal.shape == (N_CLIPS,) and sal.min() >= 0 and sal.max() <= 1
    table = result.output.split(repr(QUERIES[0]))[1].split(repr(QUERIES[1]))[0]
    ranks = [line.split()[0] for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert ranks == ["1", "2"]


def test_predict_one_query_plots_to_the_given_path(setup, tmp_path):
    plot = tmp_path / "one.png"
    result = _run("predict", setup["video"], QUERIES[0], "-c", setup["ckpt"], "--plot", plot,
                  "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_predict_reports_a_damaged_video_and_can_use_its_decodable_part(setup, testdata):
    damaged = testdata / "videos" / "corrupt" / "decord_corrupted.mp4"
    result = _run("predict", damaged, QUERIES[0], "-c", setup["run"], "--device", "cpu")
    assert result.exit_code == 2
    assert f"error: {damaged}" in result.output and "--allow-partial" in result.output
    result = _run("predict", damaged, QUERIES[0], "-c", setup["run"], "--device", "cpu",
                  "--allow-partial")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "is damaged; using its first" in result.output


def test_predict_reports_a_missing_checkpoint(setup, tmp_path):
    result = _run("predict", setup["video"], QUERIES[0], "-c", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "checkpoint not found" in result.output


def test_eval_checkpoint_writes_submission_and_metrics(setup, tmp_path):
    out = tmp_path / "eval_val"
    result = _run("eval", "--checkpoint", setup["run"], "--cache", setup["cache"],
                  "--anno", setup["anno"], "--out", out, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in rows] == [0, 1]
    assert all(set(r) == SUBMISSION_KEYS for r in rows)
    assert all(len(r["pred_saliency_scores"]) == N_CLIPS for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "Moment retrieval" in result.output and "R1@0.5" in result.output
    rescored = _run("eval", "--pred", out / "predictions.jsonl", "--gt", setup["anno"],
                    "--out", tmp_path / "m.json")  # fmt: skip
    assert rescored.exit_code == 0, rescored.output
    assert json.loads((tmp_path / "m.json").read_text()) == metrics  # the same scoring


def test_eval_checkpoint_on_a_test_split_writes_only_the_submission(setup, tmp_path):
    out = tmp_path / "eval_test"
    result = _run("eval", "--checkpoint", setup["run"], "--cache", setup["cache"],
                  "--anno", setup["test_anno"], "--out", out, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no ground truth" in result.output
    assert len((out / "predictions.jsonl").read_text().splitlines()) == len(QUERIES)
    assert not (out / "metrics.json").exists()
