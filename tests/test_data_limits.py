"""Bounded inputs: every JSON Lines reader refuses hostile lines with a clean file:line error.

Readers: `r2 train` (annotations), `r2 eval` (predictions and ground truth, JSON Lines or a
JSON array), `r2 extract` (queries), `r2 data check`. Limits: r2.data.jsonl (line size,
nesting depth) and r2.data.schema (windows per query, query length).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from r2.cli import app
from r2.data import jsonl, schema
from r2.data.check import check_annotations
from r2.evaluate import EvalInputError, evaluate
from r2.extract.inputs import InputError, read_queries
from r2.train.data import AnnotationError, read_annotations

GOOD = {"qid": 1, "vid": "v", "query": "q", "duration": 10.0, "relevant_windows": [[1, 2]]}


def _file(tmp_path, second_line: str | bytes, name: str = "a.jsonl"):
    path = tmp_path / name
    head = json.dumps(GOOD).encode() + b"\n"
    path.write_bytes(head + (second_line.encode() if isinstance(second_line, str) else second_line))
    return path


def _readers(path):
    """Every reader of annotation-like files, as (name, call, error class)."""
    pred = path.with_name("pred.jsonl")
    pred.write_text(json.dumps({"qid": 1, "pred_relevant_windows": [[1, 2, 1]]}) + "\n")
    return [
        ("train", lambda: read_annotations(path), AnnotationError),
        ("extract", lambda: read_queries([path]), InputError),
        ("eval --gt", lambda: evaluate(pred, path, "charades"), EvalInputError),
        ("eval --pred", lambda: evaluate(path, pred, "charades"), EvalInputError),
        ("data check", lambda: check_annotations(path), AnnotationError),
    ]


def test_deep_nesting_is_a_clean_error_in_every_reader(tmp_path):
    path = _file(tmp_path, "[" * 100_000 + "]" * 100_000 + "\n")
    for name, call, error in _readers(path):
        with pytest.raises(error, match=rf"{path}:2: JSON nested 100000 levels deep") as err:
            call()
        assert not isinstance(err.value, RecursionError), name
    # inside a string, brackets are text: not nesting
    text = json.dumps({**GOOD, "qid": 2, "query": "[" * 5000})
    assert jsonl.json_depth(text.encode()) == 3  # {"relevant_windows": [[...]]}
    assert check_annotations(_file(tmp_path, text, "b.jsonl")).errors[0].kind == "query_long"


def test_deep_nesting_in_a_json_array_file(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(EvalInputError, match="JSON nested 50000 levels deep"):
        evaluate(path, _file(tmp_path, ""))


def test_a_50_mb_query_line_is_refused_without_reading_it(tmp_path):
    big = json.dumps({"qid": 2, "query": "x" * 50_000_000})
    path = _file(tmp_path, big + "\n")
    for _name, call, error in _readers(path):
        with pytest.raises(error, match=rf"{path}:2: line longer than 8,388,608 bytes"):
            call()


def test_query_length_is_checked_before_tokenising(tmp_path):
    long = "word " * (schema.MAX_QUERY_CHARS // 5 + 1)
    path = _file(tmp_path, json.dumps({**GOOD, "qid": 2, "query": long}))
    with pytest.raises(InputError, match=rf"{path}:2: field 'query': 2,005 characters"):
        read_queries([path])


def test_three_million_windows_never_reach_training(tmp_path):
    """The line that drove `r2 train` to 19 GB: refused by size before it is parsed."""
    windows = ",".join(["[1.5,2.5]"] * 3_000_000)
    path = _file(
        tmp_path, '{"qid": 2, "vid": "v", "query": "q", "relevant_windows": [' + windows + "]}\n"
    )
    with pytest.raises(AnnotationError, match=rf"{path}:2: line longer than"):
        read_annotations(path)


def test_windows_per_query_limit(tmp_path):
    row = {**GOOD, "qid": 2, "relevant_windows": [[1, 2]] * (schema.MAX_WINDOWS + 1)}
    path = _file(tmp_path, json.dumps(row))
    with pytest.raises(AnnotationError, match=r":2: field 'relevant_windows': 1,001 windows"):
        read_annotations(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"qid": 2, "vid": "v", "query": "q", "duration": ' + "9" * 5000 + "}", "invalid JSON"),
        (b'{"qid": 2, "vid": "v", "query": "\xff"}', "not UTF-8"),
        ('{"qid": 2, "vid": "v", "query": "q", "duration": 1e999}', "field 'duration'"),
        ('{"qid": ' + "9" * 600 + ', "vid": "v", "query": "q"}', "field 'qid': 600 characters"),
    ],
)
def test_odd_values_give_line_errors(tmp_path, line, message):
    path = _file(tmp_path, line)
    with pytest.raises(AnnotationError, match=f"{path}:2: {message}"):
        read_annotations(path)


def test_data_check_cli_on_a_hostile_file(tmp_path):
    path = _file(tmp_path, "{" * 100_000)
    result = CliRunner().invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2 and f"{path}:2: JSON nested" in result.output
    assert "Traceback" not in result.output
