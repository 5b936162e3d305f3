"""Evaluate a trained checkpoint on a split: inference over the cache, submission file, metrics.

`evaluate_checkpoint` is what `r2 eval --checkpoint RUN --cache X.h5 --anno SPLIT.jsonl` runs.
A split whose rows carry no ground truth (e.g. QVHighlights test) yields the submission file
and no metrics.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.jsonl"  # submission file written in the output folder
METRICS_NAME = "metrics.json"
GT_FIELDS = ("relevant_windows", "saliency_scores", "label")  # any one marks a labelled row


@dataclass
class SplitResult:
    """Predictions (QVHighlights submission rows), metrics (None without ground truth), paths."""

    predictions: list[dict[str, Any]]
    metrics: dict[str, float] | None
    dataset: str
    predictions_path: Path | None
    metrics_path: Path | None


def has_ground_truth(rows: list[dict[str, Any]]) -> bool:
    """True when every row is labelled; False when none is; an error for a mix."""
    labelled = [any(f in r for f in GT_FIELDS) for r in rows]
    if all(labelled):
        return bool(rows)
    if not any(labelled):
        return False
    first = labelled.index(False)
    from r2.evaluate.records import EvalInputError

    raise EvalInputError(
        f"{sum(labelled)} of {len(rows)} annotation rows have ground truth but row {first + 1} "
        f"(qid {rows[first].get('qid')}) has none: score a labelled split or a test split, not both"
    )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    cache: str | os.PathLike,
    anno: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    batch_size: int = 1,
    skip_missing: bool = False,
) -> SplitResult:
    """Run a checkpoint over the queries of `anno` (features from `cache`) and score them.

    Args:
        checkpoint: run folder (its best.safetensors) or a `.safetensors` checkpoint.
        cache: the feature cache holding the split's videos and queries; it must have been
            extracted with the checkpoint's CLIP settings (refused otherwise).
        anno: QVHighlights-schema JSON Lines of the split (ground truth optional).
        out_dir: where `predictions.jsonl` and `metrics.json` go; None writes nothing.
        device: "auto", "cpu" or "cuda".
        batch_size: samples per forward (only used by padding-invariant models).
        skip_missing: drop queries whose features are not cached (counted) instead of failing.

    Returns:
        The submission rows, the metrics (None for a split without ground truth), the paths.
    """
    from r2.cache import read_settings
    from r2.evaluate import evaluate_records
    from r2.evaluate.inference import predict_split
    from r2.files import write_text_atomic
    from r2.train.checkpoint import check_cache_compatible, load_checkpoint, preset_from_meta
    from r2.train.data import read_annotations
    from r2.train.loop import resolve_device

    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=dev)
    check_cache_compatible(meta, read_settings(cache))
    preset = preset_from_meta(meta) if meta.get("preset") else None
    dataset = preset.name if preset is not None else "qvhighlights"
    annos = read_annotations(Path(anno))  # keep file:line for messages
    rows = [a.data for a in annos]
    labelled = has_ground_truth(rows)
    log.info("predicting %d queries of %s with %s on %s", len(rows), anno, checkpoint, dev)
    preds = predict_split(model, cache, annos, preset or dataset, device=dev,
                          batch_size=batch_size, skip_missing=skip_missing)  # fmt: skip
    metrics = None
    if labelled:
        kept = {str(p["qid"]) for p in preds}
        gts = [r for r in rows if str(r["qid"]) in kept]
        metrics = evaluate_records(preds, gts, dataset)
    pred_path = metrics_path = None
    if out_dir is not None:
        out = Path(out_dir)
        pred_path = write_text_atomic(
            out / PREDICTIONS_NAME, "".join(json.dumps(p) + "\n" for p in preds)
        )
        if metrics is not None:
            text = json.dumps(metrics, indent=2) + "\n"
            metrics_path = write_text_atomic(out / METRICS_NAME, text)
        log.info("wrote %s%s", pred_path, f" and {metrics_path}" if metrics_path else "")
    return SplitResult(preds, metrics, dataset, pred_path, metrics_path)
