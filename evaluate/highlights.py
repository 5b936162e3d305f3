"""YouTube Highlights mAP and TVSum top-5 mAP, per domain and averaged (paper Tables 3 and 4).

Matches R2-Tuning's ``datasets/youtube.py`` and ``datasets/tvsum.py`` ``evaluate`` (the
same procedure as UMT and lighthouse):

- Clips are ranked by predicted saliency, best first.
- YouTube Highlights: a clip is positive when its label is > 0; the video's AP is
  :func:`~r2.evaluate.ap.ranked_ap` of the whole ranked list; a domain's mAP is the mean
  over its videos (a video without positive clip scores 0 and still counts, as in the
  original).
- TVSum: for each of the 20 annotators, a clip is positive when its score is above that
  annotator's median over the video (torch's lower median for an even count); the AP is
  ``ranked_ap`` of the top 5 ranked clips only (recall relative to the positives among
  them). A domain's mAP is the mean over annotators of the mean over its videos.
- The reported ``mAP`` is the unweighted mean of the domain values. Percentages, 2 decimals.

A saliency list shorter than the labels (the released pipeline cuts a video and its labels
to the shorter when they differ by fewer than 5 clips, and so does r2's inference) is scored
as the original does: only the predicted clips are ranked (`label[argsort(saliency)]`), the
TVSum medians still come from all of the video's labels. Differences from the original,
documented choices for inputs it never produces: ties in saliency are ranked in clip order
(stable; torch's unstable sort gives an arbitrary order); a saliency list longer than the
video is truncated; an empty list scores AP 0.
"""

from __future__ import annotations

import logging

import numpy as np

from r2.evaluate.ap import ranked_ap
from r2.evaluate.grounding import percent
from r2.evaluate.records import EvalInputError, GroundTruth, Prediction

log = logging.getLogger(__name__)

YOUTUBE_DOMAINS = ("dog", "gymnastics", "parkour", "skating", "skiing", "surfing")  # paper order
TVSUM_DOMAINS = ("VT", "VU", "GA", "MS", "PK", "PR", "FM", "BK", "BT", "DS")  # paper order
TVSUM_TOP_K = 5  # TVSum AP looks at the 5 best-ranked clips only


def rank_clips(saliency: np.ndarray, n_clips: int) -> np.ndarray:
    """Indices of the scored clips best first: stable descending sort of the first
    ``n_clips`` scores (clips without a score are not ranked, as in the original)."""
    return np.argsort(-saliency[:n_clips], kind="stable").astype(int)


def youtube_ap(label: np.ndarray, saliency: np.ndarray) -> float:
    """AP of one YouTube Highlights video; ``label`` is (n_clips, 1), positive when > 0."""
    if len(saliency) == 0:
        return 0.0
    positive = (label[:, 0] > 0).astype(float)
    return float(ranked_ap(positive[rank_clips(saliency, len(positive))].tolist()))


def tvsum_ap(label: np.ndarray, saliency: np.ndarray, k: int = TVSUM_TOP_K) -> np.ndarray:
    """Top-k AP of one TVSum video for each annotator; ``label`` is (n_clips, annotators)."""
    n_clips, n_annot = label.shape
    if len(saliency) == 0:
        return np.zeros(n_annot)
    order = rank_clips(saliency, n_clips)
    lower_median = np.sort(label, axis=0)[(n_clips - 1) // 2]  # (A,)
    positive = (label > lower_median).astype(float)
    return np.array([ranked_ap(positive[order, a][:k].tolist()) for a in range(n_annot)])


def _domain_order(domains: set[str], known: tuple[str, ...]) -> list[str]:
    return [d for d in known if d in domains] + sorted(domains - set(known))


def _check(pairs: list[tuple[Prediction, GroundTruth]], dataset: str) -> None:
    widths = set()
    mismatched = 0
    for pred, gt in pairs:
        if pred.saliency is None:
            raise EvalInputError(f"{pred.where}: field 'pred_saliency_scores': missing")
        if dataset == "youtube" and gt.label.shape[1] != 1:
            raise EvalInputError(f"{gt.where}: field 'label': needs one value per clip")
        widths.add(gt.label.shape[1])
        mismatched += len(pred.saliency) != len(gt.label)
    if dataset == "tvsum" and len(widths) > 1:
        raise EvalInputError(f"TVSum labels have different annotator counts: {sorted(widths)}")
    if mismatched:
        log.warning(
            "%d predictions have a saliency list longer or shorter than the video's labels "
            "(longer: truncated; shorter: missing clips ranked last)",
            mismatched,
        )


def highlight_metrics(
    pairs: list[tuple[Prediction, GroundTruth]], dataset: str
) -> dict[str, float]:
    """Per-domain and average mAP for ``dataset`` "youtube" or "tvsum".

    Returns:
        ``mAP`` (average over domains) first, then ``mAP-{domain}`` in the paper's order,
        ``n_queries`` and, for YouTube, ``n_no_positive`` (videos without positive clip).
    """
    _check(pairs, dataset)
    by_domain: dict[str, list[tuple[Prediction, GroundTruth]]] = {}
    for pred, gt in pairs:
        by_domain.setdefault(gt.domain, []).append((pred, gt))
    known = YOUTUBE_DOMAINS if dataset == "youtube" else TVSUM_DOMAINS
    per_domain = {}
    for domain in _domain_order(set(by_domain), known):
        videos = by_domain[domain]
        if dataset == "youtube":
            collected = [youtube_ap(g.label, p.saliency) for p, g in videos]
        else:
            aps = [tvsum_ap(g.label, p.saliency) for p, g in videos]
            collected = [sum(ap[a] for ap in aps) / len(aps) for a in range(len(aps[0]))]
        per_domain[domain] = sum(collected) / len(collected)
    out = {"mAP": percent(float(np.mean(list(per_domain.values()))))}
    out.update({f"mAP-{d}": percent(v) for d, v in per_domain.items()})
    out["n_queries"] = len(pairs)
    if dataset == "youtube":
        no_positive = sum(not (g.label[:, 0] > 0).any() for _, g in pairs)
        if no_positive:
            log.warning(
                "%d videos have no positive clip: AP 0 (counted, as the original)", no_positive
            )
        out["n_no_positive"] = no_positive
    return out
