"""`r2 eval` command: table on stdout, JSON file, clear errors and exit codes."""

import json

import pytest
import typer
from typer.testing import CliRunner

from r2.evaluate.cli import eval_command

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    # The command is registered on its own app so this test does not depend on other stages.
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the "eval" sub-command
    return app


def _files(tmp_path, pred_rows, gt_rows):
    pred, gt = tmp_path / "pred.jsonl", tmp_path / "gt.jsonl"
    pred.write_text("\n".join(json.dumps(r) for r in pred_rows))
    gt.write_text("\n".join(json.dumps(r) for r in gt_rows))
    return pred, gt


def test_eval_prints_table_and_writes_json(app, tmp_path):
    pred, gt = _files(
        tmp_path,
        [
            {"qid": 1, "pred_relevant_windows": [[0, 10, 1]]},
            {"qid": 2, "pred_relevant_windows": [[0, 3]]},
        ],
        [{"qid": 1, "relevant_windows": [[0, 10]]}, {"qid": 2, "relevant_windows": [[0, 10]]}],
    )
    out = tmp_path / "sub" / "metrics.json"
    result = runner.invoke(
        app, ["eval", "--pred", str(pred), "--gt", str(gt), "-d", "charades", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Charades-STA: 2 queries scored" in result.output and "R1@0.3" in result.output
    metrics = json.loads(out.read_text())
    assert metrics["R1@0.3"] == 100.0 and metrics["R1@0.5"] == 50.0 and metrics["mIoU"] == 65.0


def test_eval_reports_bad_input_with_location(app, tmp_path):
    pred, gt = _files(
        tmp_path,
        [{"qid": 1, "pred_relevant_windows": [[5, 1, 1]]}],
        [{"qid": 1, "relevant_windows": [[0, 1]]}],
    )
    result = runner.invoke(app, ["eval", "--pred", str(pred), "--gt", str(gt)])
    assert result.exit_code == 2
    assert f"{pred}:1: field 'pred_relevant_windows[0]': start 5 > end 1" in result.output


def test_eval_rejects_bad_options(app, tmp_path):
    pred, gt = _files(tmp_path, [], [])
    assert runner.invoke(app, ["eval", "--gt", str(gt)]).exit_code == 2  # --pred missing
    result = runner.invoke(app, ["eval", "--pred", str(pred), "--gt", str(gt), "-d", "activitynet"])
    assert result.exit_code == 2
    bad = runner.invoke(
        app, ["eval", "--pred", str(pred), "--gt", str(gt), "-d", "tvsum", "--by-query-length"]
    )
    assert bad.exit_code == 2


def test_eval_on_official_sample(app, testdata, tmp_path):
    qvh = testdata / "qvhighlights"
    out = tmp_path / "m.json"
    args = [
        "eval",
        "--pred",
        str(qvh / "official_eval_sample" / "sample_val_preds.jsonl"),
        "--gt",
        str(qvh / "highlight_val_release.jsonl"),
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "53.94" in result.output and "35.65" in result.output
    assert json.loads(out.read_text())["MR-full-mAP"] == 32.2
