"""Throughput of the training data path and of validation inference on QVHighlights shapes.

Builds a temporary cache of N videos (T = 75 clips, K = 4, P = 50, Dv = 768, float16, i.e.
23 MB per video like a real QVHighlights cache) and N queries (L = 20), then prints:

- samples/s of the training loader (batch 32, QVHighlights labels) reading the cache file
  with 0 and 2 reading threads, and from RAM after `--preload ram` (plus the preload time);
- seconds per query of validation inference (`predict_items`, B = 1, full-size model).

The machine may be shared: figures are noisy; the load average is printed.

    python benchmarks/train_data.py [--videos 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from r2.cache import CacheSettings, CacheWriter, FeatureCache, QueryRecord, VideoRecord
from r2.evaluate.inference import predict_items
from r2.train.config import QVHIGHLIGHTS
from r2.train.data import (
    Annotation,
    EpochBatchSampler,
    GroundingDataset,
    PreloadedFeatures,
    make_loader,
    prepare_items,
)
from r2.train.model import R2Model

T, L, K, P, DV, DQ, FPS, BATCH = 75, 20, 4, 50, 768, 512, 0.5, 32
SETTINGS = CacheSettings(
    model_id="openai/clip-vit-base-patch32", revision=None, k=K, fps=FPS, frame_at="middle",
    image_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dtype="fp32",
    tokens_per_frame=P, video_dim=DV, text_dim=DQ)  # fmt: skip


def build(path: Path, n: int) -> list[Annotation]:
    rng = np.random.default_rng(0)
    annos = []
    with CacheWriter(path, SETTINGS) as w:
        for i in range(n):
            vid = f"v{i:04d}"
            feats = rng.standard_normal((T, K, P, DV), dtype=np.float32).astype(np.float16)
            w.add_video(VideoRecord(vid, T / FPS, T, vid, 1, 0.0, False), feats)
            data = {"qid": i, "vid": vid, "duration": T / FPS, "query": "q",
                    "relevant_windows": [[20.0, 40.0]], "relevant_clip_ids": [10, 11, 12],
                    "saliency_scores": [[1, 2, 3]] * 3}  # fmt: skip
            annos.append(Annotation(data=data, where=f"bench:{i}", qid=str(i), vid=vid))
        w.add_queries(
            [QueryRecord(str(i), "q", L, False) for i in range(n)],
            [rng.standard_normal((L, K, DQ)).astype(np.float16) for _ in range(n)],
        )
    return annos


def loader_rate(items, features, workers: int, epochs: int = 2) -> float:
    ds = GroundingDataset(items, features, FPS, K, train=True, seed=0, repeat=4)
    sampler = EpochBatchSampler(len(ds), BATCH, seed=0)
    loader = make_loader(ds, sampler, workers, seed=0, preload="none")
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            n += batch.size
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        annos = build(path, args.videos)
        size = path.stat().st_size / 2**20
        print(f"cache: {args.videos} videos, {size:.0f} MiB, written in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        with FeatureCache(path) as fc:
            items = prepare_items(annos, fc, "qvhighlights", train=True)
            for workers in (0, 2):
                rate = loader_rate(items, fc, workers)
                print(f"loader from the cache file, {workers} workers: {rate:.1f} samples/s")
            t0 = time.perf_counter()
            ram = PreloadedFeatures.load(fc, items, K)
            print(f"preload ram: {time.perf_counter() - t0:.2f} s; loader from RAM: "
                  f"{loader_rate(items, ram, 0):.1f} samples/s")  # fmt: skip
            model = R2Model(QVHIGHLIGHTS.model_config()).eval()
            n = min(8, len(items))
            t0 = time.perf_counter()
            predict_items(model, ram, items[:n], QVHIGHLIGHTS, FPS, progress=False)
            print(f"validation inference (B = 1, T = {T}): "
                  f"{(time.perf_counter() - t0) / n * 1000:.0f} ms per query")  # fmt: skip
    print(f"load average: {os.getloadavg()}, torch threads: {args.threads}")


if __name__ == "__main__":
    main()
