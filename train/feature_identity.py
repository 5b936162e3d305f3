"""The cached features of an annotation are the ones it describes: query text and video fps.

Features are looked up by id (qid, vid), so an annotation edited after extraction would
silently get the old features: a query whose text changed, or a video annotated at another
clip rate. Every consumer (training, validation, `r2 eval --checkpoint`) runs these checks
through `prepare_items`; a mismatch is an error naming file:line and qid that says to re-run
`r2 extract` (which re-encodes exactly the changed queries). The tokenizer side of a query's
identity is the cache's `tokenizer_fingerprint`, compared with a checkpoint's by
`r2.train.checkpoint.check_cache_compatible` and with a live tokenizer by `r2.api`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from r2.errors import UsageError

if TYPE_CHECKING:
    from r2.cache import FeatureCache

    from .annotations import Annotation

MAX_LISTED = 5  # mismatches named in one message
FPS_RTOL = 1e-9  # annotation "fps" vs cached fps


class StaleFeaturesError(UsageError, ValueError):
    """Cached features were made from another query text or another fps than annotated."""


def _fps_problem(a: Annotation, cache: FeatureCache) -> str | None:
    fps = a.data.get("fps")
    if fps is None:
        return None
    cached = cache.video_fps(a.vid)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps):
        return f"{a.where}: field 'fps' must be a number, got {fps!r}"
    if abs(fps - cached) > FPS_RTOL * cached:
        return (f"{a.where}: field 'fps' {fps:g} but video {a.vid!r} is cached at {cached:g} "
                "clips/s")  # fmt: skip
    return None


def _text_problem(a: Annotation, cache: FeatureCache) -> str | None:
    text = a.data.get("query")
    if text is None:
        return None  # nothing to compare (the row gives no text)
    cached = cache.query_record(a.qid).text
    if text != cached:
        return (f"{a.where}: qid {a.qid}: the query text {_short(text)!r} differs from the "
                f"cached {_short(cached)!r}")  # fmt: skip
    return None


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def check_features_match(annos: list[Annotation], cache: FeatureCache) -> None:
    """Refuse annotations whose cached query text or video fps differ from what they say.

    Args:
        annos: annotations whose ids are all in `cache` (after `check_coverage`).
        cache: the feature cache.

    Raises:
        StaleFeaturesError: counting the mismatches and naming the first few (file:line,
            qid), with how to fix them.
    """
    texts = [p for p in (_text_problem(a, cache) for a in annos) if p]
    rates = [p for p in (_fps_problem(a, cache) for a in annos) if p]
    if not texts and not rates:
        return
    parts = []
    if texts:
        parts.append(f"{len(texts)} quer(ies) changed since their features were extracted: "
                     + "; ".join(texts[:MAX_LISTED]))  # fmt: skip
    if rates:
        parts.append(f"{len(rates)} row(s) give another fps than the cached video: "
                     + "; ".join(rates[:MAX_LISTED]))  # fmt: skip
    files = sorted({a.where.rsplit(":", 1)[0] for a in annos if ":" in a.where})
    anno = " ".join(f"--anno {f}" for f in files) or "--anno ANNOTATIONS.jsonl"
    raise StaleFeaturesError(
        f"{cache.path} holds features of other annotations: "
        + " | ".join(parts)
        + f". Re-run `r2 extract VIDEOS {anno} --out {cache.path}`: it re-encodes the changed "
        "queries and re-extracts the videos whose fps changed."
    )
