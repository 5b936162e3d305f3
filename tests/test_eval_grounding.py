"""Charades-STA / TACoS / Ego4D-NLQ metrics (R1, R5, mIoU) on hand-derived cases and real files."""

import json

import numpy as np
import pytest

from r2.evaluate import evaluate, evaluate_records
from r2.evaluate.grounding import top_k_iou
from r2.evaluate.iou import cross_iou, paired_iou


def _gt(qid, windows):
    return {"qid": qid, "relevant_windows": windows}


def _pred(qid, windows):
    return {"qid": qid, "pred_relevant_windows": windows}


@pytest.mark.parametrize("dataset", ["charades", "tacos", "ego4d"])
def test_recall_and_miou_by_hand(dataset):
    gts = [_gt(1, [[10, 20]]), _gt(2, [[0, 10]]), _gt(3, [[0, 10]]), _gt(4, [[0, 10]]), _gt(5, [])]
    preds = [
        _pred(1, [[10, 20, 0.9]]),  # IoU 1
        _pred(2, [[5, 15, 0.9], [0, 10, 0.8]]),  # top-1 IoU 5/15 = 1/3; top-5 IoU 1
        _pred(3, [[0, 4]]),  # IoU 0.4 ([start, end] without score is accepted here)
        _pred(4, []),  # empty list: IoU 0 (the original crashes)
        _pred(5, [[0, 1, 1]]),  # no GT window: not scored, counted
    ]
    m = evaluate_records(preds, gts, dataset=dataset)
    assert (m["R1@0.3"], m["R1@0.5"], m["R1@0.7"]) == (75.0, 25.0, 25.0)
    assert (m["R5@0.3"], m["R5@0.5"], m["R5@0.7"]) == (75.0, 50.0, 50.0)
    assert m["mIoU"] == 43.33  # (1 + 1/3 + 0.4 + 0) / 4
    assert m["n_queries"] == 4 and m["n_no_gt"] == 1


def test_threshold_is_inclusive_and_best_gt_window_is_used():
    # [0, 5] vs [0, 10]: IoU exactly 0.5 counts at 0.5. With two GT windows R1 uses the
    # one the first prediction overlaps most.
    m = evaluate_records(
        [_pred(1, [[0, 5, 1]]), _pred(2, [[20, 30, 1]])],
        [_gt(1, [[0, 10]]), _gt(2, [[0, 10], [20, 31]])],
        dataset="charades",
    )
    assert m["R1@0.5"] == 100.0 and m["R1@0.7"] == 50.0


def test_zero_length_windows_have_iou_zero():
    windows = np.array([[5.0, 5.0], [0.0, 10.0]])
    assert np.array_equal(cross_iou(windows, windows), [[0.0, 0.0], [0.0, 1.0]])
    assert np.array_equal(paired_iou(windows, windows), [0.0, 1.0])
    assert top_k_iou(np.array([[5.0, 5.0, 1.0]]), np.array([[5.0, 5.0]]), 1) == 0.0


def test_r5_takes_first_five_listed_rows():
    rows = [[50, 60, 0.9]] * 5 + [[0, 10, 0.1]]
    m = evaluate_records([_pred(1, rows)], [_gt(1, [[0, 10]])], dataset="tacos")
    assert m["R5@0.3"] == 0.0
    m = evaluate_records([_pred(1, rows[1:])], [_gt(1, [[0, 10]])], dataset="tacos")
    assert m["R5@0.7"] == 100.0


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("folder", "name", "dataset"),
    [
        ("charades", "charades_test_release.jsonl", "charades"),
        ("tacos", "tacos_test_release.jsonl", "tacos"),
    ],
)
def test_real_annotations_against_themselves(testdata, tmp_path, folder, name, dataset):
    gt_path = testdata / "datasets" / "unified" / folder / name
    rows = _read(gt_path)
    pred_path = tmp_path / "pred.jsonl"
    pred_path.write_text(
        "\n".join(
            json.dumps(_pred(r["qid"], [[*w, 1.0] for w in r["relevant_windows"]])) for r in rows
        )
    )
    m = evaluate(pred_path, gt_path, dataset=dataset)
    assert m["n_queries"] == len(rows) and m["n_no_gt"] == 0
    assert all(m[k] == 100.0 for k in ("R1@0.3", "R1@0.5", "R1@0.7", "R5@0.7", "mIoU"))
    # shifting every prediction by 40% of its GT window's length: IoU 0.6/1.4 = 3/7
    shifted = []
    for r in rows:
        s, e = r["relevant_windows"][0]
        d = 0.4 * (e - s)
        shifted.append(_pred(r["qid"], [[s + d, e + d, 1.0]]))
    m = evaluate_records(shifted, rows, dataset=dataset)
    assert m["R1@0.3"] == 100.0 and m["R1@0.5"] == 0.0
    assert m["mIoU"] == pytest.approx(100 * 3 / 7, abs=0.01)
