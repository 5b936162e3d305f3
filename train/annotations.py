"""From annotation lines to training/inference items (spec §3 labels).

- `read_annotations` parses QVHighlights-schema JSON Lines (qid, query, vid, duration,
  relevant_windows, relevant_clip_ids, saliency_scores; TVSum/YouTube `label`/`match`),
  naming file:line:field on any problem.
- `prepare_items` checks every query against the cache (missing videos/queries are an
  error with counts, or dropped with `skip_missing`; a changed query text or fps is an
  error, see feature_identity.py), applies the minimum-length filter and builds the labels
  once with each video's own fps (bad labels are skipped with a count, never silently).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from r2.cache import FeatureCache
from r2.data.check import LABEL_CLIP_SLACK, TACOS_CAMERA, AnnotationError
from r2.data.check import read_annotations as read_checked
from r2.data.schema import Requirements
from r2.errors import UsageError

from .feature_identity import check_features_match
from .labels import (
    clean_windows,
    positive_threshold,
    saliency_labels,
    tvsum_saliency,
    youtube_saliency,
)

log = logging.getLogger(__name__)

DURATION_TOLERANCE_S = 4.0  # annotation vs cached duration: larger gaps are reported
MAX_LISTED = 5  # ids named in an error / warning message
HIGHLIGHT_DATASETS = ("youtube", "tvsum")  # saliency-only labels, no windows


class MissingFeaturesError(UsageError, ValueError):
    """Queries reference videos or queries that are not in the cache (counts in message)."""


@dataclass
class Annotation:
    """One annotation line: its raw dict, where it came from, and the ids as strings."""

    data: dict[str, Any]
    where: str  # "file:line"
    qid: str
    vid: str


@dataclass
class Item:
    """One usable query: ids, sizes and (training) labels prepared from an annotation."""

    anno: Annotation
    n_clips: int
    duration: float
    fps: float = 0.0  # clips per second of the video's features (cache.video_fps); 0: unknown
    boundary: np.ndarray | None = None  # (N, 2) cleaned windows in seconds
    saliency: np.ndarray | None = None  # (T,) labels
    threshold: float = 0.0  # positive clips have saliency > threshold


# ---------------------------------------------------------------- annotations


def read_annotations(
    path: str | os.PathLike, *, strict: bool = False, what: str = "annotations"
) -> list[Annotation]:
    """Read a JSON Lines annotation file with the strict checker of `r2.data` (blank lines
    ignored; the same rules as `r2 data check`).

    Errors stop the run (all counted, the first few quoted with file:line:field); warnings,
    e.g. the window repairs training applies, are logged once, with the first qids.

    Args:
        path: the annotation file.
        strict: window repairs are errors (`r2 train --strict-anno`).
        what: how the file is named in the warning summary.

    Raises:
        AnnotationError: unreadable file, invalid JSON, a limit exceeded, or a missing or
            invalid field, naming `file:line` and the field.
    """
    report = read_checked(path, Requirements(vid=True, query=True), strict=strict, what=what)
    return [Annotation(data=r.data, where=r.where, qid=r.qid, vid=r.vid) for r in report.rows]


# ---------------------------------------------------------------- items and labels


def check_coverage(
    annos: list[Annotation], cache: FeatureCache, skip_missing: bool = False
) -> list[Annotation]:
    """Keep the annotations whose video and query features are in the cache.

    TACoS annotations name videos "sXX-dYY" while the released files (hence the cache ids)
    are "sXX-dYY-cam-002": such ids are mapped, as the original does.

    Raises:
        MissingFeaturesError: some are missing and `skip_missing` is False; the message
            gives the counts and the first few ids with their lines.
    """
    videos, queries = set(cache.video_ids()), set(cache.query_ids())
    for a in annos:
        if a.vid not in videos and f"{a.vid}{TACOS_CAMERA}" in videos:
            a.vid = f"{a.vid}{TACOS_CAMERA}"
    no_video = [a for a in annos if a.vid not in videos]
    no_query = [a for a in annos if a.qid not in queries]
    if not no_video and not no_query:
        return annos
    parts = []
    if no_video:
        first = ", ".join(f"{a.vid} ({a.where})" for a in no_video[:MAX_LISTED])
        parts.append(
            f"{len(no_video)} of {len(annos)} queries reference videos not in "
            f"{cache.path}: first few: {first}"
        )
    if no_query:
        first = ", ".join(f"qid {a.qid} ({a.where})" for a in no_query[:MAX_LISTED])
        parts.append(
            f"{len(no_query)} of {len(annos)} queries have no query features in "
            f"{cache.path}: first few: {first}"
        )
    if not skip_missing:
        raise MissingFeaturesError(
            "; ".join(parts) + ". Extract them (r2 extract) or pass --skip-missing to drop them."
        )
    bad = {id(a) for a in no_video + no_query}
    kept = [a for a in annos if id(a) not in bad]
    log.warning(
        "skipping %d of %d queries without features: %s", len(bad), len(annos), "; ".join(parts)
    )
    if not kept:
        raise MissingFeaturesError(
            "no query left after dropping those without features: " + "; ".join(parts)
        )
    return kept


def build_labels(item: Item, dataset: str, fps: float) -> None:
    """Fill `item.boundary`, `item.saliency`, `item.threshold` (spec §3) in place.

    Raises:
        ValueError: the annotation gives no usable label for training.
    """
    data, t = item.anno.data, item.n_clips
    if dataset in HIGHLIGHT_DATASETS:
        if dataset == "tvsum":
            sal = tvsum_saliency(data["label"])
        elif data.get("match") is None:
            raise ValueError("YouTube Highlights training needs 'match' (-1 / 0 / 1 per clip)")
        else:
            sal = youtube_saliency(data["match"])
        if len(sal) < t or len(sal) - t >= LABEL_CLIP_SLACK:
            raise ValueError(f"{len(sal)} per-clip labels for {t} cached clips (they may "
                             f"differ by fewer than {LABEL_CLIP_SLACK})")  # fmt: skip
        item.saliency = sal[:t]
    else:
        if data.get("relevant_windows") is None:
            raise ValueError("no relevant_windows to train on")
        item.boundary = clean_windows(data["relevant_windows"], t, fps)
        item.saliency = saliency_labels(data, t, fps)
    item.threshold = positive_threshold(item.saliency, dataset)
    if not (item.saliency > item.threshold).any():
        raise ValueError(
            f"no positive clip (all saliency labels are at or below {item.threshold:g})"
        )


def _label_clips(anno: Annotation, n_clips: int, cut: list[str]) -> int:
    """YouTube / TVSum: T cut to the labels when they differ by < LABEL_CLIP_SLACK clips
    (the released pipeline cuts video and labels to the shorter); noted in `cut`."""
    labels = anno.data.get("label")
    if labels is None:
        labels = anno.data.get("match")
    if not isinstance(labels, list) or len(labels) == n_clips:
        return n_clips
    if abs(len(labels) - n_clips) < LABEL_CLIP_SLACK:
        cut.append(f"{anno.vid} ({len(labels)} labels, {n_clips} clips)")
        return min(n_clips, len(labels))
    return n_clips


def _log_cut(cut: list[str]) -> None:
    if cut:
        log.info("%d videos: per-clip labels and cached clips differ by fewer than %d; both "
                 "cut to the shorter, as the released pipeline: %s", len(cut),
                 LABEL_CLIP_SLACK, "; ".join(cut[:MAX_LISTED]))  # fmt: skip


def prepare_items(
    annos: list[Annotation],
    cache: FeatureCache,
    dataset: str,
    *,
    train: bool,
    min_video_len: float | None = None,
    skip_missing: bool = False,
) -> list[Item]:
    """Check coverage, filter by length (training) and build labels (training).

    Annotations whose labels are unusable for training are skipped with a warning that
    counts them and names the first few (never silently).
    """
    annos = check_coverage(annos, cache, skip_missing)
    check_features_match(annos, cache)  # query texts and fps are what was extracted
    items, short, bad, far, cut = [], 0, [], [], []
    for a in annos:
        record, fps = cache.video_record(a.vid), cache.video_fps(a.vid)
        duration = float(a.data.get("duration") or record.duration)
        if train and min_video_len and duration < min_video_len:
            short += 1
            continue
        if abs(duration - record.duration) > DURATION_TOLERANCE_S:
            far.append(f"{a.vid} ({duration:.1f} s annotated, {record.duration:.1f} s cached)")
        n_clips = record.n_clips
        if dataset in HIGHLIGHT_DATASETS:
            n_clips = _label_clips(a, n_clips, cut)
        item = Item(anno=a, n_clips=n_clips, duration=duration, fps=fps)
        if train:
            try:
                build_labels(item, dataset, fps)
            except (ValueError, KeyError, TypeError) as exc:
                bad.append(f"{a.where}: {exc}")
                continue
        items.append(item)
    if short:
        log.info(
            "dropped %d of %d training queries on videos shorter than %g s (preset)",
            short,
            len(annos),
            min_video_len,
        )
    if far:
        log.warning(
            "%d queries: annotated duration differs from the cached video by more "
            "than %g s (wrong video?): %s",
            len(far),
            DURATION_TOLERANCE_S,
            "; ".join(far[:MAX_LISTED]),
        )
    if bad:
        log.warning(
            "skipped %d queries with unusable labels: %s", len(bad), "; ".join(bad[:MAX_LISTED])
        )
    _log_cut(cut)
    if not items:
        raise AnnotationError("no usable query left (see the messages above)")
    return items
