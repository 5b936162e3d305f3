"""QVHighlights metrics, exact to the official evaluator (``moment_detr`` ``standalone_eval``).

Moment retrieval (MR), for the GT-length ranges ``full`` (all windows), ``short`` (0, 10],
``middle`` (10, 30] and ``long`` (30, 150] seconds (GT windows outside a range are dropped,
queries left without any are dropped from that range):

- ``MR-{range}-mAP@θ``: mean over queries of the interpolated detection AP of the first 10
  predicted windows at IoU θ in 0.5:0.05:0.95; ``MR-{range}-mAP`` averages the 10 values.
- ``MR-{range}-R1@θ``: first predicted window vs. the GT window it overlaps most.
- Extras (R2-Tuning's evaluator): ``MR-full-R1@0.3``, ``MR-full-R5@{0.3,0.5,0.7}``,
  ``MR-full-mIoU``.

Highlight detection (HL), with the clip labels ``score >= 2`` (Fair), ``>= 3`` (Good),
``>= 4`` (VeryGood) of each of the 3 annotators:

- ``HL-min-{level}-mAP``: per query and annotator, AP of the saliency scores (truncated or
  zero-padded to int(duration / 2) clips, as the original), averaged over both.
- ``HL-min-{level}-Hit1``: the top-scored clip (first on ties) is positive for at least one
  annotator; a clip index beyond the video counts as a miss.

Paper summary (Table 1): ``R1@0.5``, ``R1@0.7``, ``mAP@0.5``, ``mAP@0.75``, ``mAP`` (full
range) and ``HD-mAP``, ``HIT@1`` (VeryGood). All values are percentages rounded to 2
decimals like the original. Beyond the original: an empty window list or saliency list
scores as no hit (AP 0, Hit 0; the original crashes), queries without GT windows are left
out of MR and counted in ``n_no_gt``, a query without relevant clips gets HL AP 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from r2.evaluate.ap import clip_ap, detection_ap
from r2.evaluate.grounding import (
    percent,
    recall_at_k,
    require_windows,
    top_k_iou,
    with_gt_windows,
)
from r2.evaluate.records import EvalInputError, GroundTruth, Prediction

log = logging.getLogger(__name__)

MAP_THRESHOLDS = [float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10)]
MAX_PRED_WINDOWS = 10  # mAP uses the first 10 predicted windows of each query
#: GT window length ranges in seconds, (low, high]; "full" keeps every window.
LENGTH_RANGES = {"full": None, "short": (0, 10), "middle": (10, 30), "long": (30, 150)}
HL_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}  # minimum annotator score of a positive clip
#: query-length bins in words (paper Table 6), (low, high].
WORD_BINS = {
    "1-10": (0, 10),
    "11-20": (10, 20),
    "21-30": (20, 30),
    "31-40": (30, 40),
    "41+": (40, None),
}

Item = tuple[np.ndarray, np.ndarray]  # (predicted windows (N, 3), GT windows (M, 2))


def _mr_range(items: list[Item], name: str) -> tuple[dict[str, float], np.ndarray]:
    """mAP and R1 of one length range; also returns the per-query AP array (Q, 10)."""
    ap = np.array([detection_ap(w[:MAX_PRED_WINDOWS], gt, MAP_THRESHOLDS) for w, gt in items])
    per_thr = ap.mean(0)
    out = {f"MR-{name}-mAP": percent(np.mean(per_thr))}
    out.update(
        {f"MR-{name}-mAP@{t}": percent(v) for t, v in zip(MAP_THRESHOLDS, per_thr, strict=True)}
    )
    r1 = np.array([top_k_iou(w, gt, 1) for w, gt in items])
    out.update({f"MR-{name}-R1@{t}": v for t, v in recall_at_k(r1, MAP_THRESHOLDS).items()})
    if name == "full":
        out["MR-full-R1@0.3"] = recall_at_k(r1, [0.3])["0.3"]
        r5 = np.array([top_k_iou(w, gt, 5) for w, gt in items])
        out.update({f"MR-full-R5@{t}": v for t, v in recall_at_k(r5, (0.3, 0.5, 0.7)).items()})
        out["MR-full-mIoU"] = percent(np.mean(r1))
    return out, ap


def _in_range(gt: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    if bounds is None:
        return gt
    length = gt[:, 1] - gt[:, 0]
    return gt[(bounds[0] < length) & (length <= bounds[1])]


def moment_metrics(
    pairs: list[tuple[Prediction, GroundTruth]], by_query_length: bool = False
) -> dict[str, float]:
    """All MR metrics (every range, extras, optional query-length report) of matched pairs."""
    require_windows(pairs)
    scored, n_no_gt = with_gt_windows(pairs)
    out: dict[str, float] = {}
    full_ap = np.zeros((0, len(MAP_THRESHOLDS)))
    for name, bounds in LENGTH_RANGES.items():
        items = [(p.windows, _in_range(g.windows, bounds)) for p, g in scored]
        items = [(w, gt) for w, gt in items if len(gt)]
        if not items:
            log.debug("no query has a GT window in range %r: its MR metrics are omitted", name)
            continue
        metrics, ap = _mr_range(items, name)
        out.update(metrics)
        if name == "full":
            full_ap = ap
    if by_query_length and scored:
        out.update(query_length_breakdown([g for _, g in scored], full_ap))
    out["n_no_gt"] = n_no_gt
    return out


def query_length_breakdown(gts: list[GroundTruth], ap: np.ndarray) -> dict[str, float]:
    """Full-range MR mAP by query length in words (paper Table 6).

    Args:
        gts: ground truth of the scored queries, aligned with ``ap``.
        ap: (Q, 10) per-query detection AP from the full range.

    Returns:
        ``MR-words-{bin}-mAP`` for non-empty bins and ``MR-words-{bin}-n`` (query counts).
    """
    words = []
    for gt in gts:
        if gt.query is None:
            raise EvalInputError(f"{gt.where}: field 'query': missing (needed by query length)")
        words.append(len(gt.query.split()))
    words = np.array(words)
    out: dict[str, float] = {}
    for name, (low, high) in WORD_BINS.items():
        sel = (words > low) if high is None else (words > low) & (words <= high)
        if low == 0:
            sel |= words == 0  # an empty query joins the shortest bin
        if sel.any():
            out[f"MR-words-{name}-mAP"] = percent(np.mean(ap[sel].mean(0)))
        out[f"MR-words-{name}-n"] = int(sel.sum())
    return out


def _hl_query(saliency: np.ndarray, binary: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-annotator AP (A,) and Hit@1 of one query; ``binary`` is (n_clips, A) 0/1."""
    n_clips, n_annot = binary.shape
    if len(saliency) == 0:
        return np.zeros(n_annot), 0.0
    top = int(np.argmax(saliency))
    hit = float(np.max(binary[top])) if top < n_clips else 0.0
    scores = np.zeros(n_clips)
    scores[: min(n_clips, len(saliency))] = saliency[:n_clips]
    return clip_ap(binary, scores), hit


def highlight_metrics(pairs: list[tuple[Prediction, GroundTruth]]) -> dict[str, float]:
    """``HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}`` of matched pairs (all must carry saliency)."""
    out: dict[str, float] = {}
    for level, min_score in HL_LEVELS.items():
        ap_scores, hits = [], []
        for pred, gt in pairs:
            binary = (gt.clip_scores >= min_score).astype(float)
            ap, hit = _hl_query(pred.saliency, binary)
            ap_scores.append(ap)
            hits.append(hit)
        out[f"HL-min-{level}-mAP"] = percent(np.mean(np.array(ap_scores)))
        out[f"HL-min-{level}-Hit1"] = percent(np.mean(np.array(hits)))
    return out


def qvhighlights_metrics(
    pairs: list[tuple[Prediction, GroundTruth]], by_query_length: bool = False
) -> dict[str, float]:
    """Every QVHighlights metric of matched pairs, paper summary first.

    MR metrics need ``pred_relevant_windows`` in the predictions, HL metrics need
    ``pred_saliency_scores`` and GT ``relevant_clip_ids`` / ``saliency_scores``; a family
    is skipped (and logged) when its fields are absent from every line, and an error is
    raised when only some lines have them.
    """
    out: dict[str, float] = {}
    if _check_field(pairs, "pred_relevant_windows", lambda p, g: p.windows is not None, pred=True):
        out.update(moment_metrics(pairs, by_query_length))
    has_sal = _check_field(pairs, "pred_saliency_scores", lambda p, g: p.saliency is not None, True)
    has_gt = has_sal and _check_field(
        pairs, "saliency_scores", lambda p, g: g.clip_scores is not None, False
    )
    if has_sal and has_gt:
        out.update(highlight_metrics(pairs))
    elif has_sal:
        log.warning("ground truth has no relevant_clip_ids/saliency_scores: HL metrics skipped")
    summary = {
        "R1@0.5": "MR-full-R1@0.5",
        "R1@0.7": "MR-full-R1@0.7",
        "mAP@0.5": "MR-full-mAP@0.5",
        "mAP@0.75": "MR-full-mAP@0.75",
        "mAP": "MR-full-mAP",
        "HD-mAP": "HL-min-VeryGood-mAP",
        "HIT@1": "HL-min-VeryGood-Hit1",
    }
    head = {short: out[key] for short, key in summary.items() if key in out}
    counts = {k: out.pop(k) for k in [k for k in out if k.startswith("n_")]}
    return {**head, **out, "n_queries": len(pairs), **counts}


def _check_field(
    pairs: list[tuple[Prediction, GroundTruth]],
    field: str,
    has: Callable[[Prediction, GroundTruth], bool],
    pred: bool,
) -> bool:
    """Whether all pairs have ``field``; False if none has; an error if only some have it."""
    flags = [has(p, g) for p, g in pairs]
    if all(flags) or not any(flags):
        if not any(flags):
            log.info("field %r absent from every %s line", field, "prediction" if pred else "GT")
        return all(flags)
    odd = next(i for i, f in enumerate(flags) if not f)
    where = pairs[odd][0].where if pred else pairs[odd][1].where
    raise EvalInputError(f"{where}: field '{field}': missing (other lines have it)")


def official_layout(metrics: dict[str, float]) -> dict:
    """Rebuild the nested JSON the official ``eval.py`` writes (``brief``, ranges, HL levels)."""
    brief_mr = [
        "MR-full-mAP",
        "MR-full-mAP@0.5",
        "MR-full-mAP@0.75",
        "MR-short-mAP",
        "MR-middle-mAP",
        "MR-long-mAP",
        "MR-full-R1@0.5",
        "MR-full-R1@0.7",
    ]
    brief = {k: metrics[k] for k in sorted(brief_mr) if k in metrics}
    hl = {}
    for level in HL_LEVELS:
        for kind in ("mAP", "Hit1"):
            key = f"HL-min-{level}-{kind}"
            if key in metrics:
                brief[key] = metrics[key]
                hl.setdefault(f"HL-min-{level}", {})[f"HL-{kind}"] = metrics[key]
    ranges = {}
    for name in LENGTH_RANGES:
        if f"MR-{name}-mAP" not in metrics:
            continue
        mean_ap = {str(t): metrics[f"MR-{name}-mAP@{t}"] for t in MAP_THRESHOLDS}
        mean_ap["average"] = metrics[f"MR-{name}-mAP"]
        r1 = {str(t): metrics[f"MR-{name}-R1@{t}"] for t in MAP_THRESHOLDS}
        ranges[name] = {"MR-mAP": mean_ap, "MR-R1": r1}
    return {"brief": brief, **dict(sorted({**hl, **ranges}.items()))}


__all__ = [
    "HL_LEVELS",
    "LENGTH_RANGES",
    "MAP_THRESHOLDS",
    "highlight_metrics",
    "moment_metrics",
    "official_layout",
    "query_length_breakdown",
    "qvhighlights_metrics",
]
