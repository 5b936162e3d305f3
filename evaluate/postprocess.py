"""Inference post-processing (spec §4), exact to the original ``Grounding.evaluate`` (numpy).

Windows (:func:`postprocess_windows`), in float32 like the original torch code:

1. remember which rows end before the video's duration (taken *before* clamping);
2. clamp start and end to [0, duration];
3. for the remembered rows only, round start and end to the dataset unit
   (``round(x / unit) * unit``, round half to even like ``torch.round``);
4. greedy NMS: for i = 0..N-1, swap the highest-scored row among rows i.. into position i
   (the first one on ties), then update the score of every later row by its temporal IoU
   with row i: ``normal`` sets it to 0 when IoU >= threshold, ``linear`` multiplies it by
   1 - IoU. Rows are never removed;
5. sort all rows by score, descending (stable, so suppressed rows keep their NMS order;
   the original's torch sort leaves the order of equal scores unspecified).

Saliency (:func:`upsample_saliency`): each pyramid level of T_j scores is brought back to
the video's T clips by repeating every value int(T / T_j) times and padding the tail with
the last value (a level longer than T is max-pooled with window int(T_j / T), as the
original), and the max over levels is taken. The model multiplies the result by the
cosine similarity of clip and query embeddings.
"""

from __future__ import annotations

import numpy as np

NMS_KINDS = ("normal", "linear", "none")
QVH_UNIT_SECONDS = 2.0  # QVHighlights rounds windows to 2-s clips
NMS_THRESHOLD = 0.7  # IoU at which "normal" NMS suppresses (original default)


def _pairwise_iou(windows: np.ndarray) -> np.ndarray:
    """float32 temporal IoU of every pair of (N, 2) windows, nncore's operation order.

    ``(area_a + area_b) - inter`` is symmetric bit for bit, so row a holds exactly what the
    original computes when row a is the kept window. A zero union (two identical points)
    gives 0, where the original's 0/0 gives NaN (which never suppresses in ``normal`` NMS,
    but would turn a ``linear`` score into NaN).
    """
    start, end = windows[:, 0], windows[:, 1]
    area = end - start
    inter = np.clip(np.minimum(end[:, None], end) - np.maximum(start[:, None], start), 0, None)
    union = (area[:, None] + area) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def postprocess_windows(
    boundary: np.ndarray,
    duration: float,
    unit: float | None,
    nms: str = "normal",
    nms_threshold: float = NMS_THRESHOLD,
) -> np.ndarray:
    """Clamp, round and de-duplicate the raw windows of one query.

    Args:
        boundary: (N, 3) raw [start_s, end_s, score] rows (the model's top-scored points).
        duration: video duration in seconds.
        unit: rounding unit in seconds (2 for QVHighlights, 0.1 for Charades-STA); None or
            <= 0 disables rounding.
        nms: "normal" (zero the scores of rows with IoU >= ``nms_threshold``), "linear"
            (scale scores by 1 - IoU) or "none" (no NMS and no re-sorting).
        nms_threshold: IoU threshold of "normal" NMS.

    Returns:
        (N, 3) float32 rows, sorted by score descending unless ``nms`` is "none".

    Raises:
        ValueError: bad shape, non-finite values or an unknown ``nms``.
    """
    if nms not in NMS_KINDS:
        raise ValueError(f"unknown nms {nms!r}; choose one of {', '.join(NMS_KINDS)}")
    bnd = np.array(boundary, dtype=np.float32, copy=True)
    if bnd.ndim != 2 or bnd.shape[1] != 3:
        raise ValueError(f"boundary must be (N, 3) [start, end, score], got shape {bnd.shape}")
    if not np.isfinite(bnd).all():
        raise ValueError("boundary has NaN or infinite values")
    dur = np.float32(duration)
    inside = bnd[:, 1] < dur  # before clamping, as the original
    bnd[:, :2] = np.minimum(np.maximum(bnd[:, :2], np.float32(0)), dur)
    if unit is not None and unit > 0:
        step = np.float32(unit)
        bnd[inside, :2] = np.round(bnd[inside, :2] / step) * step
    if nms == "none":
        return bnd
    threshold = np.float32(nms_threshold)
    iou = _pairwise_iou(bnd[:, :2])  # windows never change during NMS, only the scores
    scores = bnd[:, 2].copy()
    perm = np.arange(len(bnd))  # perm[i] = original row now at position i
    for i in range(len(bnd)):
        rest = perm[i:]
        if not scores[rest].any():
            break  # every remaining score is 0: no more swaps or changes
        j = int(np.argmax(scores[rest]))
        perm[i], perm[i + j] = perm[i + j], perm[i]
        later = perm[i + 1 :]
        overlap = iou[perm[i], later]
        if nms == "normal":
            scores[later[overlap >= threshold]] = 0
        else:
            scores[later] *= np.float32(1) - overlap
    bnd = bnd[perm]
    bnd[:, 2] = scores[perm]
    return bnd[np.argsort(-bnd[:, 2], kind="stable")]


def upsample_saliency(level_scores: list[np.ndarray], n_clips: int) -> np.ndarray:
    """Max over pyramid levels of their per-point scores spread back to ``n_clips`` clips.

    Args:
        level_scores: one 1-D array per pyramid level (T_j scores, level 0 first).
        n_clips: T, the number of clips of the video.

    Returns:
        (n_clips,) array, dtype of the inputs.

    Raises:
        ValueError: no level, an empty level, or a level that cannot map to ``n_clips``.
    """
    if not level_scores or n_clips <= 0:
        raise ValueError(
            f"need at least one level and n_clips > 0, got {len(level_scores)}, {n_clips}"
        )
    spread = []
    for j, scores in enumerate(level_scores):
        scores = np.asarray(scores).reshape(-1)
        size = len(scores)
        if size == 0:
            raise ValueError(f"pyramid level {j} has no scores")
        if n_clips >= size:
            out = np.repeat(scores, n_clips // size)
            out = np.concatenate([out, np.repeat(out[-1:], n_clips - len(out))])
        else:  # max-pool, window = stride = int(T_j / T), as F.max_pool1d
            scale = size // n_clips
            out = scores[: (size // scale) * scale].reshape(-1, scale).max(axis=1)
        if len(out) != n_clips:
            raise ValueError(f"pyramid level {j} of {size} scores cannot map to {n_clips} clips")
        spread.append(out)
    return np.max(np.stack(spread), axis=0)
