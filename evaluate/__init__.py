"""Scoring: benchmark metrics, post-processing and inference over a split.

The public entry points are :func:`evaluate` (files) and :func:`evaluate_records` (lists of
dicts, for validation during training). Metric families live in one module each:
:mod:`~r2.evaluate.qvhighlights`, :mod:`~r2.evaluate.grounding` (Charades-STA, TACoS,
Ego4D-NLQ), :mod:`~r2.evaluate.highlights` (YouTube Highlights, TVSum); post-processing of
raw model outputs is in :mod:`~r2.evaluate.postprocess`. Everything here is numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r2.evaluate.grounding import grounding_metrics
from r2.evaluate.highlights import highlight_metrics
from r2.evaluate.qvhighlights import official_layout, qvhighlights_metrics
from r2.evaluate.records import (
    EvalInputError,
    check_ground_truth_rows,
    pair_up,
    parse_ground_truth,
    parse_predictions,
    read_rows,
    rows_from_dicts,
)

#: dataset names accepted by :func:`evaluate`.
DATASETS = ("qvhighlights", "charades", "tacos", "ego4d", "youtube", "tvsum")
#: datasets scored by moment-retrieval recall (R1/R5/mIoU) only.
GROUNDING_DATASETS = ("charades", "tacos", "ego4d")


def evaluate(
    pred_path: str | Path,
    gt_path: str | Path,
    dataset: str = "qvhighlights",
    *,
    allow_partial: bool = False,
    by_query_length: bool = False,
) -> dict[str, float]:
    """Score a prediction file against a ground-truth file.

    Args:
        pred_path: JSON Lines predictions (QVHighlights submission format: ``qid``,
            ``pred_relevant_windows`` [[start_s, end_s, score], ...] best first,
            ``pred_saliency_scores`` one per clip).
        gt_path: JSON Lines annotations (the dataset's release format).
        dataset: one of :data:`DATASETS`.
        allow_partial: score only the queries present in both files instead of failing
            when the qids differ (counts in ``n_pred_unmatched`` / ``n_gt_unmatched``).
        by_query_length: QVHighlights only, add MR mAP by query length (paper Table 6).

    Returns:
        Metric name -> value (percentages rounded to 2 decimals as the official evaluators;
        ``n_*`` entries are counts). See each family's module for the names.

    Raises:
        EvalInputError: unreadable or invalid input, naming file, line and field.
    """
    gt_rows = read_rows(gt_path)
    check_ground_truth_rows(gt_rows, str(gt_path))
    return _score(
        read_rows(pred_path),
        gt_rows,
        dataset,
        allow_partial,
        by_query_length,
        str(pred_path),
        str(gt_path),
    )


def evaluate_records(
    predictions: list[dict[str, Any]],
    ground_truth: list[dict[str, Any]],
    dataset: str = "qvhighlights",
    *,
    allow_partial: bool = False,
    by_query_length: bool = False,
) -> dict[str, float]:
    """In-memory :func:`evaluate`: the same metrics for lists of dicts (one per query).

    Error messages locate items as ``predictions[item i]`` / ``ground truth[item i]``.
    """
    preds = rows_from_dicts(predictions, source="predictions")
    gts = rows_from_dicts(ground_truth, source="ground truth")
    return _score(
        preds, gts, dataset, allow_partial, by_query_length, "predictions", "ground truth"
    )


def _score(
    pred_rows: list,
    gt_rows: list,
    dataset: str,
    allow_partial: bool,
    by_query_length: bool,
    pred_source: str,
    gt_source: str,
) -> dict[str, float]:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if by_query_length and dataset != "qvhighlights":
        raise ValueError("by_query_length is only defined for qvhighlights (paper Table 6)")
    preds = parse_predictions(pred_rows, need_scores=dataset == "qvhighlights")
    gts = parse_ground_truth(gt_rows, dataset)
    if not preds:
        raise EvalInputError(f"{pred_source}: no predictions")
    pairs, n_extra, n_missing = pair_up(preds, gts, allow_partial, pred_source, gt_source)
    if dataset == "qvhighlights":
        metrics = qvhighlights_metrics(pairs, by_query_length)
    elif dataset in GROUNDING_DATASETS:
        metrics = grounding_metrics(pairs)
    else:
        metrics = highlight_metrics(pairs, dataset)
    if allow_partial:
        metrics.update(n_pred_unmatched=n_extra, n_gt_unmatched=n_missing)
    return metrics


__all__ = [
    "DATASETS",
    "GROUNDING_DATASETS",
    "EvalInputError",
    "evaluate",
    "evaluate_records",
    "official_layout",
]
