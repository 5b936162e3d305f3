"""QVHighlights metrics: the official evaluator's 104 numbers, and hand-derived small cases."""

import json

import pytest

from r2.evaluate import evaluate, evaluate_records, official_layout
from r2.evaluate.qvhighlights import MAP_THRESHOLDS

RANGES = ("full", "short", "middle", "long")
HIGHER_THRESHOLDS = [t for t in MAP_THRESHOLDS if t > 0.5]


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _official_key(path):
    """Path in the official nested JSON -> our flat metric name."""
    if path[0] == "brief":
        return path[1]
    if path[0].startswith("HL-min-"):
        return f"{path[0]}-{path[1].split('-')[1]}"
    name, family, thr = path
    kind = family.split("-")[1]  # mAP | R1
    return f"MR-{name}-mAP" if thr == "average" else f"MR-{name}-{kind}@{thr}"


def test_reproduces_all_104_official_values(testdata):
    qvh = testdata / "qvhighlights"
    sample = qvh / "official_eval_sample"
    metrics = evaluate(sample / "sample_val_preds.jsonl", qvh / "highlight_val_release.jsonl")
    raw = json.loads((sample / "sample_val_preds_metrics_raw.json").read_text())
    expected = dict(_flatten(raw))
    assert len(expected) == 104
    for path, value in expected.items():
        assert metrics[_official_key(path)] == value, path
    assert official_layout(metrics) == raw
    # the paper summary is drawn from the same numbers
    assert metrics["mAP"] == raw["brief"]["MR-full-mAP"]
    assert metrics["HD-mAP"] == raw["HL-min-VeryGood"]["HL-mAP"]
    assert metrics["HIT@1"] == raw["HL-min-VeryGood"]["HL-Hit1"]
    assert metrics["n_queries"] == 1550 and metrics["n_no_gt"] == 0


def _gt(qid, windows, duration=150, clips=None, query="a query"):
    ids = sorted(clips or {})
    return {
        "qid": qid,
        "query": query,
        "duration": duration,
        "relevant_windows": windows,
        "relevant_clip_ids": ids,
        "saliency_scores": [clips[i] for i in ids],
    }


def _mr(qid, windows):
    return {"qid": qid, "pred_relevant_windows": windows}


def test_map_ties_are_ranked_stably_and_r1_uses_list_order():
    # Sorted by score (stable): [0,5] .9, [0,10] .5, [20,30] .5.
    # IoU 0.5 -> at θ=0.5 the first row matches: AP 1. At θ>=0.55 only [0,10] (rank 2)
    # matches: precision 1/2 at full recall -> AP 0.5 (an unstable sort putting [20,30]
    # second would give 1/3). mAP = (1 + 9 * 0.5) / 10 = 0.55.
    # R1 takes the first listed row [0,10]: IoU 1 -> 100 at every threshold.
    preds = [_mr(1, [[0, 10, 0.5], [20, 30, 0.5], [0, 5, 0.9]])]
    m = evaluate_records(preds, [_gt(1, [[0, 10]])])
    assert m["MR-full-mAP@0.5"] == 100.0
    assert all(m[f"MR-full-mAP@{t}"] == 50.0 for t in HIGHER_THRESHOLDS)
    assert m["MR-full-mAP"] == 55.0
    assert m["MR-full-R1@0.95"] == 100.0 and m["MR-full-mIoU"] == 100.0


def test_short_prediction_list_and_top10_cut():
    # One correct window for two GT windows: recall 1/2 at precision 1 -> AP 0.5.
    short = evaluate_records([_mr(1, [[0, 10, 0.9]])], [_gt(1, [[0, 10], [20, 30]])])
    assert short["MR-full-mAP"] == 50.0 and short["MR-full-R1@0.7"] == 100.0
    # Only the first 10 listed rows count, even if the 11th has the best score: AP 0.
    rows = [[50, 60, 0.5]] * 10 + [[0, 10, 0.99]]
    cut = evaluate_records([_mr(1, rows)], [_gt(1, [[0, 10]])])
    assert cut["MR-full-mAP"] == 0.0
    assert cut["MR-full-R5@0.3"] == 0.0  # R5 looks at the first 5 rows only


def test_empty_window_list_scores_zero_and_averages_in():
    # The official evaluator crashes on an empty list; we score it as no hit.
    preds = [_mr(1, [[0, 10, 0.9]]), _mr(2, [])]
    m = evaluate_records(preds, [_gt(1, [[0, 10]]), _gt(2, [[0, 10]])])
    assert m["MR-full-mAP"] == 50.0 and m["MR-full-R1@0.5"] == 50.0
    assert m["MR-full-R5@0.7"] == 50.0 and m["MR-full-mIoU"] == 50.0


def test_length_ranges_filter_gt_windows():
    # GT windows of 6 s (short) and 40 s (long). Predictions: [20,60] then [0,6].
    # full: both match -> AP 1. short: GT [0,6] only, matched at rank 2 -> AP 0.5, and the
    # first row misses it -> R1 0. long: GT [20,60] matched at rank 1 -> AP 1, R1 100.
    # middle: no GT window of 10-30 s -> omitted (the original prints NaN).
    m = evaluate_records([_mr(1, [[20, 60, 0.9], [0, 6, 0.8]])], [_gt(1, [[0, 6], [20, 60]])])
    assert m["MR-full-mAP"] == 100.0
    assert m["MR-short-mAP"] == 50.0 and m["MR-short-R1@0.5"] == 0.0
    assert m["MR-long-mAP"] == 100.0 and m["MR-long-R1@0.5"] == 100.0
    assert "MR-middle-mAP" not in m


def test_zero_length_windows_and_queries_without_gt():
    # A zero-length window has IoU 0 with everything (documented; the original gets 0/0).
    # It is not in the "short" range (0 < length <= 10).
    m = evaluate_records(
        [_mr(1, [[5, 5, 0.9]]), _mr(2, [[0, 4, 1]])], [_gt(1, [[5, 5]]), _gt(2, [])]
    )
    assert m["MR-full-mAP"] == 0.0 and m["MR-full-R1@0.5"] == 0.0
    assert "MR-short-mAP" not in m
    assert m["n_no_gt"] == 1 and m["n_queries"] == 2  # query 2 has no GT window: not in MR


def _hl(qid, saliency):
    return {"qid": qid, "pred_saliency_scores": saliency}


def test_highlight_metrics_by_hand():
    # duration 9 s -> int(9 / 2) = 4 clips; annotator scores per clip (clip 3 not relevant).
    clips = {0: [4, 4, 4], 1: [2, 2, 2], 2: [4, 0, 0]}
    gt = [_gt(1, [[0, 2]], duration=9, clips=clips)]
    # Ranking c0 .9, c1 .8, c3 .5, c2 .1.
    # >=4 (also >=3): annotator 0 positives {0, 2} -> ranks 1 and 4 -> AP (1 + 2/4) / 2 = 0.75;
    # annotators 1, 2 positive {0} at rank 1 -> AP 1. mAP = 2.75 / 3 = 91.67.
    # >=2: annotator 0 {0,1,2} -> ranks 1, 2, 4 -> AP (1 + 1 + 3/4) / 3 = 0.9167;
    # annotators 1, 2 {0, 1} -> AP 1. mAP = 2.9167 / 3 = 97.22. Top clip 0 is positive: Hit 100.
    m = evaluate_records([_hl(1, [0.9, 0.8, 0.1, 0.5])], gt)
    assert m["HL-min-VeryGood-mAP"] == m["HL-min-Good-mAP"] == m["HD-mAP"] == 91.67
    assert m["HL-min-Fair-mAP"] == 97.22
    assert m["HL-min-VeryGood-Hit1"] == m["HIT@1"] == 100.0
    assert "MR-full-mAP" not in m  # no pred_relevant_windows anywhere: HL only


def test_highlight_all_zero_all_positive_and_ties():
    gts = [
        _gt(1, [[0, 2]], duration=8, clips={0: [1, 1, 1]}),  # no clip reaches 2: AP 0, Hit 0
        _gt(2, [[0, 2]], duration=4, clips={0: [4, 4, 4], 1: [4, 4, 4]}),  # all positive: 1
        # tie: clip 0 negative, clip 1 positive, equal scores -> one PR point at
        # precision 1/2 -> AP 0.5; Hit@1 takes the first max (clip 0): miss.
        _gt(3, [[0, 2]], duration=4, clips={1: [4, 4, 4]}),
    ]
    preds = [_hl(1, [0.3, 0.2, 0.1, 0.0]), _hl(2, [0.1, 0.9]), _hl(3, [0.5, 0.5])]
    m = evaluate_records(preds, gts)
    assert m["HL-min-VeryGood-mAP"] == 50.0  # (0 + 1 + 0.5) / 3
    assert m["HL-min-VeryGood-Hit1"] == 33.33  # (0 + 1 + 0) / 3


def test_highlight_saliency_shorter_longer_or_empty():
    gt = [_gt(1, [[0, 2]], duration=8, clips={2: [4, 4, 4]})]  # 4 clips, clip 2 positive
    # Shorter: zero-padded like the original -> [.9, -.5, 0, 0]; clip 2 ties with clip 3 at
    # rank 2-3 -> precision 1/3 at full recall -> AP 1/3; top clip 0 is negative.
    short = evaluate_records([_hl(1, [0.9, -0.5])], gt)
    assert short["HL-min-VeryGood-mAP"] == 33.33 and short["HL-min-VeryGood-Hit1"] == 0.0
    # Longer: truncated to 4 clips for AP (clip 2 ranks first -> 1); Hit@1 uses the full
    # list, whose max is clip 4, beyond the video -> miss.
    long = evaluate_records([_hl(1, [0.1, 0.2, 0.8, 0.3, 0.99])], gt)
    assert long["HL-min-VeryGood-mAP"] == 100.0 and long["HL-min-VeryGood-Hit1"] == 0.0
    # Empty (the original crashes): no hit.
    empty = evaluate_records([_hl(1, [])], gt)
    assert empty["HL-min-VeryGood-mAP"] == 0.0 and empty["HL-min-VeryGood-Hit1"] == 0.0


def test_query_length_breakdown():
    # 1-word query: AP 1; 12-word query: AP 0; 45-word query: AP 1.
    gts = [
        _gt(1, [[0, 10]], query="one"),
        _gt(2, [[0, 10]], query=" ".join(["w"] * 12)),
        _gt(3, [[0, 10]], query=" ".join(["w"] * 45)),
    ]
    preds = [_mr(1, [[0, 10, 1]]), _mr(2, [[50, 60, 1]]), _mr(3, [[0, 10, 1]])]
    m = evaluate_records(preds, gts, by_query_length=True)
    assert m["MR-words-1-10-mAP"] == 100.0 and m["MR-words-1-10-n"] == 1
    assert m["MR-words-11-20-mAP"] == 0.0
    assert m["MR-words-41+-mAP"] == 100.0
    assert "MR-words-21-30-mAP" not in m and m["MR-words-21-30-n"] == 0
    with pytest.raises(ValueError, match="only defined for qvhighlights"):
        evaluate_records(preds, gts, dataset="charades", by_query_length=True)


def test_gt_as_prediction_on_test_split(testdata):
    rows = [
        json.loads(line)
        for line in (testdata / "qvhighlights" / "highlight_test_with_gt.jsonl")
        .read_text()
        .splitlines()
    ]
    preds = [_mr(r["qid"], [[s, e, 1.0] for s, e in r["relevant_windows"]]) for r in rows]
    m = evaluate_records(preds, rows)
    assert m["n_queries"] == 1542
    assert all(m[f"MR-full-R1@{t}"] == 100.0 for t in MAP_THRESHOLDS)
    assert m["MR-full-mIoU"] == 100.0
    # queries with more than 10 GT windows cannot reach AP 1 from 10 predictions
    assert 95.0 < m["MR-full-mAP"] <= 100.0
