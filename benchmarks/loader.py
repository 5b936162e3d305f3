"""The training data path alone: cache -> padded batch on the device side, no model.

Builds a cache of N videos in real QVHighlights / ViT-B/32 shapes (T = 75 clips, K = 4,
P = 50, Dv = 768, float16: 23 MB per video; one query of L = 20 tokens each, Dq = 512) and,
for the original's layout, one .npy per video and per query. Then prints samples/s and GB/s
(batch 32, an epoch in the seeded shuffled order, QVHighlights labels) of:

- anchors, same bytes, same run: a plain memcpy of each sample's features into a reused
  buffer (the limit), a plain sequential read of the cache file (`readinto` a reused
  buffer; the limit of anything reading from disk), and np.load of one .npy per video and
  per query (the original's layout);
- r2's loader from the cache file (`--preload none`) cold (the file's pages dropped first,
  `posix_fadvise(DONTNEED)`, before each measured epoch) and warm, with 0, 1, 2 and 4
  loader workers: the epochs after a loader's first (a run's steady state: its buffers
  exist); anchors are medians of 3 passes;
- `--preload ram`: load rate cold and warm (GB/s) and the memory it adds (peak, in a fresh
  process) against the feature bytes; then batches from RAM;
- on a CUDA machine, every path includes the copy to the GPU (and `--preload gpu` is
  measured); on CPU the batch as the model gets it is the end.

Ratios: cold rates against the plain read, warm rates against memcpy. Generated files are
deleted at the end unless --keep. Disk use: about 2 x 23 MB x N.

    python benchmarks/loader.py [--videos 300] [--folder DIR] [--workers 0,1,2,4] [--keep]

BENCH_QUICK=1 defaults to 48 videos. Run under `flock -x /tmp/r2-cpu.lock` for figures you
report (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import quick, report

from r2.cache import CacheSettings, CacheWriter, FeatureCache, QueryRecord, VideoRecord
from r2.train.data import (
    Annotation,
    EpochBatchSampler,
    GroundingDataset,
    PreloadedFeatures,
    make_loader,
    prepare_items,
)

T, L, K, P, DV, DQ, FPS, BATCH = 75, 20, 4, 50, 768, 512, 0.5, 32
SAMPLE_BYTES = 2 * K * (T * P * DV + L * DQ)  # float16 features of one (video, query)
SETTINGS = CacheSettings(
    model_id="openai/clip-vit-base-patch32", revision=None, k=K, fps=FPS, frame_at="middle",
    image_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dtype="fp32",
    tokens_per_frame=P, video_dim=DV, text_dim=DQ)  # fmt: skip
GB = 1e9
DISTINCT = 8  # distinct random videos, written round-robin (generation time, not I/O)


# ---------------------------------------------------------------- data


def _annotation(i: int) -> dict:
    return {"qid": i, "vid": f"v{i:04d}", "duration": T / FPS, "query": f"q{i}",
            "relevant_windows": [[20.0, 40.0]], "relevant_clip_ids": [10, 11, 12],
            "saliency_scores": [[1, 2, 3]] * 3}  # fmt: skip


def build(folder: Path, n: int) -> tuple[Path, Path]:
    """The cache and the .npy folder (reused when --keep left them complete)."""
    cache, npy = folder / "loader.h5", folder / "npy"
    done = folder / "complete.json"
    if done.exists() and json.loads(done.read_text()) == {"videos": n}:
        return cache, npy
    for p in (cache, npy, done):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    npy.mkdir(parents=True)
    rng = np.random.default_rng(0)
    videos = [rng.standard_normal((T, K, P, DV), dtype=np.float32).astype(np.float16)
              for _ in range(DISTINCT)]  # fmt: skip
    queries = [rng.standard_normal((L, K, DQ)).astype(np.float16) for _ in range(n)]
    t0 = time.perf_counter()
    with CacheWriter(cache, SETTINGS) as w:
        for i in range(n):
            vid = f"v{i:04d}"
            w.add_video(VideoRecord(vid, T / FPS, T, vid, 1, 0.0, False), videos[i % DISTINCT])
            np.save(npy / f"{vid}.npy", videos[i % DISTINCT])
            np.save(npy / f"q{i}.npy", queries[i])
        w.add_queries([QueryRecord(str(i), f"q{i}", L, False) for i in range(n)], queries)
    os.sync()
    print(f"wrote {n} videos ({n * SAMPLE_BYTES / GB:.2f} GB) twice in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    done.write_text(json.dumps({"videos": n}))
    return cache, npy


def drop_pages(*paths: Path) -> None:
    """Evict files' pages from the page cache (no root needed): the next read is cold."""
    files = [p for path in paths for p in (path.rglob("*") if path.is_dir() else [path])]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def epoch_order(n: int) -> list[int]:
    return [i for batch in EpochBatchSampler(n, BATCH, seed=0) for _, i in batch]


# ---------------------------------------------------------------- anchors


def memcpy_rate(n: int, repeats: int = 5) -> float:
    """Samples/s of copying each sample's bytes into a reused batch-sized buffer (median
    of `repeats` epochs)."""
    src = np.random.default_rng(0).integers(0, 2**15, (DISTINCT, SAMPLE_BYTES // 2), np.int16)
    dst = np.zeros((BATCH, SAMPLE_BYTES // 2), np.int16)
    dst[:] = 1  # every page faulted in: a warm, reused buffer
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for j, i in enumerate(epoch_order(n)):
            np.copyto(dst[j % BATCH], src[i % DISTINCT])
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def fresh_memory_rate(nbytes: int) -> float:
    """GB/s of the first write to `nbytes` of fresh memory (page faults and zeroing: the
    floor of any preload, which must fill new memory)."""
    t0 = time.perf_counter()
    x = torch.empty(nbytes, dtype=torch.uint8)
    x.fill_(1)
    rate = nbytes / GB / (time.perf_counter() - t0)
    del x
    return rate


def plain_read_rate(path: Path, cold: bool, repeats: int = 3) -> float:
    """GB/s of a sequential read of the file into a reused buffer: the median of
    `repeats` reads (`cold`: the file's pages dropped before each)."""
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    rates = []
    for _ in range(repeats):
        if cold:
            drop_pages(path)
        t0, total = time.perf_counter(), 0
        with open(path, "rb", buffering=0) as f:
            while got := f.readinto(view):
                total += got
        rates.append(total / GB / (time.perf_counter() - t0))
    return float(np.median(rates))


def npy_rate(npy: Path, n: int, cold: bool, repeats: int = 3) -> float:
    """Samples/s of np.load of each sample's video and query (the original's layout), in
    the epoch order: the median of `repeats` epochs (`cold`: pages dropped before each)."""
    rates = []
    for _ in range(repeats):
        if cold:
            drop_pages(npy)
        t0 = time.perf_counter()
        for i in epoch_order(n):
            np.load(npy / f"v{i:04d}.npy")
            np.load(npy / f"q{i}.npy")
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


# ---------------------------------------------------------------- r2's data path


def items_of(cache: FeatureCache, n: int):
    annos = [Annotation(data=_annotation(i), where=f"bench:{i}", qid=str(i), vid=f"v{i:04d}")
             for i in range(n)]  # fmt: skip
    return prepare_items(annos, cache, "qvhighlights", train=True)


def loader_rate(
    items, features, workers: int, preload: str, device: torch.device, cold: Path | None = None
) -> float:
    """Samples/s of training batches moved to `device`, over several epochs of one loader
    after a first unmeasured one (a run's steady state: its buffers exist); `cold`: the
    pages of that file are dropped before each measured epoch (outside the timing)."""
    ds = GroundingDataset(items, features, FPS, K, train=True, seed=0)
    sampler = EpochBatchSampler(len(ds), BATCH, seed=0)
    loader = make_loader(ds, sampler, workers, 0, preload, device)
    measured = (2 if quick() else 3) if cold is not None else (3 if quick() else 8)
    n, seconds = 0, 0.0
    for epoch in range(1 + measured):
        sampler.set_epoch(epoch)
        if epoch and cold is not None:
            drop_pages(cold)
        t0 = time.perf_counter()
        for batch in loader:
            batch = batch.to(device)
            n += batch.size if epoch else 0
            batch = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0 if epoch else 0.0
    return n / seconds


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def preload_child(cache_path: str, n: int, mode: str, workers: list[int]) -> None:
    """In a fresh process: preload time, the memory it adds, then batches from memory."""
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    with FeatureCache(cache_path) as cache:
        items = items_of(cache, n)
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
        base = _status("VmRSS")
        t0 = time.perf_counter()
        features = PreloadedFeatures.load(cache, items, K, device if mode == "gpu" else None)
        seconds = time.perf_counter() - t0
        extra = _status("VmHWM") - base
        rates = {w: loader_rate(items, features, w, mode, device) for w in workers}
    print(json.dumps({"seconds": seconds, "extra_bytes": extra, "rates": rates}))


def preload(cache: Path, n: int, mode: str, workers: list[int], cold: bool) -> dict:
    if cold:
        drop_pages(cache)
    cmd = [sys.executable, __file__, "--child", mode, "--videos", str(n), "--cache", str(cache),
           "--workers", ",".join(map(str, workers))]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def measure(cache: Path, npy: Path, n: int, workers: list[int], device: torch.device) -> None:
    gb = n * SAMPLE_BYTES / GB
    per_gb = SAMPLE_BYTES / GB
    note = f"{n} videos, {gb:.2f} GB, batch {BATCH}, device {device.type}"
    memcpy = memcpy_rate(n)
    report("memcpy of the same bytes (the limit)", memcpy, "samples/s", note=note)
    read_cold = plain_read_rate(cache, cold=True)
    read_warm = plain_read_rate(cache, cold=False)
    report("plain read of the cache file, cold", read_cold, "GB/s", anchor="memcpy",
           anchor_value=memcpy * per_gb)  # fmt: skip
    report("plain read of the cache file, warm", read_warm, "GB/s", anchor="memcpy",
           anchor_value=memcpy * per_gb)  # fmt: skip
    cold_read_sps = read_cold / per_gb
    report("one .npy per video (original layout), cold", npy_rate(npy, n, True), "samples/s",
           anchor="plain read, cold", anchor_value=cold_read_sps)  # fmt: skip
    report("one .npy per video (original layout), warm", npy_rate(npy, n, False), "samples/s",
           anchor="memcpy", anchor_value=memcpy)  # fmt: skip
    with FeatureCache(cache) as fc:
        items = items_of(fc, n)
        for w in workers:
            cold = loader_rate(items, fc, w, "none", device, cold=cache)
            warm = loader_rate(items, fc, w, "none", device)
            report(f"loader, no preload, {w} workers, cold", cold, "samples/s",
                   anchor="plain read, cold", anchor_value=cold_read_sps,
                   note=f"{cold * per_gb:.2f} GB/s")  # fmt: skip
            report(f"loader, no preload, {w} workers, warm", warm, "samples/s",
                   anchor="memcpy", anchor_value=memcpy,
                   note=f"{warm * per_gb:.2f} GB/s")  # fmt: skip
    fresh = fresh_memory_rate(int(gb * GB))
    report("first write to fresh memory, same bytes", fresh, "GB/s", anchor="memcpy",
           anchor_value=memcpy * per_gb)  # fmt: skip
    modes = ["ram"] + (["gpu"] if device.type == "cuda" else [])
    for mode in modes:
        ram_workers = [w for w in workers if w in (0, 2)] if mode == "ram" else [0]
        for cold in (True, False):
            r = preload(cache, n, mode, ram_workers, cold)
            temp = "cold" if cold else "warm"
            report(
                f"preload {mode}: load, {temp}",
                gb / r["seconds"],
                "GB/s",
                anchor=f"plain read, {temp}",
                anchor_value=read_cold if cold else read_warm,
                note=f"{r['seconds'] * fresh / gb:.2f} x the first-write time of fresh memory",
            )
            if mode == "ram" and cold:
                report(
                    "preload ram: memory added (peak)",
                    r["extra_bytes"] / GB,
                    "GB",
                    anchor="feature bytes",
                    anchor_value=gb,
                    better="lower",
                )
            if not cold:
                for w, rate in r["rates"].items():
                    report(f"loader, preload {mode}, {w} workers", rate, "samples/s",
                           anchor="memcpy", anchor_value=memcpy,
                           note=f"{rate * per_gb:.2f} GB/s")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48 if quick() else 300)
    ap.add_argument("--folder", type=Path, default=None, help="where to write (default: tmp)")
    ap.add_argument("--workers", default="0,1,2,4", help="loader workers to measure")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    workers = [int(x) for x in args.workers.split(",") if x != ""]
    if args.child:
        preload_child(args.cache, args.videos, args.child, workers)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.folder is not None:  # a stable place: --keep lets the next run reuse the files
        folder = args.folder / "r2-loader-data"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="r2-loader-"))
    try:
        cache, npy = build(folder, args.videos)
        measure(cache, npy, args.videos, workers, device)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
