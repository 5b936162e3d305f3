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
  exist);
- `--preload ram`: load rate cold and warm (GB/s) and the memory it adds (peak, in a fresh
  process) against the feature bytes; then batches from RAM;
- cold figures come from interleaved rounds (every path once per round, pages dropped
  before each) and are compared with the plain read of the same rounds;
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


PLAIN_READ_BYTES = 8 << 20  # the fastest plain reader here: 3.4 GB/s cold against 2.0-2.5
# for cat, 128 KB, 1 MB and 64 MB reads (interleaved rounds; read_ahead_kb is 8192)


def plain_read_rate(path: Path, cold: bool, repeats: int = 3) -> float:
    """GB/s of a sequential read of the file in 8 MB reads into a reused buffer: the median
    of `repeats` reads (`cold`: the file's pages dropped before each)."""
    view = memoryview(bytearray(PLAIN_READ_BYTES))
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


class LoaderRun:
    """One loader in a run's steady state (its first epoch, unmeasured, made its buffers);
    `epoch()` times the next epoch of training batches moved to `device`."""

    def __init__(self, items, features, workers: int, preload: str, device: torch.device):
        ds = GroundingDataset(items, features, FPS, K, train=True, seed=0)
        self.sampler = EpochBatchSampler(len(ds), BATCH, seed=0)
        self.loader = make_loader(ds, self.sampler, workers, 0, preload, device)
        self.device, self.epochs = device, 0
        self.epoch()

    def epoch(self) -> float:
        """Samples/s of one epoch."""
        self.sampler.set_epoch(self.epochs)
        self.epochs += 1
        n, t0 = 0, time.perf_counter()
        for batch in self.loader:
            batch = batch.to(self.device)
            n += batch.size
            batch = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return n / (time.perf_counter() - t0)

    def warm(self) -> float:
        """Median samples/s of several epochs (pages cached)."""
        return float(np.median([self.epoch() for _ in range(3 if quick() else 5)]))


def cold_rounds(cache: Path, runs: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median rate of each of `runs` over `rounds` rounds; in each round every run once, in
    turn (round r starts with run r: each takes each place), the file's pages dropped
    before each: runs compared under the same conditions (this VM's disk drifts by tens of
    percent within minutes)."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    fastest = {name: 0.0 for name in runs}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            drop_pages(cache)
            rates[name].append(runs[name]())
            fastest[name] = max(fastest[name], rates[name][-1])
    for name, values in rates.items():
        print(f"  {name}: " + " ".join(f"{v:.3g}" for v in values), flush=True)
    medians = {name: float(np.median(values)) for name, values in rates.items()}
    return {**medians, **{f"fastest {name}": v for name, v in fastest.items()}}


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
        rates = {w: LoaderRun(items, features, w, mode, device).warm() for w in workers}
    print(json.dumps({"seconds": seconds, "extra_bytes": extra, "rates": rates}))


def preload(cache: Path, n: int, mode: str, workers: list[int]) -> dict:
    """A preload in a fresh process (the caller drops the pages for a cold one)."""
    cmd = [sys.executable, __file__, "--child", mode, "--videos", str(n), "--cache", str(cache),
           "--workers", ",".join(map(str, workers))]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def measure_loaders(cache: Path, n: int, workers: list[int], device, memcpy: float) -> None:
    """Cold and warm rates of the loader from the file, against the plain read / memcpy."""
    per_gb = SAMPLE_BYTES / GB
    with FeatureCache(cache) as fc:
        items = items_of(fc, n)
        runs = {w: LoaderRun(items, fc, w, "none", device) for w in workers}
        for w, run in runs.items():
            rate = run.warm()
            report(
                f"loader, no preload, {w} workers, warm",
                rate,
                "samples/s",
                anchor="memcpy",
                anchor_value=memcpy,
                note=f"{rate * per_gb:.2f} GB/s",
            )
        plain = lambda: plain_read_rate(cache, cold=False, repeats=1) / per_gb  # noqa: E731
        timed = {"plain read": plain, **{f"{w} workers": r.epoch for w, r in runs.items()}}
        print(f"cold rounds (samples/s; pages dropped before each): {', '.join(timed)}")
        cold = cold_rounds(cache, timed, 2 if quick() else len(timed))
    for w in workers:
        rate = cold[f"{w} workers"]
        report(f"loader, no preload, {w} workers, cold", rate, "samples/s",
               anchor="plain read, cold", anchor_value=cold["plain read"],
               note=f"{rate * per_gb:.2f} GB/s; medians of interleaved rounds; "
               f"{rate / cold['fastest plain read']:.2f} x the fastest plain read")  # fmt: skip


def measure_preload(cache: Path, n: int, mode: str, workers: list[int], memcpy: float) -> None:
    """Load rate cold (interleaved with plain reads) and warm, memory, batches from memory."""
    gb, per_gb = n * SAMPLE_BYTES / GB, SAMPLE_BYTES / GB
    results: list[dict] = []

    def cold_load() -> float:
        results.append(preload(cache, n, mode, []))
        return gb / results[-1]["seconds"]

    plain = lambda: plain_read_rate(cache, cold=False, repeats=1)  # noqa: E731
    print(f"cold rounds (GB/s; pages dropped before each): plain read, preload {mode}")
    cold = cold_rounds(cache, {"plain read": plain, "preload": cold_load}, 2 if quick() else 3)
    report(
        f"preload {mode}: load, cold",
        cold["preload"],
        "GB/s",
        anchor="plain read, cold",
        anchor_value=cold["plain read"],
        note="medians of interleaved rounds; "
        f"{cold['preload'] / cold['fastest plain read']:.2f} x the fastest plain read",
    )
    peak = max(r["extra_bytes"] for r in results) / GB
    report(f"preload {mode}: memory added (peak)", peak, "GB", anchor="feature bytes",
           anchor_value=gb, better="lower")  # fmt: skip
    warm = preload(cache, n, mode, workers if mode == "ram" else [0])
    report(f"preload {mode}: load, warm", gb / warm["seconds"], "GB/s", anchor="plain read, warm",
           anchor_value=plain_read_rate(cache, cold=False))  # fmt: skip
    for w, rate in warm["rates"].items():
        report(f"loader, preload {mode}, {w} workers", rate, "samples/s", anchor="memcpy",
               anchor_value=memcpy, note=f"{rate * per_gb:.2f} GB/s")  # fmt: skip


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
    report("one .npy per video (original layout), cold", npy_rate(npy, n, True), "samples/s",
           anchor="plain read, cold", anchor_value=read_cold / per_gb)  # fmt: skip
    report("one .npy per video (original layout), warm", npy_rate(npy, n, False), "samples/s",
           anchor="memcpy", anchor_value=memcpy)  # fmt: skip
    measure_loaders(cache, n, workers, device, memcpy)
    for mode in ["ram"] + (["gpu"] if device.type == "cuda" else []):
        measure_preload(cache, n, mode, workers, memcpy)
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
