"""Batches assembled straight into reused buffers: the data path of training and inference.

Torch's DataLoader made every batch the slow way: each video read into a fresh 23 MB
array, stacked into a fresh 737 MB padded tensor (`new_full`; fresh pages cost more than
the copy), and with worker processes every batch crossed shared memory once more, so more
workers were slower. `BatchLoader` instead

- reads each sample's features from the cache file straight into its row of a reused
  batch buffer (`FeatureCache.read_video_into`: `preadv` of the file ranges, no HDF5 lock,
  the GIL released), or copies them there from preloaded RAM/GPU features;
- zeroes only the padding, and builds masks and labels exactly as `collate` does, so
  batches are identical (same order, bit-identical features) to `collate` of the samples;
- uses threads, not processes: `workers` reading threads fill the rows of a batch in
  parallel while a background thread assembles the next batches (`workers = 0`: all in
  the calling thread);
- on CUDA, reads into pinned host buffers and copies them to the GPU on a side stream
  (non-blocking); a host buffer is refilled only once its copy is done.

A buffer is reused only when nothing outside the loader still refers to the batch made in
it (checked by reference count), so a caller that keeps batches (`list(loader)`) gets
fresh memory for each instead of overwritten data.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .batch import Batch, padded_batch

log = logging.getLogger(__name__)

PREFETCH = 2  # batches assembled ahead of the consumer (workers > 0)
SPARE_SLOTS = 2  # buffers beyond PREFETCH: the one being filled, the consumer's current one
RETAINED_WAIT_S = 0.05  # wait this long for a buffer before assuming the caller keeps batches
POLL_S = 0.001


class _Slot:
    """Reusable host memory for the features of one batch (grown when a batch needs more)."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.arrays: dict[str, np.ndarray] = {}
        self.refs: dict[str, int] = {}
        self.event = None  # CUDA event of the copy from this slot to the GPU

    def take(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous (shape, dtype) view of this slot's `name` memory."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if name not in self.arrays or self.arrays[name].nbytes < n:
            self.arrays.pop(name, None)
            # torch's memory, not numpy's (see preload.host_array); pinned for CUDA copies
            self.arrays[name] = torch.empty(n, dtype=torch.uint8, pin_memory=self.pin).numpy()
            self.refs[name] = self._count(name)
        return self.arrays[name][:n].view(dtype).reshape(shape)

    def _count(self, name: str) -> int:
        """References to the memory of `name` (each live batch tensor made in it adds one)."""
        return sys.getrefcount(self.arrays[name])

    def free(self) -> bool:
        """True when no batch tensor made in this slot is alive and its GPU copy is done."""
        if any(self._count(name) > self.refs[name] for name in self.arrays):
            return False
        return self.event is None or self.event.query()


class BatchLoader:
    """Iterate the batches of `sampler` over `dataset` (see the module doc).

    Args:
        dataset: a `GroundingDataset` (its items, feature source, k, labels).
        sampler: yields lists of dataset keys, one list per batch (`EpochBatchSampler`).
        workers: reading threads (0: everything in the calling thread).
        device: where batches go; CUDA: pinned host buffers and side-stream copies. None or
            CPU: batches stay on the host (the model reads the reused buffer directly).
        prefetch: batches assembled ahead when workers > 0.
    """

    def __init__(self, dataset, sampler, workers: int = 0, device=None, prefetch: int = PREFETCH):
        self.dataset, self.sampler, self.workers = dataset, sampler, max(0, int(workers))
        self.device = None if device is None else torch.device(device)
        self.prefetch = max(1, int(prefetch))
        on_gpu = dataset.on_device is not None
        self.pin = not on_gpu and self.device is not None and self.device.type == "cuda"
        self._slots: list[_Slot] = []
        self._max_slots = self.prefetch + SPARE_SLOTS if self.workers else SPARE_SLOTS
        self._stream = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        if self.workers == 0:
            for keys in self.sampler:
                yield self._deliver(*self._assemble(keys, None))
            return
        yield from self._background()

    # ------------------------------------------------------------ assembly

    def _slot(self) -> _Slot:
        """A free buffer; a new one while fewer than the limit exist, or when the caller
        evidently keeps its batches (none frees up within RETAINED_WAIT_S)."""
        waited = 0.0
        while True:
            for slot in self._slots:
                if slot.free():
                    return slot
            if len(self._slots) < self._max_slots or waited >= RETAINED_WAIT_S:
                self._slots.append(_Slot(self.pin))
                return self._slots[-1]
            time.sleep(POLL_S)
            waited += POLL_S

    def _assemble(self, keys: list, pool: ThreadPoolExecutor | None) -> tuple[Batch, _Slot | None]:
        """The batch of `keys`: features read into a buffer, then masks and labels."""
        ds = self.dataset
        samples = [ds.sample_meta(key) for key in keys]
        t_len = [ds.video_length(key) for key in keys]
        l_len = [ds.query_length(key) for key in keys]
        t_pad, l_pad = max(t_len), max(l_len)
        pad = getattr(samples[0], "pad_to", None)
        if pad is not None:  # distributed: the whole (global) batch's padding
            t_pad, l_pad = max(t_pad, pad[0]), max(l_pad, pad[1])
        b, dtype, (v_row, q_row) = len(keys), ds.feature_dtype, ds.row_shapes
        slot = None
        if ds.on_device is not None:  # features in GPU memory: assemble there
            video = torch.empty((b, t_pad, *v_row), dtype=dtype, device=ds.on_device)
            query = torch.empty((b, l_pad, *q_row), dtype=dtype, device=ds.on_device)
            v_out, q_out = video, query
        else:
            slot = self._slot()
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            v_out = slot.take("video", (b, t_pad, *v_row), np_dtype)
            q_out = slot.take("query", (b, l_pad, *q_row), np_dtype)

        def fill(i: int) -> None:
            ds.read_features(keys[i], v_out[i, : t_len[i]], q_out[i, : l_len[i]])
            v_out[i, t_len[i] :] = 0
            q_out[i, l_len[i] :] = 0

        if pool is None or b == 1:
            for i in range(b):
                fill(i)
        else:
            list(pool.map(fill, range(b)))
        if slot is not None:
            video, query = torch.from_numpy(v_out), torch.from_numpy(q_out)
        for i, s in enumerate(samples):
            s.video, s.query = video[i, : t_len[i]], query[i, : l_len[i]]
        return padded_batch(samples, video, query), slot

    def _deliver(self, batch: Batch, slot: _Slot | None) -> Batch:
        """On CUDA with host buffers: the batch copied to the GPU on a side stream."""
        if slot is None or not self.pin:
            return batch
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            out = batch.to(self.device)  # non-blocking from pinned memory
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        for t in (out.video, out.query, out.video_mask, out.query_mask, out.fps, out.duration,
                  out.boundary, out.saliency, out.pos_clip):  # fmt: skip
            if t is not None:
                t.record_stream(current)
        slot.event = torch.cuda.Event()
        slot.event.record(self._stream)
        return out

    # ------------------------------------------------------------ background assembly

    def _background(self) -> Iterator[Batch]:
        """Batches assembled by a background thread, `prefetch` ahead, rows read by
        `workers` threads."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.workers, "r2-read") if self.workers > 1 else None

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for keys in self.sampler:
                    if stop.is_set() or not put(self._assemble(keys, pool)):
                        return
                put(None)
            except BaseException as err:  # handed to the consumer, raised there
                put(err)

        thread = threading.Thread(target=produce, name="r2-batches", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._deliver(*item)
                del item
        finally:
            stop.set()
            while thread.is_alive():  # let the producer see `stop` (it may wait on a slot)
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.05)
            if pool is not None:
                pool.shutdown(wait=True)
