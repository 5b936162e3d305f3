"""One strict annotation checker for every command: `r2 data check`, train, eval, extract.

Each class of problem is checked through the commands that read annotations, with the
file:line:field it must name.
"""

from __future__ import annotations

import json
import logging

import pytest
from train_fixtures import make_annotations, make_cache, write_jsonl
from typer.testing import CliRunner

from r2.cli import app
from r2.data.check import check_annotations
from r2.evaluate import EvalInputError, evaluate
from r2.extract.inputs import InputError, read_queries
from r2.train.data import AnnotationError, read_annotations

runner = CliRunner()
GOOD = {
    "qid": 1,
    "vid": "v1",
    "query": "a dog runs",
    "duration": 10.0,
    "relevant_windows": [[2.0, 4.0]],
    "relevant_clip_ids": [1],
    "saliency_scores": [[1, 2, 3]],
}


def _write(tmp_path, rows, name="a.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def _kinds(path, cache=None) -> dict[str, str]:
    report = check_annotations(path, cache)
    return {p.kind: p.severity for p in report.problems}


# ------------------------------------------------------------------ error classes


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"saliency_scores": [[1, "NaN", 3]]}, "saliency_scores[0][1]", "saliency_type"),
        ({"relevant_windows": [[12.0, 15.0]]}, "relevant_windows[0]", "window_outside"),
        ({"relevant_windows": [[-5.0, -1.0]]}, "relevant_windows[0]", "window_outside"),
        ({"duration": -3.0}, "duration", "duration_negative"),
        ({"relevant_clip_ids": [1, 2]}, "saliency_scores", "saliency_length"),
        ({"relevant_clip_ids": [7]}, "relevant_clip_ids[0]", "clip_id_range"),
        ({"relevant_windows": [[1, "x"]]}, "relevant_windows[0]", "window_type"),
        ({"vid": 1.5}, "vid", "vid_type"),
        ({"query": "   "}, "query", "query_empty"),
        ({"label": [[1], [2, 3]]}, "label", "label_width"),
        ({"label": [[1], [0]], "match": [1, 0, -1]}, "match", "match_length"),
        ({"match": [2, 0]}, "match", "match_value"),
        ({"fps": 0}, "fps", "fps_type"),
    ],
)
def test_errors_name_line_and_field_in_check_and_train(tmp_path, change, field, kind):
    path = _write(tmp_path, [GOOD, {**GOOD, "qid": 2, **change}])
    report = check_annotations(path)
    [problem] = report.errors
    assert (problem.where, problem.field, problem.kind) == (f"{path}:2", field, kind)
    with pytest.raises(AnnotationError, match=rf"{path}:2: field '{field}'".replace("[", r"\[")):
        read_annotations(path)


def test_nan_and_infinite_saliency_are_errors_everywhere(tmp_path):
    nan = (
        '{"qid": 2, "vid": "v", "query": "q", "duration": 10, "relevant_clip_ids": [0], '
        '"saliency_scores": [[1, NaN, 3]]}'
    )
    inf = nan.replace("NaN", "Infinity").replace('"qid": 2', '"qid": 3')
    path = _write(tmp_path, [GOOD, nan, inf])
    assert [p.kind for p in check_annotations(path).errors] == ["saliency_nonfinite"] * 2
    with pytest.raises(
        AnnotationError, match=r":2: field 'saliency_scores\[0\]\[1\]': must be fin"
    ):
        read_annotations(path)
    pred = _write(
        tmp_path,
        [
            {"qid": q, "pred_relevant_windows": [[0, 2, 1]], "pred_saliency_scores": [1] * 5}
            for q in (1, 2, 3)
        ],
        "p.jsonl",
    )
    with pytest.raises(EvalInputError, match=r"a.jsonl:3: field 'saliency_scores\[0\]\[1\]'"):
        evaluate(pred, path)


def test_eval_ground_truth_gets_the_same_rules(tmp_path):
    """Negative durations and windows wholly outside the video were scored before."""
    gt = _write(
        tmp_path,
        [
            {"qid": 1, "duration": -10, "relevant_windows": [[1, 2]]},
            {"qid": 2, "duration": 10, "relevant_windows": [[11, 12]]},
        ],
    )
    pred = _write(
        tmp_path, [{"qid": q, "pred_relevant_windows": [[1, 2, 1]]} for q in (1, 2)], "p.jsonl"
    )
    with pytest.raises(EvalInputError) as err:
        evaluate(pred, gt, "charades")
    assert f"{gt}:1: field 'duration'" in str(err.value)
    assert f"{gt}:2: field 'relevant_windows[0]': [11, 12] lies wholly outside" in str(err.value)


def test_duplicate_qids_are_errors_in_every_reader(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "vid": "v2"}, {**GOOD, "qid": "1"}])
    errors = check_annotations(path).errors
    assert [(p.where, p.kind) for p in errors] == [
        (f"{path}:2", "duplicate_qid"),
        (f"{path}:3", "duplicate_qid"),
    ]
    with pytest.raises(InputError, match=f"{path}:2: field 'qid': '1' already used at {path}:1"):
        read_queries([path])  # same text, same file: was silently kept once
    with pytest.raises(AnnotationError, match="2 errors in"):
        read_annotations(path)


def test_integer_and_string_vids_are_read_alike(tmp_path):
    path = _write(tmp_path, [{**GOOD, "vid": 7}, {**GOOD, "qid": 2, "vid": "v2"}])
    assert [q.vid for q in read_queries([path])] == ["7", "v2"]  # extract refused integer vids
    assert [a.vid for a in read_annotations(path)] == ["7", "v2"]
    assert _kinds(path) == {"vid_types": "warning"}


def test_per_video_fps_must_agree_and_match_the_labels(tmp_path):
    rows = [
        {"qid": "a", "vid": "v", "query": "q", "duration": 10.0, "fps": 1.0, "label": [[1]] * 10},
        {"qid": "b", "vid": "v", "query": "q", "duration": 10.0, "fps": 2.0, "label": [[1]] * 10},
        {"qid": "c", "vid": "w", "query": "q", "duration": 10.0, "fps": 30.0, "label": [[1]] * 10},
    ]
    kinds = _kinds(_write(tmp_path, rows))
    assert kinds == {"fps_disagree": "error", "fps_labels": "warning"}


# ------------------------------------------------------------------ repairs and --strict-anno


def test_window_repairs_are_counted_once_and_fatal_with_strict(tmp_path, caplog):
    rows = [
        {**GOOD, "qid": i, "relevant_windows": w}
        for i, w in enumerate(
            [[[4.0, 2.0]], [[-1.0, 3.0]], [[8.0, 12.0]], [[3.0, 3.0]], [[2.0, 4.0]]]
        )
    ]
    path = _write(tmp_path, rows)
    assert _kinds(path) == {
        "window_reversed": "warning",
        "window_negative": "warning",
        "window_past_end": "warning",
        "window_zero_length": "warning",
    }
    with caplog.at_level(logging.WARNING):
        assert len(read_annotations(path)) == 5
    assert caplog.text.count("warnings in annotations") == 1
    assert f"warning window_reversed: 1 (first: {path}:1 (qid 0))" in caplog.text
    with pytest.raises(AnnotationError, match=r"4 windows in .* need repairs and --strict-anno"):
        read_annotations(path, strict=True)


def test_train_strict_anno_option(tmp_path):
    annos = make_annotations(4)
    annos[0]["relevant_windows"] = [[annos[0]["duration"], 0.0]]  # reversed
    cache = make_cache(tmp_path / "c.h5", annos)
    train = write_jsonl(tmp_path / "t.jsonl", annos)
    args = [
        "train",
        "--cache",
        str(cache),
        "--train-anno",
        str(train),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
    result = runner.invoke(app, [*args, "--strict-anno"])
    assert result.exit_code == 2, result.output
    assert "need repairs and --strict-anno is set" in result.output
    assert "window_reversed: 1 (first: " in result.output and "(qid 0)" in result.output


# ------------------------------------------------------------------ eval --pred GT_FILE


def test_eval_refuses_a_ground_truth_file_as_predictions(tmp_path):
    gt = _write(tmp_path, [GOOD, {**GOOD, "qid": 2}])
    result = runner.invoke(app, ["eval", "--pred", gt, "--gt", gt])
    assert result.exit_code == 2
    assert f"{gt}:1: no prediction" in result.output and "ground-truth file" in result.output


# ------------------------------------------------------------------ against a cache


def test_check_against_a_cache(tmp_path):
    annos = make_annotations(3)
    cache = make_cache(tmp_path / "c.h5", annos)
    rows = [dict(a) for a in annos]
    rows[0]["query"] = "another text"  # features were made from another text
    rows[1]["duration"] = rows[1]["duration"] + 10.0  # T vs duration x fps
    rows.append({**annos[2], "qid": 99, "vid": "elsewhere"})  # neither cached
    rows.append({**annos[2], "qid": 100, "label": [[1]] * 20})  # labels vs clips
    path = _write(tmp_path, rows)
    found = {
        (p.where.rsplit(":", 1)[1], p.kind, p.severity)
        for p in check_annotations(path, cache).problems
    }
    assert found == {
        ("1", "query_text", "error"),
        ("2", "duration_vs_cache", "warning"),
        ("4", "query_not_cached", "error"),
        ("4", "video_not_cached", "error"),
        ("5", "query_not_cached", "error"),
        ("5", "labels_vs_clips", "error"),
    }
    result = runner.invoke(app, ["data", "check", path, "--cache", str(cache)])
    assert result.exit_code == 2
    assert f"error: {path}:1: field 'query': differs from the text cached" in result.output
    assert f"{path}: 5 rows, 5 errors, 1 warnings (cache {cache})" in result.output


def test_data_check_cli_clean_file_and_summary(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "qid": 2, "relevant_windows": [[8, 11]]}])
    result = runner.invoke(app, ["data", "check", path, "--summary"])
    assert result.exit_code == 0, result.output
    assert "warning window_past_end: 1" in result.output and "2 rows, 0 errors, 1 warnings" in (
        result.output
    )
    assert runner.invoke(app, ["data", "check", str(tmp_path / "none.jsonl")]).exit_code == 2
