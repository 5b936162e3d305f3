"""The three average-precision flavours the benchmarks use (numpy only).

- :func:`detection_ap`: moment-retrieval AP of one query at several IoU thresholds, the
  VOC-style interpolated AP of the official QVHighlights evaluator (``moment_detr``
  ``standalone_eval``, itself from ActivityNet/MMAction2): predictions sorted by score
  (stable), each matched greedily to the unmatched GT window of highest IoU.
- :func:`clip_ap`: highlight AP of one query and one annotator, the official ``get_ap``
  (sklearn ``precision_recall_curve``, interpolated precision, mean over the recall steps).
- :func:`ranked_ap`: the YouTube Highlights / TVSum AP of R2-Tuning (and UMT, lighthouse):
  trapezoidal AP of a ranked 0/1 list.

Each reproduces the operation order of the original, so results are bit-identical.
"""

from __future__ import annotations

import numpy as np

from r2.evaluate.iou import cross_iou


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """VOC 2011 interpolated AP of each row of (T, N) precision/recall curves -> (T,).

    The official operation order: precision padded with 0 both ends and made monotone from
    the right, recall padded with 0 and 1, then ``np.sum`` of (recall step * precision)
    over the points where recall changes (summed row by row on the compact terms, so the
    float rounding is the original's).
    """
    n_rows, n = precision.shape
    mprecision = np.zeros((n_rows, n + 2))
    mprecision[:, 1:-1] = precision
    mprecision = np.maximum.accumulate(mprecision[:, ::-1], axis=1)[:, ::-1]
    mrecall = np.zeros((n_rows, n + 2))
    mrecall[:, 1:-1] = recall
    mrecall[:, -1] = 1.0
    changed = mrecall[:, 1:] != mrecall[:, :-1]  # (T, N + 1), at index idx - 1
    terms = (mrecall[:, 1:] - mrecall[:, :-1]) * mprecision[:, 1:]
    return np.array([np.sum(terms[t][changed[t]]) for t in range(n_rows)])


def detection_ap(windows: np.ndarray, gt: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """AP of one query's ranked windows against its GT windows, per IoU threshold.

    Args:
        windows: (N, 3) [start, end, score]; the caller passes the first 10 rows of the
            file, as the official evaluator does. N may be 0 (AP 0: no hit).
        gt: (M, 2) GT windows, M >= 1.
        thresholds: IoU thresholds; a prediction matches at IoU >= threshold.

    Returns:
        (len(thresholds),) float64 AP values in [0, 1].
    """
    n_thr, n_pred, n_gt = len(thresholds), len(windows), len(gt)
    if n_pred == 0:
        return np.zeros(n_thr)
    order = sorted(range(n_pred), key=lambda i: -windows[i, 2])  # stable, like list.sort
    iou = cross_iou(windows[order, :2], gt)  # (N, M)
    thr = np.asarray(thresholds)[:, None]  # (T, 1)
    tp = np.zeros((n_thr, n_pred))
    locked = np.zeros((n_thr, n_gt), dtype=bool)
    rows = np.arange(n_thr)
    for p in range(n_pred):
        # GT windows by decreasing IoU (the original's argsort call, so the same tie order);
        # the prediction takes the first one still free with IoU >= threshold, per threshold
        gt_order = iou[p].argsort()[::-1]
        free = ~locked[:, gt_order] & (iou[p, gt_order][None, :] >= thr)  # (T, M)
        hit = free.any(axis=1)
        tp[hit, p] = 1
        locked[rows[hit], gt_order[free.argmax(axis=1)[hit]]] = True
    tp_cum = np.cumsum(tp, axis=1).astype(float)
    fp_cum = np.cumsum(1 - tp, axis=1).astype(float)
    recall = tp_cum / float(n_gt)
    precision = tp_cum / (tp_cum + fp_cum)
    return _interpolated_ap(precision, recall)


def clip_ap(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray | float:
    """Official highlight AP of binary clip labels against clip scores (same length).

    ``y_true`` may be (n,) or (n, K) for K label columns sharing one score ranking (one
    value per column is returned). All-negative labels give 0 and all-positive labels
    give 1 (official rule); no clips gives 0 (the official code fails there).
    """
    if y_true.ndim == 1:
        return float(clip_ap(y_true[:, None], y_score)[0])
    n, n_cols = y_true.shape
    out = np.zeros(n_cols)
    mixed = y_true.any(axis=0) & ~y_true.all(axis=0) if n else np.zeros(n_cols, dtype=bool)
    out[(n > 0) & y_true.all(axis=0)] = 1.0
    if not mixed.any():
        return out
    # sklearn _binary_clf_curve: scores descending, one point per distinct score
    order = np.argsort(y_score, kind="mergesort")[::-1]
    score = y_score[order]
    ends = np.concatenate([np.flatnonzero(score[1:] != score[:-1]), [n - 1]])
    tps = np.cumsum(y_true[order][:, mixed].astype(np.float64), axis=0)[ends]  # (P, K')
    fps = 1 + ends[:, None] - tps
    k = len(ends)
    precision = np.ones((k + 1, tps.shape[1]))
    precision[:k] = (tps / (tps + fps))[::-1]
    recall = np.zeros((k + 1, tps.shape[1]))
    recall[:k] = (tps / tps[-1])[::-1]
    recall = recall.astype(np.float32)
    precision = np.maximum.accumulate(precision, axis=0)  # interpolated precision
    steps = recall[1:] != recall[:-1]
    out[mixed] = [np.mean(precision[:-1, c][steps[:, c]]) for c in range(tps.shape[1])]
    return out


def ranked_ap(labels: list[float]) -> float:
    """R2-Tuning YouTube/TVSum AP of 0/1 labels listed in predicted rank order.

    Trapezoidal: sum over ranks of (recall step) * (previous precision + precision) / 2,
    the precision before the first rank being 1. No positive in the list gives 0.
    """
    num_gt = sum(labels)
    if num_gt == 0:
        return 0
    hits = ap = rec = 0
    prc = 1
    for j, gt in enumerate(labels):
        hits += gt
        new_rec, new_prc = hits / num_gt, hits / (j + 1)
        ap += (new_rec - rec) * (prc + new_prc) / 2
        rec, prc = new_rec, new_prc
    return ap
