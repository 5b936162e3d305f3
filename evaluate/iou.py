"""Temporal IoU, computed with the same formulas as the official evaluators (numpy, float64).

Two formulas appear in the official code and differ in the last bit for some inputs, so
each metric uses the one its original uses:

- :func:`cross_iou` (every pair): union = len1 + len2 - intersection (mAP, and choosing
  the GT window for R1/R5).
- :func:`paired_iou` (row by row): union = max(ends) - min(starts), which equals the true
  union whenever the windows overlap and gives 0 otherwise (the IoU compared with R1/R5
  thresholds and averaged into mIoU).

Zero-length windows: when the union is 0 (two identical points) the IoU is defined as 0.
The official ``compute_temporal_iou_batch_cross`` divides 0 by 0 there, and the NaN then
counts as a match in its mAP loop but not in R1; we score such a window as no match
everywhere.
"""

from __future__ import annotations

import numpy as np


def cross_iou(windows1: np.ndarray, windows2: np.ndarray) -> np.ndarray:
    """IoU of each window of ``windows1`` (N, 2) with each of ``windows2`` (M, 2) -> (N, M)."""
    areas1 = windows1[:, 1] - windows1[:, 0]
    areas2 = windows2[:, 1] - windows2[:, 0]
    left = np.maximum(windows1[:, None, 0], windows2[None, :, 0])
    right = np.minimum(windows1[:, None, 1], windows2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = areas1[:, None] + areas2[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def paired_iou(windows1: np.ndarray, windows2: np.ndarray) -> np.ndarray:
    """IoU of row i of ``windows1`` (N, 2) with row i of ``windows2`` (N, 2) -> (N,)."""
    inter = np.maximum(
        0, np.minimum(windows1[:, 1], windows2[:, 1]) - np.maximum(windows1[:, 0], windows2[:, 0])
    )
    union = np.maximum(windows1[:, 1], windows2[:, 1]) - np.minimum(windows1[:, 0], windows2[:, 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
