"""Moment-retrieval recall (R1, R5) and mIoU; the Charades-STA / TACoS / Ego4D-NLQ metrics.

Follows the evaluator R2-Tuning runs for these datasets (``datasets/eval/evaluation.py``,
UniVTG's extension of the official QVHighlights one):

- R@k at IoU threshold θ: among the first k windows of the prediction list and all GT
  windows, take the pair of highest IoU (first in row-major order on ties); the query is a
  hit when that pair's IoU >= θ. k = 1 is the official QVHighlights R1.
- mIoU: the mean of that top-1 IoU over queries.
- Values are percentages rounded to 2 decimals, like the original.

The list order is the rank (the official evaluators do not re-sort by score). A query
with an empty window list scores IoU 0 (no hit; the original crashes). Queries without
any GT window are not scored (the original crashes on them); they are counted in
``n_no_gt``.
"""

from __future__ import annotations

import logging

import numpy as np

from r2.evaluate.iou import cross_iou, paired_iou
from r2.evaluate.records import EvalInputError, GroundTruth, Prediction

log = logging.getLogger(__name__)

#: R1/R5 thresholds of R2-Tuning's evaluator, 0.3:0.05:0.95 formatted like the original.
RECALL_THRESHOLDS = [float(f"{t:.2f}") for t in np.linspace(0.3, 0.95, 14)]
#: thresholds the paper reports for Charades-STA / TACoS / Ego4D-NLQ.
PAPER_THRESHOLDS = (0.3, 0.5, 0.7)


def percent(x: float) -> float:
    """100 * x rounded to 2 decimals exactly as the official evaluators format it."""
    return float(f"{100 * x:.2f}")


def top_k_iou(windows: np.ndarray | None, gt: np.ndarray, k: int) -> float:
    """Best IoU between the first ``k`` predicted windows (N, >=2) and the GT windows (M, 2).

    The pair is chosen on :func:`cross_iou`; its IoU is recomputed with :func:`paired_iou`,
    as the original does. Returns 0.0 when there is no predicted window.
    """
    if windows is None or len(windows) == 0:
        return 0.0
    candidates = windows[:k, :2]
    iou = cross_iou(candidates, gt)
    p, g = np.unravel_index(int(np.argmax(iou)), iou.shape)
    return float(paired_iou(candidates[p : p + 1], gt[g : g + 1])[0])


def recall_at_k(ious: np.ndarray, thresholds: list[float] | tuple[float, ...]) -> dict[str, float]:
    """Percent of queries with IoU >= each threshold, keyed by ``str(threshold)``."""
    return {str(t): percent(np.mean(ious >= t)) for t in thresholds}


def with_gt_windows(
    pairs: list[tuple[Prediction, GroundTruth]],
) -> tuple[list[tuple[Prediction, GroundTruth]], int]:
    """The pairs whose ground truth has at least one window, and the number of the others."""
    kept = [(p, g) for p, g in pairs if g.windows is not None and len(g.windows) > 0]
    skipped = len(pairs) - len(kept)
    if skipped:
        log.warning("%d queries have no ground-truth window: not scored for moments", skipped)
    return kept, skipped


def require_windows(pairs: list[tuple[Prediction, GroundTruth]]) -> None:
    """Raise :class:`EvalInputError` at the first prediction without ``pred_relevant_windows``."""
    for pred, _ in pairs:
        if pred.windows is None:
            raise EvalInputError(
                f"{pred.where}: field 'pred_relevant_windows': missing (needed for moments)"
            )


def grounding_metrics(pairs: list[tuple[Prediction, GroundTruth]]) -> dict[str, float]:
    """R1@{0.3,0.5,0.7}, R5@{0.3,0.5,0.7} and mIoU of matched (prediction, ground truth) pairs.

    Returns:
        ``R1@0.3`` ... ``R5@0.7``, ``mIoU`` (percent, 2 decimals), ``n_queries`` (scored)
        and ``n_no_gt`` (queries skipped for lack of GT windows).
    """
    require_windows(pairs)
    scored, n_no_gt = with_gt_windows(pairs)
    out: dict[str, float] = {}
    if scored:
        r1 = np.array([top_k_iou(p.windows, g.windows, 1) for p, g in scored])
        r5 = np.array([top_k_iou(p.windows, g.windows, 5) for p, g in scored])
        out.update({f"R1@{k}": v for k, v in recall_at_k(r1, PAPER_THRESHOLDS).items()})
        out.update({f"R5@{k}": v for k, v in recall_at_k(r5, PAPER_THRESHOLDS).items()})
        out["mIoU"] = percent(np.mean(r1))
    out["n_queries"] = len(scored)
    out["n_no_gt"] = n_no_gt
    return out
