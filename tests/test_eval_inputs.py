"""Input validation: every bad input names the file, the line and the field."""

import json

import pytest

from r2.evaluate import EvalInputError, evaluate, evaluate_records

GT = [
    {
        "qid": 1,
        "query": "q",
        "duration": 8,
        "relevant_windows": [[0, 4]],
        "relevant_clip_ids": [0, 1],
        "saliency_scores": [[4, 4, 4], [1, 2, 3]],
    },
    {
        "qid": 2,
        "query": "q",
        "duration": 8,
        "relevant_windows": [[2, 6]],
        "relevant_clip_ids": [1],
        "saliency_scores": [[4, 4, 4]],
    },
]


def _pred(qid, windows=None, saliency=None):
    row = {"qid": qid, "pred_relevant_windows": windows or [[0, 4, 0.9]]}
    row["pred_saliency_scores"] = saliency if saliency is not None else [0.9, 0.1, 0.0, 0.0]
    return row


@pytest.fixture
def gt_file(tmp_path):
    path = tmp_path / "gt.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GT))  # no trailing newline, like the release
    return path


def _write(tmp_path, lines):
    path = tmp_path / "pred.jsonl"
    path.write_text("\n".join(lines) + "\n\n")  # blank lines are ignored
    return path


def _check(tmp_path, gt_file, lines, *fragments):
    pred = _write(tmp_path, lines)
    with pytest.raises(EvalInputError) as info:
        evaluate(pred, gt_file)
    for fragment in fragments:
        assert fragment.format(pred=pred, gt=gt_file) in str(info.value)


def test_valid_files_score(tmp_path, gt_file):
    pred = _write(tmp_path, [json.dumps(_pred(1)), json.dumps(_pred(2, [[2, 6, 0.5]]))])
    m = evaluate(pred, gt_file)
    assert m["MR-full-mAP"] == 100.0 and m["n_queries"] == 2


def test_malformed_line(tmp_path, gt_file):
    _check(tmp_path, gt_file, [json.dumps(_pred(1)), '{"qid": 2, "pred_'], "{pred}:2: invalid JSON")


def test_not_an_object(tmp_path, gt_file):
    _check(tmp_path, gt_file, [json.dumps(_pred(1)), "[1, 2]"], "{pred}:2: expected a JSON object")


def test_start_after_end(tmp_path, gt_file):
    lines = [json.dumps(_pred(1)), json.dumps(_pred(2, [[0, 4, 0.9], [5, 3, 0.2]]))]
    _check(tmp_path, gt_file, lines, "{pred}:2: field 'pred_relevant_windows[1]': start 5 > end 3")


def test_nan_score_and_nan_saliency(tmp_path, gt_file):
    nan_score = '{"qid": 2, "pred_relevant_windows": [[0, 4, NaN]], "pred_saliency_scores": [1]}'
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1)), nan_score],
        "{pred}:2: field 'pred_relevant_windows[0]': element 2 must be a finite number, got nan",
    )
    nan_sal = '{"qid": 2, "pred_relevant_windows": [[0, 4, 1]], "pred_saliency_scores": [1, NaN]}'
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1)), nan_sal],
        "{pred}:2: field 'pred_saliency_scores[1]': must be a finite number",
    )


def test_window_shape_and_type(tmp_path, gt_file):
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1, [[0, 4]])), json.dumps(_pred(2))],
        "{pred}:1: field 'pred_relevant_windows[0]': must be a list of 3 numbers",
    )
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1, [[0, "4", 1]])), json.dumps(_pred(2))],
        "element 1 must be a finite number, got '4'",
    )


def test_qids_must_match(tmp_path, gt_file):
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1)), json.dumps(_pred(2)), json.dumps(_pred(7))],
        "1 predicted qid(s) are not in the ground truth",
        "qid 7 at {pred}:3",
    )
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1))],
        "1 ground-truth qid(s) have no prediction in {pred}",
        "qid 2 at {gt}:2",
    )
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1)), json.dumps(_pred(1))],
        "{pred}:2: field 'qid': duplicate qid 1 (first at {pred}:1)",
    )
    _check(
        tmp_path,
        gt_file,
        [json.dumps({"pred_relevant_windows": []})],
        "{pred}:1: field 'qid': missing",
    )


def test_allow_partial_scores_shared_queries_and_counts(tmp_path, gt_file):
    pred = _write(tmp_path, [json.dumps(_pred(1)), json.dumps(_pred(9))])
    m = evaluate(pred, gt_file, allow_partial=True)
    assert m["n_queries"] == 1 and m["n_pred_unmatched"] == 1 and m["n_gt_unmatched"] == 1
    assert m["MR-full-mAP"] == 100.0


def test_some_lines_without_a_field(tmp_path, gt_file):
    no_sal = {"qid": 2, "pred_relevant_windows": [[2, 6, 1]]}
    _check(
        tmp_path,
        gt_file,
        [json.dumps(_pred(1)), json.dumps(no_sal)],
        "{pred}:2: field 'pred_saliency_scores': missing (other lines have it)",
    )


def test_bad_ground_truth(tmp_path):
    bad = [{**GT[0], "relevant_clip_ids": [0, 4]}]  # duration 8 -> clips 0..3
    with pytest.raises(
        EvalInputError, match=r"ground truth\[item 0\]: field 'relevant_clip_ids\[1\]'"
    ):
        evaluate_records([_pred(1)], bad)
    with pytest.raises(EvalInputError, match="start 6 > end 2"):
        evaluate_records([_pred(1)], [{**GT[0], "relevant_windows": [[6, 2]]}])
    with pytest.raises(EvalInputError, match="field 'domain'"):
        evaluate_records(
            [{"qid": 1, "pred_saliency_scores": [1]}], [{"qid": 1, "label": [1]}], dataset="youtube"
        )


def test_in_memory_locations_and_missing_file(tmp_path):
    with pytest.raises(EvalInputError, match=r"predictions\[item 1\]: field 'qid'"):
        evaluate_records([_pred(1), {"qid": None}], GT)
    with pytest.raises(EvalInputError, match="file not found"):
        evaluate(tmp_path / "nope.jsonl", tmp_path / "gt.jsonl")
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate_records([_pred(1)], GT, dataset="activitynet")


def test_json_array_file_and_string_qids(tmp_path, gt_file):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([_pred("1"), _pred("2", [[2, 6, 1]])]))  # qids compared as strings
    assert evaluate(pred, gt_file)["MR-full-mAP"] == 100.0
    pred.write_text(json.dumps([_pred(1), _pred(2, [[9, 1, 1]])]))
    with pytest.raises(
        EvalInputError, match=r"pred.json\[item 1\]: field 'pred_relevant_windows\[0\]'"
    ):
        evaluate(pred, gt_file)


def test_in_memory_numpy_values_are_accepted():
    import numpy as np

    preds = [
        {"qid": np.int64(1), "pred_relevant_windows": np.array([[0, 4, 0.9]], dtype=np.float32),
         "pred_saliency_scores": np.array([0.9, 0.1, 0.0, 0.0], dtype=np.float32)},
        {"qid": 2, "pred_relevant_windows": [(np.float32(2), np.float32(6), np.float32(1))],
         "pred_saliency_scores": [np.float32(0), np.float32(1)]},
    ]  # fmt: skip
    m = evaluate_records(preds, GT)
    assert m["MR-full-mAP"] == 100.0 and m["n_queries"] == 2
    with pytest.raises(
        EvalInputError, match=r"predictions\[item 0\]: field 'pred_saliency_scores\[1\]'"
    ):
        evaluate_records(
            [{**preds[0], "pred_saliency_scores": np.array([0.0, np.nan])}, preds[1]], GT
        )


def test_empty_label_is_rejected():
    with pytest.raises(EvalInputError, match="field 'label': must be a non-empty list"):
        evaluate_records(
            [{"qid": 1, "pred_saliency_scores": [1]}],
            [{"qid": 1, "label": [], "domain": "d"}],
            "tvsum",
        )
