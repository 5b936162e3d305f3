"""YouTube Highlights and TVSum metrics on hand-derived cases and the real annotation files."""

import json

import numpy as np
import pytest

from r2.evaluate import evaluate, evaluate_records
from r2.evaluate.ap import ranked_ap
from r2.evaluate.highlights import rank_clips, tvsum_ap


def _yt(qid, labels, domain):
    return {"qid": qid, "label": [[x] for x in labels], "domain": domain}


def _sal(qid, scores):
    return {"qid": qid, "pred_saliency_scores": scores}


def test_ranked_ap_by_hand():
    # ranks 1..4 = 0, 1, 0, 1 with 2 positives; precision before rank 1 is 1:
    # rank 2: recall .5, (0 + 1/2) / 2 -> .125; rank 4: recall +.5, (1/3 + 1/2) / 2 -> .2083
    assert ranked_ap([0.0, 1.0, 0.0, 1.0]) == pytest.approx(1 / 3)
    assert ranked_ap([1.0, 1.0, 1.0]) == pytest.approx(1.0)  # all positive
    assert ranked_ap([0.0, 0.0]) == 0  # no positive


def test_youtube_per_domain_and_average():
    gts = [
        _yt("a", [0, 1, 0, 1], "dog"),  # ranked 0,1,0,1 -> 1/3
        _yt("b", [1, 1, 1], "dog"),  # all positive -> 1
        _yt("c", [0, 1, 0], "skiing"),  # tie .5/.5: stable order ranks clip 0 first -> .25
        _yt("d", [0, 0, 0], "skiing"),  # no positive clip: AP 0, counted like the original
    ]
    preds = [
        _sal("a", [0.9, 0.8, 0.7, 0.1]),
        _sal("b", [0.1, 0.2, 0.3]),
        _sal("c", [0.5, 0.5, 0.1]),
        _sal("d", [0.3, 0.2, 0.1]),
    ]
    m = evaluate_records(preds, gts, dataset="youtube")
    assert m["mAP-dog"] == 66.67  # (1/3 + 1) / 2
    assert m["mAP-skiing"] == 12.5  # (.25 + 0) / 2
    assert m["mAP"] == 39.58  # (2/3 + 1/8) / 2
    assert list(m)[:3] == ["mAP", "mAP-dog", "mAP-skiing"]
    assert m["n_no_positive"] == 1 and m["n_queries"] == 4


def test_saliency_length_mismatch_and_empty():
    # longer: truncated to the video's clips; shorter: only the scored clips are ranked
    # (the original's label[argsort(saliency)], as after cutting video and labels)
    assert np.array_equal(rank_clips(np.array([0.1, 0.9, 0.5, 7.0]), 3), [1, 2, 0])
    assert np.array_equal(rank_clips(np.array([0.1, 0.9]), 4), [1, 0])
    gts = [_yt("a", [0, 0, 1], "dog")]
    # the positive clip 2 was cut: no positive among the ranked clips -> AP 0
    assert evaluate_records([_sal("a", [0.1, 0.9])], gts, dataset="youtube")["mAP"] == 0.0
    gts = [_yt("a", [0, 1, 1], "dog")]
    # ranked clips 1 (positive), 0: num_gt counts the ranked positives only -> AP 1
    assert evaluate_records([_sal("a", [0.1, 0.9])], gts, dataset="youtube")["mAP"] == 100.0
    assert (
        evaluate_records([_sal("a", [0.1, 0.2, 0.9, 5.0])], gts, dataset="youtube")["mAP"] == 100.0
    )
    assert evaluate_records([_sal("a", [])], gts, dataset="youtube")["mAP"] == 0.0


def test_tvsum_top5_ap_by_hand():
    # annotator 0: scores 1,2,3,4,5,5 -> lower median 3 -> positives clips 3,4,5.
    # annotator 1: 5,1,1,1,1,1 -> median 1 -> positive clip 0.
    label = np.array([[1, 5], [2, 1], [3, 1], [4, 1], [5, 1], [5, 1]], dtype=float)
    saliency = np.array([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    # top 5 = clips 0..4. annotator 0: 0,0,0,1,1 with 2 positives among them (clip 5 is
    # outside the top 5 and does not count): .5 * (0 + 1/4) / 2 + .5 * (1/4 + 2/5) / 2 = .225
    # annotator 1: 1,0,0,0,0 -> 1.
    assert np.allclose(tvsum_ap(label, saliency), [0.225, 1.0])
    gts = [{"qid": "v", "label": label.tolist(), "domain": "BK"}]
    m = evaluate_records([_sal("v", saliency.tolist())], gts, dataset="tvsum")
    assert m["mAP-BK"] == m["mAP"] == 61.25  # (.225 + 1) / 2


def test_tvsum_shorter_prediction_keeps_the_full_video_median():
    # annotator 0: 1,2,3,4,5,5,5 -> lower median 4 (all 7 clips) -> positives clips 4,5,6;
    # 6 predicted clips ranked 5,4,3,2,1,0: top 5 = clips 5,4,3,2,1 -> 1,1,0,0,0 -> AP 1
    label = np.array([[1], [2], [3], [4], [5], [5], [5]], dtype=float)
    saliency = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert np.allclose(tvsum_ap(label, saliency), [1.0])
    # with the median of the 6 predicted clips only (3), clip 3 would be positive too
    assert np.allclose(tvsum_ap(label[:6], saliency), [1.0])
    assert tvsum_ap(label, saliency[:2]).tolist() == [0.0]  # clips 0, 1: no positive


def test_tvsum_all_equal_labels_score_zero():
    # every clip equals the median: no positive for anybody -> AP 0
    gts = [{"qid": "v", "label": [[3, 3]] * 6, "domain": "BK"}]
    assert evaluate_records([_sal("v", [1, 2, 3, 4, 5, 6])], gts, dataset="tvsum")["mAP"] == 0.0


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_youtube_real_labels_against_themselves(testdata, tmp_path):
    gt_path = (
        testdata
        / "datasets"
        / "unified"
        / "youtube_highlight"
        / "youtube_highlight_val_release.jsonl"
    )
    rows = _read(gt_path)
    pred_path = tmp_path / "pred.jsonl"
    pred_path.write_text(
        "\n".join(json.dumps(_sal(r["qid"], [x[0] for x in r["label"]])) for r in rows)
    )
    m = evaluate(pred_path, gt_path, dataset="youtube")
    domains = ["dog", "gymnastics", "parkour", "skating", "skiing", "surfing"]
    assert [k for k in m if k.startswith("mAP-")] == [f"mAP-{d}" for d in domains]
    assert all(m[f"mAP-{d}"] == 100.0 for d in domains) and m["mAP"] == 100.0
    # reversed ranking is much worse
    rev = evaluate_records(
        [_sal(r["qid"], [-x[0] for x in r["label"]]) for r in rows], rows, dataset="youtube"
    )
    assert rev["mAP"] < 60


def test_tvsum_real_labels(testdata, tmp_path):
    gt_path = testdata / "datasets" / "unified" / "tvsum" / "tvsum_val_release.jsonl"
    rows = _read(gt_path)
    pred_path = tmp_path / "pred.jsonl"
    pred_path.write_text(
        "\n".join(json.dumps(_sal(r["qid"], np.mean(r["label"], axis=1).tolist())) for r in rows)
    )
    m = evaluate(pred_path, gt_path, dataset="tvsum")
    order = ["VT", "VU", "GA", "MS", "PK", "PR", "FM", "BK", "BT", "DS"]
    assert [k for k in m if k.startswith("mAP-")] == [f"mAP-{d}" for d in order]
    assert 50 < m["mAP"] < 100
    # one annotator's own scores rank its positives first: 100 for each domain
    single = [{**r, "label": [[clip[0]] for clip in r["label"]]} for r in rows]
    preds = [_sal(r["qid"], [clip[0] for clip in r["label"]]) for r in rows]
    assert evaluate_records(preds, single, dataset="tvsum")["mAP"] == 100.0
