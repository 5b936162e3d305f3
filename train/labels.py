"""Label preparation (spec §3): ground-truth windows and saliency labels, in numpy.

These follow the original dataset classes step by step (float32 arithmetic, same
rounding), so that the targets and losses computed from them match the original.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

MAX_SALIENCY = 12.0
"""QVHighlights: 3 annotators × a 0–4 score; label = sum / 12."""
TVSUM_ANNOTATORS = 20
"""TVSum: 20 annotators × a 1–5 score per clip; label = (sum − 20) / 80."""


def clean_windows(
    windows_s: Sequence[Sequence[float]] | np.ndarray, n_clips: int, fps: float
) -> np.ndarray:
    """Ground-truth windows as the model receives them (the original `bind_boundary`).

    Clamp to [0, T/fps], swap reversed windows, and widen a window shorter than one clip
    to exactly one clip around its centre, the centre clamped so it stays in the video.

    Args:
        windows_s: (N, 2) [start, end] in seconds.
        n_clips: T, number of clips of the video.
        fps: clips per second.

    Returns:
        (N, 2) float32 windows in seconds.
    """
    if n_clips < 1 or fps <= 0:
        raise ValueError(f"clean_windows needs n_clips >= 1 and fps > 0, got {n_clips}, {fps}")
    w = np.asarray(windows_s, dtype=np.float32).reshape(-1, 2).copy()
    if not np.isfinite(w).all():
        raise ValueError(f"ground-truth windows must be finite numbers, got {w.tolist()}")
    max_time = n_clips / fps
    w = np.clip(w, np.float32(0), np.float32(max_time))
    rev = w[:, 1] - w[:, 0] < 0
    w[rev] = w[rev][:, ::-1]
    half = 0.5 / fps
    for i in np.nonzero(w[:, 1] - w[:, 0] < np.float32(1 / fps))[0]:
        centre = np.float32(w[i].sum() / np.float32(2))
        centre = np.clip(centre, np.float32(half), np.float32(max_time - half))
        w[i, 0] = centre - np.float32(half)
        w[i, 1] = centre + np.float32(half)
    return w


def saliency_labels(anno: dict, n_clips: int, fps: float | None = None) -> np.ndarray:
    """Per-clip saliency labels of one annotation.

    QVHighlights (`relevant_clip_ids` + `saliency_scores`): sum of the 3 scores / 12 on
    the relevant clips, 0 elsewhere. Otherwise (Charades-STA, TACoS, Ego4D-NLQ): 1 on
    every clip a cleaned ground-truth window touches (clips ceil(start·fps) ..
    ceil(end·fps) − 1), 0 elsewhere; this needs `fps`.

    Returns:
        (T,) float32.

    Raises:
        ValueError: the annotation has neither form, or names no clip inside the video.
    """
    qid = anno.get("qid", "?")
    if "saliency_scores" in anno and "relevant_clip_ids" in anno:
        ids, scores = anno["relevant_clip_ids"], anno["saliency_scores"]
        if len(ids) != len(scores):
            raise ValueError(
                f"qid {qid}: relevant_clip_ids ({len(ids)}) and saliency_scores "
                f"({len(scores)}) differ in length"
            )
        sal = np.zeros(n_clips, dtype=np.float32)
        for idx, score in zip(ids, scores, strict=True):
            if 0 <= int(idx) < n_clips:
                sal[int(idx)] = sum(score) / MAX_SALIENCY
        return sal
    if "relevant_windows" not in anno:
        raise ValueError(
            f"qid {qid}: no saliency_scores/relevant_clip_ids and no "
            "relevant_windows to derive saliency labels from"
        )
    if fps is None:
        raise ValueError(f"qid {qid}: saliency from relevant_windows needs fps")
    windows = clean_windows(anno["relevant_windows"], n_clips, fps) * np.float32(fps)
    sal = np.zeros(n_clips, dtype=np.float32)
    for start, end in windows.tolist():
        sal[math.ceil(start) : math.ceil(end)] = 1.0
    if not sal.any():
        raise ValueError(f"qid {qid}: relevant_windows cover no clip of the video")
    return sal


def tvsum_saliency(anno: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """TVSum labels: (T, 20) annotator scores 1–5 -> (sum − 20) / 80, float32 (T,)."""
    a = np.asarray(anno, dtype=np.float32)
    return ((a.sum(axis=1) - TVSUM_ANNOTATORS) / (4 * TVSUM_ANNOTATORS)).astype(np.float32)


def youtube_saliency(match: Sequence[float] | np.ndarray) -> np.ndarray:
    """YouTube Highlights labels: per-clip match in {−1, 0, 1} -> (match + 1) / 2, float32
    (a borderline 0 becomes 0.5, which is not a positive: positives are > 0.5)."""
    return ((np.asarray(match, dtype=np.float32) + 1) / 2).astype(np.float32)


def positive_threshold(saliency: np.ndarray, dataset: str = "qvhighlights") -> float:
    """Clips with saliency strictly above this are positives for `sample_positive_clip`.

    0 for the grounding datasets, 0.5 for YouTube Highlights, the (lower) median for TVSum.
    """
    if dataset == "youtube":
        return 0.5
    if dataset == "tvsum":
        s = np.sort(np.asarray(saliency, dtype=np.float32))
        return float(s[(len(s) - 1) // 2])  # torch.median: the lower of the two middles
    return 0.0


def sample_positive_clip(
    saliency: np.ndarray, rng: random.Random | np.random.Generator, threshold: float = 0.0
) -> int:
    """Draw the positive clip used by the saliency and calibration losses.

    With a `random.Random` this is the original's `random.sample(positives, 1)` draw, so
    the same seed gives the same clip; a numpy Generator draws uniformly as well.

    Raises:
        ValueError: no clip has saliency above `threshold`.
    """
    positives = np.nonzero(np.asarray(saliency) > threshold)[0].tolist()
    if not positives:
        raise ValueError(f"no clip with saliency > {threshold}: cannot pick a positive clip")
    if isinstance(rng, random.Random):
        return int(rng.sample(positives, 1)[0])
    return int(positives[int(rng.integers(len(positives)))])
