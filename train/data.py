"""Training and inference data: prepared items + features -> `Sample`s and batches.

- `GroundingDataset` yields `Sample`s; the positive clip is drawn from a generator derived
  from (seed, epoch, index), and `EpochBatchSampler` shuffles with (seed, epoch), so any
  epoch / batch position can be replayed exactly (resume) with any number of workers.
- Features come from a `FeatureCache` (read straight into reused batch buffers by
  `r2.train.loader.BatchLoader`) or from `PreloadedFeatures` (RAM or GPU, `preload.py`),
  chosen by `resolve_preload`.
- Annotation parsing, id checks and labels live in `annotations.py` (re-exported here).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from r2.cache import FeatureCache
from r2.errors import UsageError

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
from .batch import Sample
from .distributed import Share, share_of
from .labels import sample_positive_clip
from .preload import PreloadedFeatures

if TYPE_CHECKING:
    from .loader import BatchLoader

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


class PreloadError(UsageError, ValueError):
    """`--preload gpu` asked for features that do not fit in the GPU's free memory."""


class FeatureSource(Protocol):
    """Where features come from: a `FeatureCache` or `PreloadedFeatures`."""

    def video(self, vid: str) -> np.ndarray | torch.Tensor: ...

    def query(self, qid: str) -> np.ndarray | torch.Tensor: ...


# ---------------------------------------------------------------- features


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


def resolve_preload(mode: str, needed: int, device: torch.device, copies: int = 1) -> str:
    """Turn "auto" into "gpu", "ram" or "none" from the feature size and free memory;
    `copies`: processes of this machine that each preload into RAM (a distributed run)."""
    if mode not in PRELOAD_CHOICES:
        raise ValueError(f"preload must be one of {PRELOAD_CHOICES}, got {mode!r}")
    if mode == "gpu" and device.type != "cuda":
        raise ValueError(f"--preload gpu needs a CUDA device, training runs on {device}")
    gib = 1024**3
    if mode == "gpu":
        free, total = torch.cuda.mem_get_info(device)
        if needed > GPU_BUDGET * free:
            raise PreloadError(
                f"--preload gpu: the features need {needed / gib:.2f} GiB but {device} has "
                f"{free / gib:.2f} GiB free of {total / gib:.2f} GiB (at most "
                f"{GPU_BUDGET:.0%} of the free memory goes to features, the rest is for the "
                "model and its batches); use --preload ram or --preload none"
            )
    if mode != "auto":
        return mode
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
    each = f" x {copies} processes on this machine" if copies > 1 else ""
    if ram is not None and needed * copies <= RAM_BUDGET * ram:
        log.info("preload auto: features need %.2f GiB%s, %.2f GiB RAM available -> RAM",
                 needed / gib, each, ram / gib)  # fmt: skip
        return "ram"
    log.info("preload auto: features need %.2f GiB%s, %s RAM available -> read from the "
             "cache file on demand", needed / gib, each,
             "unknown" if ram is None else f"{ram / gib:.2f} GiB")  # fmt: skip
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

    def __getitem__(self, key: tuple | int) -> Sample:
        sample = self.sample_meta(key)
        it = self._item(key)[1]
        sample.video = _tensor(self.features.video(it.anno.vid), self.k)[: it.n_clips]  # labels' T
        sample.query = _tensor(self.features.query(it.anno.qid), self.k)
        return sample

    # ---- what r2.train.loader needs: lengths, labels and features separately

    def _item(self, key: tuple | int) -> tuple[int, Item, int]:
        """(epoch, item, index) of a key: (epoch, i), i, or (epoch, i, extra)."""
        epoch, i = (key[0], key[1]) if isinstance(key, tuple) else (0, key)
        return epoch, self.items[i % len(self.items)], i

    def sample_meta(self, key: tuple | int) -> Sample:
        """The sample of `key` without its features (video and query are None)."""
        epoch, it, i = self._item(key)
        sample = Sample(qid=it.anno.qid, vid=it.anno.vid, video=None, query=None,
                        fps=it.fps or self.fps, duration=it.duration)  # fmt: skip
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, i])
            sample.saliency = torch.from_numpy(it.saliency)
            sample.pos_clip = sample_positive_clip(it.saliency, rng, it.threshold)
            if it.boundary is not None:
                sample.boundary = torch.from_numpy(it.boundary)
        if isinstance(key, tuple) and len(key) > 2:
            sample.pad_to = key[2]  # (T, L) of a distributed run's whole batch
        return sample

    def lengths(self, i: int) -> tuple[int, int]:
        """(clips, query tokens) of sample `i` (a distributed sampler pads to their maxima)."""
        return self.video_length(i), self.query_length(i)

    def video_length(self, key: tuple | int) -> int:
        """Clips of the sample's features (the labels' T)."""
        return self._item(key)[1].n_clips

    def query_length(self, key: tuple | int) -> int:
        """Tokens of the sample's query features."""
        qid = self._item(key)[1].anno.qid
        length = getattr(self.features, "query_length", None)
        return length(qid) if length is not None else len(self.features.query(qid))

    def read_features(self, key: tuple | int, video_out, query_out) -> None:
        """The sample's features (last k layers) into `video_out` (T, k, P, Dv) and
        `query_out` (L, k, Dq): numpy arrays or tensors of the feature dtype."""
        it = self._item(key)[1]
        for kind, ident, out in (("video", it.anno.vid, video_out),
                                 ("query", it.anno.qid, query_out)):  # fmt: skip
            reader = getattr(self.features, f"read_{kind}_into", None)
            if reader is not None and (isinstance(out, np.ndarray) or not hasattr(
                    self.features, "settings")):  # fmt: skip
                reader(ident, out)
                continue
            x = _tensor(getattr(self.features, kind)(ident), self.k)[: out.shape[0]]
            torch.as_tensor(out).copy_(x)

    @property
    def on_device(self) -> torch.device | None:
        """The GPU holding the features (`--preload gpu`), else None."""
        device = getattr(self.features, "device", None)
        return device if isinstance(device, torch.device) and device.type != "cpu" else None

    @property
    def feature_dtype(self) -> torch.dtype:
        """dtype of the features (float16 as stored)."""
        return self._layout()[0]

    @property
    def row_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of one clip (k, P, Dv) and of one query token (k, Dq)."""
        return self._layout()[1:]

    def _layout(self) -> tuple:
        if getattr(self, "_layout_cache", None) is None:
            s = getattr(self.features, "settings", None)
            if isinstance(self.features, FeatureCache):
                self._layout_cache = (torch.float16, (self.k, s.tokens_per_frame, s.video_dim),
                                      (self.k, s.text_dim))  # fmt: skip
            else:
                it = self.items[0]
                v = _tensor(self.features.video(it.anno.vid), self.k)
                q = _tensor(self.features.query(it.anno.qid), self.k)
                self._layout_cache = (v.dtype, tuple(v.shape[1:]), tuple(q.shape[1:]))
        return self._layout_cache


def _tensor(x: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """(T, K, ...) features -> tensor of the last k layers (no copy when already sliced)."""
    if x.shape[1] != k:
        x = x[:, -k:]
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys; the order depends only on (seed, epoch).

    `set_epoch(epoch, start_batch)` selects the epoch and skips its first batches (resume).
    The last batch may be smaller (the original keeps it).

    Distributed (`world_size` > 1): the batches are the same global batches; this process
    yields its share of each (`distributed.share_of`; a placeholder sample when its share
    is empty) as (epoch, index, (T, L)) keys, (T, L) the whole batch's padded lengths from
    `lengths(index)` -> (clips, tokens).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        lengths: Callable[[int], tuple[int, int]] | None = None,
    ):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.lengths = rank, world_size, lengths
        if world_size > 1 and lengths is None:
            raise ValueError("a distributed sampler needs the samples' lengths")
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

    def share(self, b: int) -> Share:
        """This process's share of batch `b` (0-based) of an epoch."""
        total = min(self.batch_size, self.n - b * self.batch_size)
        return share_of(total, self.rank, self.world_size)

    def __iter__(self):
        order, bs = self.order(self.epoch), self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            keys = order[b * bs : (b + 1) * bs]
            if self.world_size == 1:
                yield [(self.epoch, int(i)) for i in keys]
                continue
            sizes = [self.lengths(int(i)) for i in keys]
            pad = (max(t for t, _ in sizes), max(q for _, q in sizes))
            share = self.share(b)
            mine = keys[share.offset : share.offset + share.count] if share.count else keys[:1]
            yield [(self.epoch, int(i), pad) for i in mine]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)


def make_loader(
    dataset: GroundingDataset,
    sampler: EpochBatchSampler,
    workers: int,
    seed: int = 0,
    preload: str = "none",
    device: torch.device | str | None = None,
) -> BatchLoader:
    """The batches of `sampler` (r2.train.loader.BatchLoader: reused buffers, reading
    threads). The loader draws no random numbers, so resume is exact with any `workers`.

    Args:
        workers: reading threads (0: read in the calling thread).
        seed: unused (the order and draws come from the sampler and the dataset); kept for
            callers of the DataLoader-based version.
        preload: "gpu" features are assembled on the GPU, without threads.
        device: where the batches are used; CUDA: pinned buffers, non-blocking copies.
    """
    from .loader import BatchLoader

    del seed
    workers = 0 if preload == "gpu" else workers
    return BatchLoader(dataset, sampler, workers, device=device)
