"""The embedded demo end to end (a smaller version of `make demo`): the model must learn.

Runs r2.demo.run_demo on 60 procedural videos with a tiny random CLIP (the pretrained one is
made unavailable on purpose), then checks on the held-out TEST videos (12 videos; they play no
part in training or in choosing the epoch, which the 6 validation videos do) that the trained
model beats the trivial baselines by a stated margin:
  - moment retrieval, MR-full-mAP: at least +20 points over the best single fixed window
    (seeds 0-7: margins 33.0-39.2; seed 0: 41.7 vs 8.7);
  - highlight detection, HL-min-VeryGood-mAP: at least +10 points over random saliency
    (seeds 0-7: margins 16.4-30.9; seed 0: 45.8 vs 24.9).
With 40 videos (28 for training, 8 for testing) the margins were 8-42 (MR) and 1-28 (HL)
over seeds: a rounding-level change in the float32 math (oneDNN products) moved seed 0 below
the threshold, the trajectory diverging chaotically after ~40 steps from losses equal to
1e-7. 60 videos learn reliably; the margins were re-measured on seeds 0-7 with that code.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from r2.demo import DemoSize, run_demo

MR_MARGIN = 20.0  # MR-full-mAP points above the fixed-window baseline
HL_MARGIN = 10.0  # HL-min-VeryGood-mAP points above random saliency
SMALL = DemoSize(n_videos=60, epochs=8, batch_size=8, warmup=20)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # the pretrained CLIP must not be found: random fallback
    mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("empty_hf_home")))
    out = tmp_path_factory.mktemp("demo")
    handler = _Collect()
    logging.getLogger("r2.demo").addHandler(handler)
    try:
        result = run_demo(out, size=SMALL, seed=0, device="cpu")
    finally:
        logging.getLogger("r2.demo").removeHandler(handler)
        mp.undo()
    return out, result, handler.messages


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_model_beats_the_trivial_baselines_on_held_out_videos(demo):
    out, result, _ = demo
    (baseline,) = result.baselines.values()
    test_gt = (out / "data" / "test_gt.jsonl").read_text().splitlines()
    assert result.split == "test" and result.metrics["n_queries"] == len(test_gt) >= 10
    assert result.metrics["MR-full-mAP"] >= baseline["MR-full-mAP"] + MR_MARGIN, (
        result.metrics["MR-full-mAP"], baseline["MR-full-mAP"])  # fmt: skip
    assert result.metrics["HL-min-VeryGood-mAP"] >= baseline["HL-min-VeryGood-mAP"] + HL_MARGIN, (
        result.metrics["HL-min-VeryGood-mAP"], baseline["HL-min-VeryGood-mAP"])  # fmt: skip


def test_random_clip_fallback_is_announced_loudly(demo):
    _, result, messages = demo
    assert not result.real_clip
    assert any("RANDOMLY INITIALISED" in m for m in messages)


def test_outputs_are_written(demo):
    out, result, _ = demo
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "test"
    assert saved["model"]["MR-full-mAP"] == result.metrics["MR-full-mAP"]
    assert saved["model on val (chose the epoch)"] == result.val_metrics
    test_rows = [json.loads(x) for x in result.submission.read_text().splitlines()]
    test_gt = [json.loads(x) for x in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in test_rows] == [r["qid"] for r in test_gt]
    for row, gt in zip(test_rows, test_gt, strict=True):
        windows = np.asarray(row["pred_relevant_windows"])
        assert windows.shape[1] == 3 and (windows[:, 0] <= windows[:, 1]).all()
        assert windows[:, 1].max() <= gt["duration"] + 1e-6
        assert len(row["pred_saliency_scores"]) == round(gt["duration"] / 2)


def test_the_readme_api_snippet_runs_on_the_demo_output(demo, capsys):
    out, _, _ = demo
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "R2Predictor.from_pretrained" in snippet
    exec(compile(snippet.replace("demo_out/", f"{out.as_posix()}/"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "Moment(start=" in printed and "when does the red star spin?" in printed
    assert "a blue star moves up" in printed  # the predict_many part ran too
