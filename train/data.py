"""Training and inference data: prepared items + features -> `Sample`s and batches.

- `GroundingDataset` yields `Sample`s; the positive clip is drawn from a generator derived
  from (seed, epoch, index), and `EpochBatchSampler` shuffles with (seed, epoch), so any
  epoch / batch position can be replayed exactly (resume) with any number of workers.
- Features come from a `FeatureCache` (each worker process opens its own read-only handle)
  or from `PreloadedFeatures` (RAM or GPU), chosen by `resolve_preload`.
- Annotation parsing, id checks and labels live in `annotations.py` (re-exported here).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from r2.cache import FeatureCache

from .annotations import (
    Annotation,
    AnnotationError,
    Item,
    MissingFeaturesError,
    build_labels,
    check_coverage,
    prepare_items,
    read_annotations,
)
from .batch import Sample, collate
from .labels import sample_positive_clip

log = logging.getLogger(__name__)

PRELOAD_CHOICES = ("none", "ram", "gpu", "auto")
RAM_BUDGET = 0.5  # auto preload: features may take at most this fraction of available RAM
GPU_BUDGET = 0.4  # ... or of free GPU memory (the rest is for the model and batches)
__all__ = [
    "Annotation", "AnnotationError", "EpochBatchSampler", "FeatureSource", "GroundingDataset",
    "Item", "MissingFeaturesError", "PreloadedFeatures", "available_ram", "build_labels",
    "check_coverage", "feature_bytes", "make_loader", "prepare_items", "read_annotations",
    "resolve_preload",
]  # fmt: skip


class FeatureSource(Protocol):
    """Where features come from: a `FeatureCache` or `PreloadedFeatures`."""

    def video(self, vid: str) -> np.ndarray | torch.Tensor: ...

    def query(self, qid: str) -> np.ndarray | torch.Tensor: ...


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
        fps: clips per second of the features of items that do not carry their own
            (`Item.fps`, set by `prepare_items` from the cache's per-video fps).
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
        video = _tensor(self.features.video(it.anno.vid), self.k)[: it.n_clips]  # labels' T
        query = _tensor(self.features.query(it.anno.qid), self.k)
        sample = Sample(
            qid=it.anno.qid,
            vid=it.anno.vid,
            video=video,
            query=query,
            fps=it.fps or self.fps,
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
