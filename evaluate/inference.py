"""Run a trained model over a split -> QVHighlights submission rows (spec §4).

Each row: ``qid`` (as in the annotation), ``query``, ``vid``, ``pred_relevant_windows``
[[start_s, end_s, score], ...] post-processed (clamp, unit rounding, NMS, sorted by score;
absent for highlight-only models) and ``pred_saliency_scores`` (one per clip).

Inference has B = 1 semantics: the original pads a sample differently inside a batch
(spec §2.9), so unless the model config is `padding_invariant`, samples run one at a time
whatever `batch_size` says. Used by per-epoch validation and by `r2 eval --checkpoint`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from r2.cache import FeatureCache
from r2.evaluate.postprocess import postprocess_windows
from r2.train.config import TrainPreset, get_preset
from r2.train.data import (
    Annotation,
    EpochBatchSampler,
    FeatureSource,
    GroundingDataset,
    Item,
    make_loader,
    prepare_items,
    read_annotations,
)

log = logging.getLogger(__name__)


def _annotations(annotations: Any) -> list[Annotation]:
    """A path, a list of dicts or a list of `Annotation`s -> list of `Annotation`s."""
    if isinstance(annotations, (str, os.PathLike)):
        return read_annotations(Path(annotations))
    out = []
    for i, a in enumerate(annotations):
        if isinstance(a, Annotation):
            out.append(a)
        else:
            out.append(
                Annotation(data=a, where=f"annotations[{i}]", qid=str(a["qid"]), vid=str(a["vid"]))
            )
    return out


def prediction_row(
    item: Item, windows: np.ndarray | None, saliency: np.ndarray, preset: TrainPreset
) -> dict[str, Any]:
    """One submission row from a raw prediction (post-processes the windows)."""
    data = item.anno.data
    row: dict[str, Any] = {"qid": data["qid"], "query": data.get("query", ""), "vid": data["vid"]}
    if windows is not None:
        bnd = postprocess_windows(
            np.asarray(windows, dtype=np.float32),
            item.duration,
            preset.unit,
            preset.nms or "none",  # presets say None, postprocess_windows says "none"
            preset.nms_threshold,
        )
        row["pred_relevant_windows"] = [[float(s), float(e), float(c)] for s, e, c in bnd]
    row["pred_saliency_scores"] = [float(x) for x in saliency]
    return row


@torch.inference_mode()
def predict_items(
    model: torch.nn.Module,
    features: FeatureSource,
    items: list[Item],
    preset: TrainPreset,
    fps: float,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    preload: str = "none",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Predict prepared items (see `predict_split`); rows in the items' order."""
    device = torch.device(device)
    if batch_size > 1 and not model.cfg.padding_invariant:
        log.info(
            "inference runs one sample at a time: the model is not padding-invariant, "
            "so batching would change its outputs (spec §2.9)"
        )
        batch_size = 1
    dataset = GroundingDataset(items, features, fps, model.cfg.k, train=False)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0, shuffle=False)
    loader = make_loader(dataset, sampler, workers, seed=0, preload=preload, device=device)
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    try:
        bar = tqdm(
            total=len(items),
            desc="predict",
            unit="query",
            disable=None if progress else True,
            leave=False,
        )
        for batch in loader:
            batch = batch.to(device)
            for raw in model.predict(model(batch), batch):
                it = items[len(rows)]
                rows.append(prediction_row(it, raw.boundary, raw.saliency, preset))
            bar.update(batch.size)
        bar.close()
    finally:
        model.train(was_training)
    return rows


def predict_split(
    model: torch.nn.Module,
    cache: FeatureCache | str | os.PathLike,
    annotations: Any,
    preset: TrainPreset | str,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    skip_missing: bool = False,
    features: FeatureSource | None = None,
) -> list[dict[str, Any]]:
    """Run `model` over a split and return QVHighlights submission rows.

    Args:
        model: an `R2Model` (put on `device` by the caller or by `load_checkpoint`).
        cache: the feature cache (or its path) holding the split's videos and queries.
        annotations: JSON Lines path, list of dicts, or list of `Annotation`s; only
            qid, vid, duration and query are used (labels are not needed).
        preset: dataset preset (or its name) giving the post-processing unit and NMS;
            use `dataclasses.replace(preset, unit=..., nms=...)` to change them.
        device: where the model runs.
        batch_size: samples per forward; forced to 1 unless the model is padding-invariant.
        workers: data-loader worker processes reading the cache.
        skip_missing: drop queries without features (counted in a warning) instead of failing.
        features: an alternative feature source (e.g. preloaded) for the same ids.

    Returns:
        One dict per query, in annotation order.

    Raises:
        MissingFeaturesError: ids not in the cache (with counts) unless `skip_missing`.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    own = not isinstance(cache, FeatureCache)
    fc = FeatureCache(cache) if own else cache
    try:
        items = prepare_items(
            _annotations(annotations), fc, preset.name, train=False, skip_missing=skip_missing
        )
        return predict_items(
            model,
            features or fc,
            items,
            preset,
            fc.settings.fps,
            device=device,
            batch_size=batch_size,
            workers=workers,
        )
    finally:
        if own:
            fc.close()
