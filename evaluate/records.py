"""Reading and validating prediction / ground-truth files for scoring.

Both files are JSON Lines (one JSON object per line; blank lines are ignored) or a single
JSON array of objects. Every problem raises :class:`EvalInputError` naming the file, the
line (or array item) and the field, so a bad number never turns silently into a wrong metric.

Prediction fields (QVHighlights submission format):
    ``qid``; ``pred_relevant_windows`` ``[[start_s, end_s, score], ...]`` ranked best first
    (the rank is the list order, as in the official evaluator); ``pred_saliency_scores`` one
    score per clip. Either field may be absent when a dataset does not need it.
Ground-truth fields: ``qid``, ``relevant_windows`` (moment datasets), ``duration``,
    ``relevant_clip_ids`` and ``saliency_scores`` (QVHighlights highlights), ``label`` and
    ``domain`` (YouTube Highlights / TVSum), ``query`` (query-length report).

Query ids are compared as strings (``str(qid)``), like the feature cache does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r2.errors import UsageError

log = logging.getLogger(__name__)

QVH_CLIP_SECONDS = 2.0  # QVHighlights saliency clips are 2 s long
QVH_ANNOTATORS = 3  # three saliency scores per relevant clip


class EvalInputError(UsageError, ValueError):
    """A prediction or ground-truth file cannot be scored; the message says where and why."""


@dataclass(frozen=True)
class Row:
    """One JSON object and where it came from (``file:line`` or ``file[item i]``)."""

    where: str
    data: dict[str, Any]


@dataclass
class Prediction:
    """One validated prediction. Arrays are float64, in file order."""

    qid: str
    where: str
    windows: np.ndarray | None  # (N, 3) [start_s, end_s, score]; None if the field is absent
    saliency: np.ndarray | None  # (T,) one score per clip; None if the field is absent


@dataclass
class GroundTruth:
    """One validated ground-truth entry; fields the dataset does not use stay None."""

    qid: str
    where: str
    query: str | None = None
    windows: np.ndarray | None = None  # (M, 2) seconds; M may be 0
    clip_scores: np.ndarray | None = None  # (int(duration / 2), 3) QVHighlights saliency 0..4
    label: np.ndarray | None = None  # (n_clips, A) YouTube (A=1) / TVSum (A=20) clip labels
    domain: str | None = None


def read_rows(path: str | Path) -> list[Row]:
    """Read a JSON Lines file (or a JSON array) into rows that remember their location.

    The bounded reader of `r2.data.jsonl` (line size, nesting depth) reads it.

    Raises:
        EvalInputError: missing file, invalid JSON, a limit exceeded, or an item that is
            not an object.
    """
    from r2.data.jsonl import JsonInputError, read_json_or_jsonl

    try:
        located = read_json_or_jsonl(path)
    except JsonInputError as exc:
        raise EvalInputError(str(exc)) from None
    return rows_from_dicts([item for _, item in located], [where for where, _ in located])


def check_ground_truth_rows(rows: list[Row], source: str) -> None:
    """The strict annotation checks of `r2 data check` on a ground-truth file.

    Raises:
        EvalInputError: any error (counted, the first few quoted). Warnings are logged once.
    """
    from r2.data.check import CheckReport
    from r2.data.schema import Requirements, check_rows

    checked, problems = check_rows(
        ((r.where, r.data) for r in rows), Requirements(vid=False, query=False)
    )
    report = CheckReport(source, checked, problems)
    if report.errors:
        raise EvalInputError(report.error_message())
    report.log_warnings("ground truth")


def rows_from_dicts(
    items: list[Any], wheres: list[str] | None = None, source: str = ""
) -> list[Row]:
    """Wrap in-memory dicts as rows; locations default to ``source[item i]``."""
    wheres = wheres or [f"{source}[item {i}]" for i in range(len(items))]
    rows = []
    for where, item in zip(wheres, items, strict=True):
        if not isinstance(item, dict):
            raise EvalInputError(f"{where}: expected a JSON object, got {type(item).__name__}")
        rows.append(Row(where, item))
    return rows


def _fail(row: Row, field: str, problem: str) -> EvalInputError:
    return EvalInputError(f"{row.where}: field '{field}': {problem}")


def _qid(row: Row) -> str:
    if "qid" not in row.data:
        raise _fail(row, "qid", "missing")
    qid = row.data["qid"]
    if isinstance(qid, bool) or not isinstance(qid, int | str | np.integer):
        raise _fail(row, "qid", f"must be an integer or a string, got {qid!r}")
    return str(int(qid)) if isinstance(qid, np.integer) else str(qid)


def _is_number(value: Any) -> bool:
    """int or float (numpy ones too), not bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _as_list(value: Any) -> Any:
    """Numpy arrays and tuples (in-memory callers) are read like JSON lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


def _number_array(row: Row, field: str, value: Any) -> np.ndarray:
    """A list of finite numbers -> float64 array (1-D)."""
    value = _as_list(value)
    if not isinstance(value, list):
        raise _fail(row, field, f"must be a list of numbers, got {type(value).__name__}")
    if set(map(type, value)) <= {int, float}:  # fast path (bool is its own type)
        array = np.asarray(value, dtype=np.float64)
        if np.isfinite(array).all():
            return array
    for i, v in enumerate(value):
        if not _is_number(v) or not math.isfinite(v):
            raise _fail(row, f"{field}[{i}]", f"must be a finite number, got {v!r}")
    return np.asarray(value, dtype=np.float64)


def _window_array(row: Row, field: str, value: Any, widths: tuple[int, ...]) -> np.ndarray:
    """A list of [start, end(, score)] rows -> (N, width) float64; checks finiteness and order."""
    value = _as_list(value)
    if not isinstance(value, list):
        raise _fail(row, field, f"must be a list of windows, got {type(value).__name__}")
    width = max(widths)
    out = np.empty((len(value), width), dtype=np.float64)
    for i, w in enumerate(value):
        name = f"{field}[{i}]"
        w = _as_list(w)
        if not isinstance(w, list) or len(w) not in widths:
            shape = " or ".join(str(n) for n in widths)
            raise _fail(row, name, f"must be a list of {shape} numbers, got {w!r}")
        for j, v in enumerate(w):
            if not _is_number(v) or not math.isfinite(v):
                raise _fail(row, name, f"element {j} must be a finite number, got {v!r}")
        if w[0] > w[1]:
            raise _fail(row, name, f"start {w[0]} > end {w[1]}")
        out[i, : len(w)] = w
        out[i, len(w) :] = 0.0  # a 2-number window gets score 0 (rank = list order)
    return out


def parse_predictions(rows: list[Row], need_scores: bool) -> list[Prediction]:
    """Validate prediction rows.

    Args:
        rows: rows from :func:`read_rows` / :func:`rows_from_dicts`.
        need_scores: require ``[start, end, score]`` windows (mAP needs scores); otherwise
            ``[start, end]`` is accepted too.

    Raises:
        EvalInputError: naming the file, line and field of the first problem.
    """
    widths = (3,) if need_scores else (2, 3)
    preds, seen = [], {}
    for row in rows:
        qid = _qid(row)
        if qid in seen:
            raise _fail(row, "qid", f"duplicate qid {qid} (first at {seen[qid]})")
        seen[qid] = row.where
        windows = row.data.get("pred_relevant_windows")
        saliency = row.data.get("pred_saliency_scores")
        if windows is None and saliency is None:
            raise EvalInputError(
                f"{row.where}: no prediction (neither pred_relevant_windows nor "
                "pred_saliency_scores): is this a ground-truth file? --pred takes predictions"
            )
        preds.append(
            Prediction(
                qid=qid,
                where=row.where,
                windows=None
                if windows is None
                else _window_array(row, "pred_relevant_windows", windows, widths),
                saliency=None
                if saliency is None
                else _number_array(row, "pred_saliency_scores", saliency),
            )
        )
    return preds


def _qvh_clip_scores(row: Row) -> np.ndarray | None:
    """QVHighlights per-clip annotator scores (int(duration / 2), 3), as official mk_gt_scores."""
    data = row.data
    if data.get("relevant_clip_ids") is None or data.get("saliency_scores") is None:
        return None
    duration = data.get("duration")
    if not _is_number(duration) or not math.isfinite(duration) or duration < 0:
        raise _fail(row, "duration", f"must be a finite number >= 0, got {duration!r}")
    n_clips = int(duration / QVH_CLIP_SECONDS)
    ids, scores = _as_list(data["relevant_clip_ids"]), _as_list(data["saliency_scores"])
    if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores):
        raise _fail(row, "saliency_scores", "must be a list with one entry per relevant_clip_ids")
    full = np.zeros((n_clips, QVH_ANNOTATORS), dtype=np.float64)
    for i, (clip, triple) in enumerate(zip(ids, scores, strict=True)):
        if (
            not isinstance(clip, int | np.integer)
            or isinstance(clip, bool)
            or not 0 <= clip < n_clips
        ):
            raise _fail(
                row,
                f"relevant_clip_ids[{i}]",
                f"must be a clip index in [0, {n_clips}) for duration {duration}, got {clip!r}",
            )
        values = _number_array(row, f"saliency_scores[{i}]", triple)
        if len(values) != QVH_ANNOTATORS:
            raise _fail(row, f"saliency_scores[{i}]", f"needs {QVH_ANNOTATORS} annotator scores")
        full[clip] = values
    return full


def _label(row: Row) -> np.ndarray:
    """YouTube/TVSum ``label``: per clip a number or a list of annotator numbers -> (n, A)."""
    value = _as_list(row.data.get("label"))
    if not isinstance(value, list) or not value:
        raise _fail(row, "label", f"must be a non-empty list, one entry per clip, got {value!r}")
    columns = [_as_list(v) if isinstance(v, list | tuple | np.ndarray) else [v] for v in value]
    widths = {len(c) for c in columns}
    if len(widths) > 1 or 0 in widths:
        raise _fail(row, "label", "every clip needs the same (non-zero) number of scores")
    flat = _number_array(row, "label", [x for c in columns for x in c])
    return flat.reshape(len(columns), widths.pop())


def parse_ground_truth(rows: list[Row], dataset: str) -> list[GroundTruth]:
    """Validate ground-truth rows for ``dataset`` (see :data:`r2.evaluate.DATASETS`)."""
    gts, seen = [], {}
    for row in rows:
        qid = _qid(row)
        if qid in seen:
            raise _fail(row, "qid", f"duplicate qid {qid} (first at {seen[qid]})")
        seen[qid] = row.where
        gt = GroundTruth(qid=qid, where=row.where)
        if dataset in ("youtube", "tvsum"):
            gt.label = _label(row)
            domain = row.data.get("domain")
            if not isinstance(domain, str) or not domain:
                raise _fail(row, "domain", f"must be a non-empty string, got {domain!r}")
            gt.domain = domain
        else:
            windows = row.data.get("relevant_windows")
            gt.windows = _window_array(row, "relevant_windows", windows or [], (2,))
            query = row.data.get("query")
            gt.query = query if isinstance(query, str) else None
            if dataset == "qvhighlights":
                gt.clip_scores = _qvh_clip_scores(row)
        gts.append(gt)
    return gts


def pair_up(
    preds: list[Prediction],
    gts: list[GroundTruth],
    allow_partial: bool,
    pred_source: str,
    gt_source: str,
) -> tuple[list[tuple[Prediction, GroundTruth]], int, int]:
    """Match predictions to ground truth by qid, in prediction-file order.

    Returns:
        (pairs, n_pred_without_gt, n_gt_without_pred). Unless ``allow_partial``, any
        unmatched query raises :class:`EvalInputError` (the official evaluator asserts too).
    """
    by_qid = {gt.qid: gt for gt in gts}
    pred_qids = {p.qid for p in preds}
    extra = [p for p in preds if p.qid not in by_qid]
    missing = [gt for gt in gts if gt.qid not in pred_qids]
    if (extra or missing) and not allow_partial:
        problems = []
        if extra:
            problems.append(
                f"{len(extra)} predicted qid(s) are not in the ground truth {gt_source} "
                f"(first: qid {extra[0].qid} at {extra[0].where})"
            )
        if missing:
            problems.append(
                f"{len(missing)} ground-truth qid(s) have no prediction in {pred_source} "
                f"(first: qid {missing[0].qid} at {missing[0].where})"
            )
        raise EvalInputError(
            "; ".join(problems) + ". Predict every query, or pass allow_partial to score "
            "only the shared ones."
        )
    if extra or missing:
        log.warning(
            "scoring %d shared queries only: %d predictions without ground truth, "
            "%d ground-truth queries without prediction",
            len(preds) - len(extra),
            len(extra),
            len(missing),
        )
    pairs = [(p, by_qid[p.qid]) for p in preds if p.qid in by_qid]
    if not pairs:
        raise EvalInputError(f"{pred_source}: no prediction matches a query of {gt_source}")
    return pairs, len(extra), len(missing)
