"""Converted datasets train and evaluate: label rules of the released pipeline, end to end.

TVSum / YouTube: per-clip labels and cached clips that differ by fewer than 5 clips are
both cut to the shorter (the released pipeline asserts < 5 and cuts); a larger gap makes
the video unusable for training (skipped with a count).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from train_fixtures import TINY, make_cache, write_jsonl
from typer.testing import CliRunner

from r2.cache import FeatureCache
from r2.cli import app
from r2.train import data as D

runner = CliRunner()


def _tvsum_rows(n_clips: list[int]) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "qid": f"v{i}",
            "vid": f"v{i}",
            "query": f"title {i}",
            "domain": "BK",
            "duration": 2.0 * n,
            "label": rng.integers(1, 6, (n, 20)).tolist(),
        }
        for i, n in enumerate(n_clips)
    ]


def test_tvsum_labels_and_clips_are_cut_to_the_shorter(tmp_path, caplog):
    rows = _tvsum_rows([10, 10, 10])
    cached = [
        {**r, "duration": r["duration"] + extra} for r, extra in zip(rows, (2, 0, 12), strict=True)
    ]
    cache = make_cache(tmp_path / "c.h5", cached)  # T = 11, 10, 16 clips
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    with FeatureCache(cache) as fc, caplog.at_level(logging.INFO):
        items = D.prepare_items(D.read_annotations(path), fc, "tvsum", train=True)
        assert [(it.anno.qid, it.n_clips, len(it.saliency)) for it in items] == [
            ("v0", 10, 10),
            ("v1", 10, 10),
        ]
        sample = D.GroundingDataset(items, fc, 0.5, 2, train=True)[0]
        assert sample.video.shape[0] == 10 and sample.saliency.shape[0] == 10
    assert "1 videos: per-clip labels and cached clips differ by fewer than 5" in caplog.text
    assert "skipped 1 queries with unusable labels" in caplog.text and "10 per-clip" in caplog.text


def test_converted_tvsum_trains_and_evaluates(testdata, tmp_path):
    from r2.data.tvsum import convert_tvsum

    result = convert_tvsum([testdata / "datasets" / "raw" / "tvsum"], tmp_path / "tvsum")
    rows = [r for split in ("train", "val") for r in D.read_annotations(result.files[split])]
    cache = make_cache(tmp_path / "tvsum.h5", [a.data for a in rows])  # T = round(length / 2)
    run = tmp_path / "run"
    config = [x for k, v in TINY.items() for x in ("--config", f"{k}={v}")]
    train = runner.invoke(
        app,
        [
            "train",
            "--cache",
            str(cache),
            "--train-anno",
            str(result.files["train"]),
            "--val-anno",
            str(result.files["val"]),
            "--preset",
            "tvsum",
            "--out",
            str(run),
            "--epochs",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            *config,
        ],
    )
    assert train.exit_code == 0, train.output
    evaluated = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(run),
            "--cache",
            str(cache),
            "--anno",
            str(result.files["val"]),
            "--device",
            "cpu",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "TVSum: 10 queries scored" in evaluated.output
    assert "TVSum val: paper Table 4 layout" in evaluated.output
    paper = next(x for x in evaluated.output.splitlines() if "R²-Tuning (paper)" in x)
    assert paper.split()[-11:] == [
        "85.00",
        "85.90",
        "91.00",
        "81.70",
        "88.80",
        "87.40",
        "78.10",
        "89.20",
        "90.30",
        "74.70",
        "85.20",
    ]


@pytest.mark.parametrize("split", ["test", "val"])
def test_qvhighlights_eval_prints_the_paper_table(testdata, tmp_path, split):
    import json

    gt = (
        testdata
        / "qvhighlights"
        / f"highlight_{split}_{'with_gt' if split == 'test' else 'release'}.jsonl"
    )
    preds = tmp_path / "p.jsonl"
    with preds.open("w") as fh:
        for line in gt.read_text().splitlines():
            row = json.loads(line)
            sal = [0.0] * int(row["duration"] / 2)
            for clip, scores in zip(row["relevant_clip_ids"], row["saliency_scores"], strict=True):
                sal[clip] = float(sum(scores))
            wins = [[s, e, 1.0 - 0.1 * i] for i, (s, e) in enumerate(row["relevant_windows"])]
            fh.write(
                json.dumps(
                    {"qid": row["qid"], "pred_relevant_windows": wins, "pred_saliency_scores": sal}
                )
                + "\n"
            )
    out = runner.invoke(app, ["eval", "--pred", str(preds), "--gt", str(gt)])
    assert out.exit_code == 0, out.output
    table = "Table 1" if split == "test" else "Table 9"
    assert f"QVHighlights {split}: paper {table} layout" in out.output
    header = next(x for x in out.output.splitlines() if "MR R1@0.5" in x).split()
    assert header == [
        "MR",
        "R1@0.5",
        "R1@0.7",
        "mAP@0.5",
        "mAP@0.75",
        "Avg.",
        "mAP",
        "HD",
        "mAP",
        "HIT@1",
    ]
    paper = next(x for x in out.output.splitlines() if "R²-Tuning (paper)" in x).split()[2:]
    if split == "test":
        assert paper == ["68.03", "49.35", "69.04", "47.56", "46.17", "40.75", "64.20"]
    ours = next(x for x in out.output.splitlines() if "this evaluation" in x).split()[2:]
    assert ours[:2] == ["100.00", "100.00"]  # R1 of the ground truth itself
