"""`--preload ram|gpu`: the features a run needs, read once and held in memory.

RAM: the cache file's pages are mapped and read in once (`FeatureCache.map_features`,
cache/mapped.py): the kernel's page cache is the only copy, loaded at the speed of a plain
read of the file, shared by the processes of a machine; the loader copies each sample from
it straight into its batch buffer. Ids the mapping cannot serve (a layout that needs HDF5's
own reads) are read, in the order they lie in the file, into one preallocated block
(`read_video_into`: no temporary arrays). GPU: rows go through two pinned host buffers (one
is read while the other is copied) into one block of device memory.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from r2.cache import FeatureCache
from r2.cache.mapped import MappedFeatures

log = logging.getLogger(__name__)

LOAD_THREADS = 2  # reading threads of a copied RAM preload (a page-cache hit is a memcpy)


class PreloadedFeatures:
    """Features of a set of ids held in memory: mapped from the cache file, copied into one
    block of RAM, or torch tensors on a GPU.

    `videos[vid]` is (T, k, P, Dv) and `queries[qid]` (L, k, Dq): the copied ones (views of
    one block each); `mapped` serves the others.
    """

    def __init__(self, videos: dict, queries: dict, mapped: MappedFeatures | None = None,
                 shapes: tuple[tuple, tuple] = ((), ())):  # fmt: skip
        self.videos, self.queries, self.mapped = videos, queries, mapped
        self._shapes = shapes  # (k, P, Dv), (k, Dq): rows of the mapped features

    def video(self, vid: str) -> np.ndarray | torch.Tensor:
        if vid in self.videos or self.mapped is None:
            return self.videos[vid]
        return self.mapped.video(vid, self._shapes[0])

    def query(self, qid: str) -> np.ndarray | torch.Tensor:
        if qid in self.queries or self.mapped is None:
            return self.queries[qid]
        return self.mapped.query(qid, self._shapes[1])

    @property
    def device(self) -> torch.device | None:
        """The GPU holding the features, None for RAM."""
        first = next(iter(self.videos.values()), None)
        return first.device if torch.is_tensor(first) else None

    def read_video_into(self, vid: str, out: np.ndarray | torch.Tensor) -> None:
        """Copy the first len(out) clips' last out.shape[1] layers of `vid` into `out`."""
        if vid in self.videos or not self._direct(out, 0):
            _copy(self.video(vid), out)
        else:
            self.mapped.read_video_into(vid, np.asarray(out))

    def read_query_into(self, qid: str, out: np.ndarray | torch.Tensor) -> None:
        """Copy the first len(out) tokens' last out.shape[1] layers of `qid` into `out`."""
        if qid in self.queries or not self._direct(out, 1):
            _copy(self.query(qid), out)
        else:
            self.mapped.read_query_into(qid, np.asarray(out))

    def _direct(self, out, which: int) -> bool:
        """True when the mapping can copy straight into `out` (host memory, all k layers)."""
        host = isinstance(out, np.ndarray) or (torch.is_tensor(out) and out.device.type == "cpu")
        return self.mapped is not None and host and out.shape[1] == self._shapes[which][0]

    @classmethod
    def load(
        cls,
        cache: FeatureCache,
        items: list,
        k: int,
        device: str | torch.device | None = None,
    ) -> PreloadedFeatures:
        """Read the (last `k` layers of the) features of `items` once; device None = RAM."""
        s = cache.settings
        vids = sorted({it.anno.vid for it in items}, key=lambda v: cache.index.videos[v].start)
        qids = list(dict.fromkeys(it.anno.qid for it in items))
        v_shape, q_shape = (k, s.tokens_per_frame, s.video_dim), (k, s.text_dim)
        if device is not None:
            q_rows = [cache.query_length(q) for q in qids]
            queries = _read_all(cache.read_query_into, qids, q_rows,
                                host_array((sum(q_rows), *q_shape)), None)  # fmt: skip
            v_rows = [cache.video_record(v).n_clips for v in vids]
            videos = _to_gpu(cache, vids, v_rows, v_shape, torch.device(device))
            queries = {q: torch.from_numpy(x).to(device) for q, x in queries.items()}
            return cls(videos, queries)
        mapped = cache.map_features(vids, qids, k)
        bar = tqdm(total=mapped.nbytes, desc="preload", unit="B", unit_scale=True, disable=None)
        mapped.populate(bar.update)
        bar.close()
        vids = [v for v in vids if v in mapped.unmapped_videos]
        qids = [q for q in qids if q in mapped.unmapped_queries]
        v_rows = [cache.video_record(v).n_clips for v in vids]
        q_rows = [cache.query_length(q) for q in qids]
        queries = _read_all(cache.read_query_into, qids, q_rows,
                            host_array((sum(q_rows), *q_shape)), None)  # fmt: skip
        videos = _read_all(cache.read_video_into, vids, v_rows,
                           host_array((sum(v_rows), *v_shape)), "preload (copied)")  # fmt: skip
        log.info(
            "preload: %.2f GB mapped from %s, %.2f GB copied into RAM",
            mapped.nbytes / 1e9,
            cache.path,
            sum(x.nbytes for x in (*videos.values(), *queries.values())) / 1e9,
        )
        return cls(videos, queries, mapped, (v_shape, q_shape))


def host_array(shape: tuple[int, ...], pin: bool = False) -> np.ndarray:
    """An uninitialised float16 array in host memory (pinned for fast GPU copies when
    `pin`). Allocated by torch, not numpy: numpy asks the kernel for transparent huge pages
    on large arrays, and faulting those in ran at 0.5-0.7 GB/s here against 2-3.5 GB/s
    for ordinary pages (6.9 GB of features took 15 s instead of 3)."""
    return torch.empty(shape, dtype=torch.float16, pin_memory=pin).numpy()


def _copy(src: np.ndarray | torch.Tensor, out: np.ndarray | torch.Tensor) -> None:
    part = src[: out.shape[0], src.shape[1] - out.shape[1] :]
    if isinstance(out, np.ndarray) and isinstance(part, np.ndarray):
        np.copyto(out, part)
    else:
        torch.as_tensor(out).copy_(torch.as_tensor(part))


def _read_all(read, ids: list[str], rows: list[int], block: np.ndarray, desc: str | None):
    """Each id's rows read into consecutive rows of `block` -> {id: view}."""
    if not ids:
        return {}
    views, at = {}, 0
    for i, n in zip(ids, rows, strict=True):
        views[i], at = block[at : at + n], at + n
    if desc is None:
        for i in ids:
            read(i, views[i])
        return views

    def load(i: str) -> str:
        views[i].fill(0)  # fault the fresh pages in first: see below
        read(i, views[i])
        return i

    # A read into fresh pages faults them in one by one inside the kernel's copy: 100
    # videos (2.3 GB) loaded at 1.2 GB/s here, 4.7 GB/s when each video's rows are written
    # once before the read (the same memory, no more of it).
    bar = tqdm(total=block.nbytes, desc=desc, unit="B", unit_scale=True, disable=None)
    with ThreadPoolExecutor(LOAD_THREADS, "r2-preload") as pool:
        for i in pool.map(load, ids):
            bar.update(views[i].nbytes)
    bar.close()
    return views


def _to_gpu(cache: FeatureCache, vids, rows, shape, device: torch.device) -> dict:
    """Videos read into two alternating pinned buffers and copied into one GPU block."""
    block = torch.empty((sum(rows), *shape), dtype=torch.float16, device=device)
    most = max(rows, default=0)
    stages = [torch.empty((most, *shape), dtype=torch.float16, pin_memory=True) for _ in "ab"]
    done: list = [None, None]
    videos, at = {}, 0
    bar = tqdm(total=block.numel() * 2, desc="preload gpu", unit="B", unit_scale=True,
               disable=None)  # fmt: skip
    for j, (vid, n) in enumerate(zip(vids, rows, strict=True)):
        b = j % 2
        if done[b] is not None:
            done[b].synchronize()  # the copy out of this buffer has finished
        host = stages[b][:n]
        cache.read_video_into(vid, host.numpy())
        videos[vid] = block[at : at + n]
        videos[vid].copy_(host, non_blocking=True)
        done[b] = torch.cuda.Event()
        done[b].record()
        at += n
        bar.update(host.numel() * 2)
    torch.cuda.synchronize(device)
    bar.close()
    return videos
