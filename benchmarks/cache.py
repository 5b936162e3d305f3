"""Cost of the cache's crash-safe commits and of reads, at real ViT-B/32 feature sizes.

Prints, for a QVHighlights-like shape (K=4 layers, P=50 tokens, Dv=768, Dq=512):
- add_video of one 150 s video (T=75: 75x4x50x768 float16 = 23 MB), split into the time
  spent writing + flushing data and the commit itself;
- add_queries of a batch of 100 queries (L=16 tokens each: 100x16x4x512 float16 = 6.6 MB);
- the fixed cost of one commit (a one-clip tiny item);
- video() / query() read time (page cache warm), and writer re-open time.

Usage: python benchmarks/cache.py [--folder DIR] [--videos N]
Timings on a shared, loaded machine are noisy: compare medians.
"""

from __future__ import annotations

import argparse
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
    tiny(folder)
    reads(path)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--videos", type=int, default=10, help="videos to add")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        bench(Path(tmp), args.videos)


if __name__ == "__main__":
    main()
