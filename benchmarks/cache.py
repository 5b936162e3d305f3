"""Cost of the cache's crash-safe commits and of reads, at real ViT-B/32 feature sizes.

Prints, for a QVHighlights-like shape (K=4 layers, P=50 tokens, Dv=768, Dq=512):
- add_video of one 150 s video (T=75: 75x4x50x768 float16 = 23 MB), split into the time
  spent writing + flushing data and the commit itself;
- add_queries of a batch of 100 queries (L=16 tokens each: 100x16x4x512 float16 = 6.6 MB);
- the fixed cost of one commit (a one-clip tiny item);
- video() / query() read time (page cache warm), and writer re-open time;
- a video written with `video_stream` in chunks of 8 clips vs one `add_video`;
- `--merge N`: read speed (MB/s, every video once, cold = pages dropped with
  posix_fadvise(DONTNEED), and warm) of a cache written in one run against the same videos
  written as two shards and joined by `r2 cache merge`, and their ratio.

Usage: python benchmarks/cache.py [--folder DIR] [--videos N] [--merge N]
Timings on a shared, loaded machine are noisy: compare medians.
Run under `flock -x /tmp/r2-cpu.lock` for figures you report.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from r2.cache import CacheSettings, CacheWriter, FeatureCache, QueryRecord, VideoRecord

K, P, DV, DQ, T, L = 4, 50, 768, 512, 75, 16
SETTINGS = CacheSettings("openai/clip-vit-base-patch32", None, K, 0.5, "middle", 224,
                         (0.48145466, 0.4578275, 0.40821073),
                         (0.26862954, 0.26130258, 0.27577711), "fp32", P, DV, DQ)  # fmt: skip


def _ms(samples: list[float]) -> str:
    med, low = 1e3 * statistics.median(samples), 1e3 * min(samples)
    return f"median {med:8.3f} ms (min {low:.3f})"


def bench(folder: Path, n_videos: int) -> None:
    path = folder / "bench.h5"
    rng = np.random.default_rng(0)
    video = rng.standard_normal((T, K, P, DV)).astype(np.float16)
    queries = [rng.standard_normal((L, K, DQ)).astype(np.float16) for _ in range(100)]
    add_v, add_q = [], []
    with CacheWriter(path, SETTINGS) as w:
        for i in range(n_videos):
            t0 = time.perf_counter()
            w.add_video(VideoRecord(f"v{i}", 150.0, T, f"/v/{i}.mp4", 1, 1.0, False), video)
            add_v.append(time.perf_counter() - t0)
        for b in range(5):
            records = [QueryRecord(f"{b}.{i}", f"query {i}", L, False) for i in range(100)]
            t0 = time.perf_counter()
            w.add_queries(records, queries)
            add_q.append(time.perf_counter() - t0)
        # where a video's time goes: data write + flush vs the commit record + flush
        f = w._f  # benchmark-only peek at the writer's handle
        data, commit = [], []
        for _ in range(n_videos):
            t0 = time.perf_counter()
            w._write("video/frames", w._counts[1], video)
            f.flush()
            t1 = time.perf_counter()
            w._commit(list(w._counts))  # rewrites the commit record with the same counts
            commit.append(time.perf_counter() - t1)
            data.append(t1 - t0)
    mb = video.nbytes / 1e6
    print(
        f"add_video, T={T} ({mb:.1f} MB):       {_ms(add_v)}  "
        f"= {mb / statistics.median(add_v):.0f} MB/s"
    )
    print(f"  of which data write + flush:     {_ms(data)}")
    print(f"  of which commit record + flush:  {_ms(commit)}")
    qmb = sum(q.nbytes for q in queries) / 1e6
    print(f"add_queries, 100 x L={L} ({qmb:.1f} MB): {_ms(add_q)}")
    streamed(folder, video, n_videos)
    tiny(folder)
    reads(path)


def streamed(folder: Path, video: np.ndarray, n: int) -> None:
    """One video as 8-clip chunks through video_stream, against add_video of the whole."""
    times = {"add_video": [], "video_stream": []}
    with CacheWriter(folder / "stream.h5", SETTINGS) as w:
        for i in range(2 * n):
            record = VideoRecord(f"v{i}", 150.0, T, "/v.mp4", 1, 1.0, False)
            t0 = time.perf_counter()
            if i % 2:
                with w.video_stream(record) as s:
                    for at in range(0, T, 8):
                        s.write(video[at : at + 8])
            else:
                w.add_video(record, video)
            times["video_stream" if i % 2 else "add_video"].append(time.perf_counter() - t0)
    for name, samples in times.items():
        print(f"{name + ' (23 MB)':<32} {_ms(samples)}")


def tiny(folder: Path) -> None:
    s = CacheSettings("tiny", None, 1, 0.5, "middle", 32, (0.5,) * 3, (0.5,) * 3, "fp32", 1, 8, 8)
    feats = np.zeros((1, 1, 1, 8), np.float16)
    times = []
    with CacheWriter(folder / "tiny.h5", s) as w:
        for i in range(200):
            t0 = time.perf_counter()
            w.add_video(VideoRecord(f"v{i}", 2.0, 1, "x", 1, 1.0, False), feats)
            times.append(time.perf_counter() - t0)
    print(f"fixed cost of one commit (tiny item): {_ms(times)}")


def reads(path: Path) -> None:
    t0 = time.perf_counter()
    with CacheWriter(path, SETTINGS):
        pass
    reopen = time.perf_counter() - t0
    with FeatureCache(path) as c:
        vids, qids = c.video_ids(), c.query_ids()
        c.video(vids[0])
        v_times, q_times = [], []
        for vid in vids:
            t0 = time.perf_counter()
            c.video(vid)
            v_times.append(time.perf_counter() - t0)
        for qid in qids:
            t0 = time.perf_counter()
            c.query(qid)
            q_times.append(time.perf_counter() - t0)
        summary = c.summary()
    print(f"video() read (23 MB, warm):        {_ms(v_times)}")
    print(f"query() read (L={L}, warm):           {_ms(q_times)}")
    print(f"writer re-open ({summary['videos']} videos, {summary['queries']} queries): "
          f"{1e3 * reopen:.1f} ms; file {summary['file_bytes'] / 1e6:.0f} MB")  # fmt: skip


def _drop_pages(path: Path) -> None:
    """Evict a file's pages from the page cache (no root needed): the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_all(path: Path, order: list[str], cold: bool) -> float:
    """MB/s of reading every video once in `order` (a fresh FeatureCache per pass)."""
    if cold:
        _drop_pages(path)
    with FeatureCache(path) as c:
        t0 = time.perf_counter()
        n = sum(c.video(vid).nbytes for vid in order)
        return n / 1e6 / (time.perf_counter() - t0)


def merge_reads(folder: Path, n: int, rounds: int = 6) -> None:
    """Read speed of a merged cache against a single-run cache with the same videos."""
    from r2.cache.rebuild import merge

    rng = np.random.default_rng(1)
    videos = [rng.standard_normal((T, K, P, DV)).astype(np.float16) for _ in range(8)]
    single, shards = folder / "single.h5", [folder / "shard0.h5", folder / "shard1.h5"]
    for path, ids in ((single, range(n)), (shards[0], range(0, n, 2)), (shards[1], range(1, n, 2))):
        with CacheWriter(path, SETTINGS) as w:
            for i in ids:
                w.add_video(VideoRecord(f"v{i}", 150.0, T, f"/v/{i}.mp4", 1, 1.0, False),
                            videos[i % len(videos)])  # fmt: skip
    merged = folder / "merged.h5"
    t0 = time.perf_counter()
    merge(shards, merged)
    gb = n * videos[0].nbytes / 1e9
    print(f"merge of 2 shards, {n} videos ({gb:.2f} GB): {time.perf_counter() - t0:.1f} s")
    order = [f"v{i}" for i in range(n)]
    random.Random(0).shuffle(order)
    for cold in (True, False):
        speeds: dict[str, list[float]] = {"single": [], "merged": []}
        for r in range(rounds):  # alternating (and which goes first), so load hits both alike
            pair = [("single", single), ("merged", merged)]
            for name, path in pair if r % 2 == 0 else pair[::-1]:
                speeds[name].append(_read_all(path, order, cold))
        a, b = statistics.median(speeds["single"]), statistics.median(speeds["merged"])
        print(f"read every video ({'cold' if cold else 'warm'}): single-run {a:7.0f} MB/s, "
              f"merged {b:7.0f} MB/s, merged / single = {b / a:.2f}")  # fmt: skip
        print(
            "  per round (single, merged): "
            + ", ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(*speeds.values(), strict=True))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--videos", type=int, default=10, help="videos to add")
    parser.add_argument("--merge", type=int, default=0, help="videos of the merge benchmark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        if args.merge:
            merge_reads(Path(tmp), args.merge)
        else:
            bench(Path(tmp), args.videos)


if __name__ == "__main__":
    main()
