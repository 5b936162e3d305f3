"""Every benchmark end to end from the feature release: import -> train -> eval with its metric.

One test per dataset on a tiny release generated in the documented layout (the real shapes:
(T, 4, 50, 768) and (L, 4, 512) float16), a tiny model (dims 16) and one or two epochs:
`r2 data import-release`, `r2 train` (per domain for YouTube Highlights and TVSum, with the
paper's Table 3 / 4 layout), then `r2 eval --checkpoint`, which prints the dataset's metrics
and the paper's table beside them.
"""

from __future__ import annotations

import json

import pytest
from release_fixtures import TINY, make_release
from train_fixtures import one_thread  # noqa: F401 - autouse: one torch thread
from typer.testing import CliRunner

from r2.cli import app

runner = CliRunner()
CONFIG = [x for k, v in TINY.items() for x in ("--config", f"{k}={v}")]
FAST = ["--workers", "0", "--device", "cpu", *CONFIG]
# dataset -> (validation split, evaluated split, printed title, paper table, key metric)
GROUNDING = {
    "qvhighlights": ("val", "val", "QVHighlights val: paper Table 9 layout", "MR-full-mAP"),
    "charades": ("test", "test", "Charades-STA test: paper Table 2 layout", "mIoU"),
    "tacos": ("val", "test", "TACoS test: paper Table 2 layout", "mIoU"),
    "ego4d": ("val", "val", "Ego4D-NLQ val: paper Table 2 layout", "mIoU"),
}


def _import(tmp_path, dataset: str):
    rel = make_release(tmp_path, dataset)
    cache = tmp_path / "cache" / f"{dataset}.h5"
    args = ["data", "import-release", str(rel.folder), "--dataset", dataset, "--out", str(cache)]
    out = runner.invoke(app, args + (["--splits", str(rel.splits)] if rel.splits else []))
    assert out.exit_code == 0, out.output
    return rel, cache, lambda split: cache.parent / f"{dataset}_{split}.jsonl"


@pytest.mark.parametrize("dataset", list(GROUNDING))
def test_grounding_dataset_from_the_release(tmp_path, dataset):
    val, scored, title, key = GROUNDING[dataset]
    _, cache, jsonl = _import(tmp_path, dataset)
    run = tmp_path / "run"
    train = runner.invoke(app, ["train", "--cache", str(cache), "--train-anno",
                                str(jsonl("train")), "--val-anno", str(jsonl(val)), "--preset",
                                dataset, "--out", str(run), "--epochs", "1", *FAST])  # fmt: skip
    assert train.exit_code == 0, train.output
    assert f"best {key}:" in train.output
    evaluated = runner.invoke(app, ["eval", "--checkpoint", str(run), "--cache", str(cache),
                                    "--anno", str(jsonl(scored)), "--device", "cpu"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert title in evaluated.output and "R²-Tuning (paper)" in evaluated.output
    metrics = json.loads((run / f"eval_{dataset}_{scored}" / "metrics.json").read_text())
    assert 0 <= metrics[key] <= 100


@pytest.mark.parametrize("dataset", ["youtube", "tvsum"])
def test_per_domain_dataset_from_the_release(tmp_path, dataset):
    rel, cache, jsonl = _import(tmp_path, dataset)
    run = tmp_path / "runs"
    train = runner.invoke(app, ["train", "--cache", str(cache), "--train-anno",
                                str(jsonl("train")), "--val-anno", str(jsonl("val")), "--preset",
                                dataset, "--domain", "all", "--split-lists", str(rel.splits),
                                "--out", str(run), "--epochs", "2", *FAST])  # fmt: skip
    assert train.exit_code == 0, train.output
    table = json.loads((run / "table.json").read_text())
    domains = ("dog", "gymnastics") if dataset == "youtube" else ("BK", "VT")
    assert list(table["domains"]) == [d for d in table["domains"] if d in domains]
    assert set(table["domains"]) == set(domains) and not table["complete"]
    for d in domains:
        assert (run / d / "best.safetensors").is_file()
        assert table["domains"][d]["n_train"] == 3 and table["domains"][d]["n_val"] == 1
    layout = "Table 3" if dataset == "youtube" else "Table 4"
    assert f"paper {layout} layout" in train.output and "this run" in train.output
    evaluated = runner.invoke(app, ["eval", "--checkpoint", str(run), "--cache", str(cache),
                                    "--anno", str(jsonl("val")), "--device", "cpu"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    scored = json.loads((run / f"eval_{dataset}_val" / "table.json").read_text())
    assert {d: r["mAP"] for d, r in scored["domains"].items()} == {
        d: r["mAP"]
        for d, r in table["domains"].items()  # the best checkpoints, scored again
    }
    paper = next(x for x in evaluated.output.splitlines() if "R²-Tuning (paper)" in x).split()
    assert paper[-1] == ("76.10" if dataset == "youtube" else "85.20")
