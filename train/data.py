"""Training and inference data: annotations + the feature cache -> `Sample`s and batches.

- `read_annotations` parses QVHighlights-schema JSON Lines (qid, query, vid, duration,
  relevant_windows, relevant_clip_ids, saliency_scores; TVSum/YouTube `label`/`match`),
  naming file:line:field on any problem.
- `prepare_items` checks every query against the cache (missing videos/queries are an
  error with counts, or dropped with `skip_missing`), applies the minimum-length filter and
  builds the labels of spec §3 once (bad labels are skipped with a count).
- `GroundingDataset` yields `Sample`s; the positive clip is drawn from a generator derived
  from (seed, epoch, index), and `EpochBatchSampler` shuffles with (seed, epoch), so any
  epoch / batch position can be replayed exactly (resume) with any number of workers.
- Features come from a `FeatureCache` (each worker process opens its own read-only handle)
  or from `PreloadedFeatures` (RAM or GPU), chosen by `resolve_preload`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from r2.cache import FeatureCache
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .batch import Sample, collate
from .labels import (
    clean_windows,
    positive_threshold,
    saliency_labels,
    sample_positive_clip,
    tvsum_saliency,
    youtube_saliency,
)

log = logging.getLogger(__name__)

PRELOAD_CHOICES = ("none", "ram", "gpu", "auto")
RAM_BUDGET = 0.5  # auto preload: features may take at most this fraction of available RAM
GPU_BUDGET = 0.4  # ... or of free GPU memory (the rest is for the model and batches)
DURATION_TOLERANCE_S = 4.0  # annotation vs cached duration: larger gaps are reported
MAX_LISTED = 5  # ids named in an error / warning message
HIGHLIGHT_DATASETS = ("youtube", "tvsum")


class AnnotationError(ValueError):
    """An annotation file cannot be used; the message names file, line and field."""


class MissingFeaturesError(ValueError):
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
    boundary: np.ndarray | None = None  # (N, 2) cleaned windows in seconds
    saliency: np.ndarray | None = None  # (T,) labels
    threshold: float = 0.0  # positive clips have saliency > threshold


class FeatureSource(Protocol):
    """Where features come from: a `FeatureCache` or `PreloadedFeatures`."""

    def video(self, vid: str) -> np.ndarray | torch.Tensor: ...

    def query(self, qid: str) -> np.ndarray | torch.Tensor: ...


# ---------------------------------------------------------------- annotations


def read_annotations(path: str | os.PathLike) -> list[Annotation]:
    """Parse a JSON Lines annotation file (blank lines ignored).

    Raises:
        AnnotationError: unreadable file, invalid JSON, or a missing/invalid field,
            naming `file:line` and the field.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read annotations: {exc}") from exc
    out, seen = [], {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{where}: invalid JSON: {exc}") from None
        anno = _validate(data, where)
        if anno.qid in seen:
            raise AnnotationError(
                f"{where}: field 'qid': {anno.qid!r} already used at {seen[anno.qid]}"
            )
        seen[anno.qid] = where
        out.append(anno)
    if not out:
        raise AnnotationError(f"{path}: no annotations in the file")
    return out


def _validate(data: Any, where: str) -> Annotation:
    def fail(field: str, problem: str) -> AnnotationError:
        return AnnotationError(f"{where}: field '{field}': {problem}")

    if not isinstance(data, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for name in ("qid", "vid"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise fail(name, f"missing or not a string/integer id (got {value!r})")
    duration = data.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not math.isfinite(duration)
        or duration <= 0
    ):
        raise fail("duration", f"must be a positive number of seconds, got {duration!r}")
    windows = data.get("relevant_windows")
    if windows is not None:
        ok = (
            isinstance(windows, list)
            and windows
            and all(
                isinstance(w, list)
                and len(w) == 2
                and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    for x in w
                )
                for w in windows
            )
        )
        if not ok:
            raise fail(
                "relevant_windows",
                f"must be a non-empty list of [start_s, end_s] numbers, got {str(windows)[:80]}",
            )
    ids, scores = data.get("relevant_clip_ids"), data.get("saliency_scores")
    if (ids is None) != (scores is None):
        raise fail("saliency_scores", "relevant_clip_ids and saliency_scores go together")
    if ids is not None and (
        not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores)
    ):
        raise fail("saliency_scores", "must be a list as long as relevant_clip_ids")
    return Annotation(data=data, where=where, qid=str(data["qid"]), vid=str(data["vid"]))


# ---------------------------------------------------------------- items and labels


def check_coverage(
    annos: list[Annotation], cache: FeatureCache, skip_missing: bool = False
) -> list[Annotation]:
    """Keep the annotations whose video and query features are in the cache.

    Raises:
        MissingFeaturesError: some are missing and `skip_missing` is False; the message
            gives the counts and the first few ids with their lines.
    """
    videos, queries = set(cache.video_ids()), set(cache.query_ids())
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
        else:
            sal = youtube_saliency(data["match"])
        if len(sal) < t:
            raise ValueError(f"{len(sal)} per-clip labels for {t} cached clips")
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
    fps = cache.settings.fps
    items, short, bad, far = [], 0, [], []
    for a in annos:
        record = cache.video_record(a.vid)
        duration = float(a.data.get("duration") or record.duration)
        if train and min_video_len and duration < min_video_len:
            short += 1
            continue
        if abs(duration - record.duration) > DURATION_TOLERANCE_S:
            far.append(f"{a.vid} ({duration:g} s annotated, {record.duration:g} s cached)")
        item = Item(anno=a, n_clips=record.n_clips, duration=duration)
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
    if not items:
        raise AnnotationError("no usable query left (see the messages above)")
    return items


# ---------------------------------------------------------------- features


class PreloadedFeatures:
    """Features of a set of ids held in memory (numpy in RAM, or torch tensors on a GPU)."""

    def __init__(self, videos: dict, queries: dict):
        self.videos, self.queries = videos, queries

    def video(self, vid: str) -> np.ndarray | torch.Tensor:
        return self.videos[vid]

    def query(self, qid: str) -> np.ndarray | torch.Tensor:
        return self.queries[qid]

    @classmethod
    def load(
        cls,
        cache: FeatureCache,
        items: list[Item],
        k: int,
        device: str | torch.device | None = None,
    ) -> PreloadedFeatures:
        """Read the (last `k` layers of the) features of `items` once; device None = RAM."""

        def keep(x: np.ndarray) -> np.ndarray | torch.Tensor:
            x = np.ascontiguousarray(x[:, -k:])
            return x if device is None else torch.from_numpy(x).to(device)

        videos, queries = {}, {}
        for it in tqdm(items, desc="preload", unit="query", disable=None):
            if it.anno.vid not in videos:
                videos[it.anno.vid] = keep(cache.video(it.anno.vid))
            queries[it.anno.qid] = keep(cache.query(it.anno.qid))
        return cls(videos, queries)


def feature_bytes(cache: FeatureCache, items: list[Item], k: int) -> int:
    """Bytes of the float16 features (last `k` layers) the items need."""
    s = cache.settings
    clips = sum(cache.video_record(v).n_clips for v in {it.anno.vid for it in items})
    tokens = sum(cache.query_record(it.anno.qid).n_tokens for it in items)
    return 2 * k * (clips * s.tokens_per_frame * s.video_dim + tokens * s.text_dim)


def available_ram() -> int | None:
    """MemAvailable in bytes (Linux), else free physical pages, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_preload(mode: str, needed: int, device: torch.device) -> str:
    """Turn "auto" into "gpu", "ram" or "none" from the feature size and free memory."""
    if mode not in PRELOAD_CHOICES:
        raise ValueError(f"preload must be one of {PRELOAD_CHOICES}, got {mode!r}")
    if mode == "gpu" and device.type != "cuda":
        raise ValueError(f"--preload gpu needs a CUDA device, training runs on {device}")
    if mode != "auto":
        return mode
    gib = 1024**3
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if needed <= GPU_BUDGET * free:
            log.info(
                "preload auto: features need %.2f GiB, %.2f GiB free on %s -> GPU",
                needed / gib,
                free / gib,
                device,
            )
            return "gpu"
    ram = available_ram()
    if ram is not None and needed <= RAM_BUDGET * ram:
        log.info(
            "preload auto: features need %.2f GiB, %.2f GiB RAM available -> RAM",
            needed / gib,
            ram / gib,
        )
        return "ram"
    log.info(
        "preload auto: features need %.2f GiB, %s RAM available -> read from the cache "
        "file on demand",
        needed / gib,
        "unknown" if ram is None else f"{ram / gib:.2f} GiB",
    )
    return "none"


# ---------------------------------------------------------------- dataset and sampler


class GroundingDataset(Dataset):
    """`Sample`s of prepared items; indexed by (epoch, i) so draws are reproducible.

    Args:
        items: from `prepare_items`.
        features: a `FeatureCache` or `PreloadedFeatures`.
        fps: clips per second of the features.
        k: number of CLIP layers the model uses (the last k of the cache's).
        train: attach labels and draw the positive clip.
        seed: base seed of the positive-clip draws.
        repeat: the dataset is iterated this many times per epoch (index i -> item i % n).
    """

    def __init__(
        self,
        items: list[Item],
        features: FeatureSource,
        fps: float,
        k: int,
        *,
        train: bool,
        seed: int = 0,
        repeat: int = 1,
    ):
        self.items, self.features, self.fps, self.k = items, features, fps, k
        self.train, self.seed, self.repeat = train, seed, max(1, int(repeat))

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        it = self.items[i % len(self.items)]
        video = _tensor(self.features.video(it.anno.vid), self.k)
        query = _tensor(self.features.query(it.anno.qid), self.k)
        sample = Sample(
            qid=it.anno.qid,
            vid=it.anno.vid,
            video=video,
            query=query,
            fps=self.fps,
            duration=it.duration,
        )
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, i])
            sample.saliency = torch.from_numpy(it.saliency)
            sample.pos_clip = sample_positive_clip(it.saliency, rng, it.threshold)
            if it.boundary is not None:
                sample.boundary = torch.from_numpy(it.boundary)
        return sample


def _tensor(x: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """(T, K, ...) features -> tensor of the last k layers (no copy when already sliced)."""
    if x.shape[1] != k:
        x = x[:, -k:]
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys; the order depends only on (seed, epoch).

    `set_epoch(epoch, start_batch)` selects the epoch and skips its first batches (resume).
    The last batch may be smaller (the original keeps it).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        """The index order of `epoch`."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        order, bs = self.order(self.epoch), self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            yield [(self.epoch, int(i)) for i in order[b * bs : (b + 1) * bs]]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)


def make_loader(
    dataset: GroundingDataset, sampler: EpochBatchSampler, workers: int, seed: int, preload: str
) -> DataLoader:
    """A DataLoader that never touches the global RNG (own generator) so resume is exact."""
    workers = 0 if preload == "gpu" else workers
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=2)
        if preload == "ram" and "fork" in torch.multiprocessing.get_all_start_methods():
            kwargs["multiprocessing_context"] = "fork"  # share the preloaded arrays
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
