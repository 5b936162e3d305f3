"""GPU figures, for a machine that has one: extraction, training steps, inference.

- extraction: frames/s of `r2 extract` over --videos copies of a 150 s 640x360 H.264 video
  with 1, 2, 4, 8 and all-cores decode workers, against the CLIP forward alone (the same
  frames already decoded: the limit of the pipeline);
- training: step time and samples/s of the QVHighlights preset (B = 32, T = 75, ViT-B/32
  shapes) fed by the loader with `--preload none`, `ram` and `gpu` (the cache written by
  benchmarks/loader.py's generator), against the model step alone on a batch resident on
  the GPU (the limit the data path should approach);
- inference: seconds of the released-size model's predict for a 150 s and a 2 h video
  (features on the host, as `R2Predictor.predict` gets them), forward + decoding.

CLIP weights are random in the full ViT-B/32 architecture (the speed is the real model's;
no download needed) unless --model names a CLIP folder or hub id. Without CUDA the script
says so and exits 0 (nothing to measure), so `make bench-gpu` runs anywhere.

    python benchmarks/gpu.py [--videos 4] [--steps 20] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import quick, report

CLIP_FPS, IMAGE_SIZE, K = 0.5, 224, 4


def no_gpu_reason() -> str | None:
    """Why nothing can be measured here, or None when a CUDA GPU is usable."""
    if torch.cuda.is_available():
        return None
    build = "CPU-only torch build" if torch.version.cuda is None else "no usable GPU"
    return f"no CUDA GPU on this machine ({build}, torch {torch.__version__}): nothing measured"


def _sync() -> None:
    torch.cuda.synchronize()


# ---------------------------------------------------------------- extraction


def extraction(data: Path, model: str | None, videos: int, workers: list[int]) -> None:
    from extract import prepare
    from r2.extract import extract
    from r2.extract.decode import decode_video
    from r2.extract.encode import ClipEncoder

    random_model, files = prepare(data, ["short"])
    model = model or str(random_model)
    video = files["short"]
    frames = decode_video(video, CLIP_FPS, IMAGE_SIZE).frames
    encoder = ClipEncoder.load(model, k=K, towers=("vision",), device="cuda")
    encoder.encode_frames(frames[:32])  # warm-up (kernels, allocator)
    _sync()
    t0 = time.perf_counter()
    for _ in range(videos):
        encoder.encode_frames(frames)
    _sync()
    forward = videos * len(frames) / (time.perf_counter() - t0)
    report("CLIP forward alone (fp16, CUDA)", forward, "frames/s", note=f"{len(frames)} frames")
    for w in workers:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "videos"
            folder.mkdir()
            for i in range(videos):
                (folder / f"copy{i}{video.suffix}").symlink_to(video)
            t0 = time.perf_counter()
            extract([folder], Path(tmp) / "c.h5", model=model, k=K, device="cuda", workers=w)
            rate = videos * len(frames) / (time.perf_counter() - t0)
        report(f"extract, {w} decode workers", rate, "frames/s", anchor="CLIP forward alone",
               anchor_value=forward, note=f"{videos} x 150 s videos")  # fmt: skip


# ---------------------------------------------------------------- training


def _step_fn(model, optimizer, scaler):
    def step(batch) -> None:
        batch = batch.to("cuda")  # no-op for batches the loader already put there
        with torch.autocast("cuda", dtype=torch.float16):
            loss = sum(model.losses(model(batch), batch).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def training(data: Path, steps: int, n_videos: int) -> None:
    from loader import BATCH, DQ, DV, FPS, build, items_of

    from r2.cache import FeatureCache
    from r2.train.config import QVHIGHLIGHTS
    from r2.train.data import EpochBatchSampler, GroundingDataset, PreloadedFeatures, make_loader
    from r2.train.model import R2Model

    cache_path, _ = build(data / "loader", n_videos)
    cfg = QVHIGHLIGHTS.model_config(video_dim=DV, query_dim=DQ, k=K)
    model = R2Model(cfg).cuda()
    step = _step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4),
                    torch.amp.GradScaler("cuda"))  # fmt: skip
    with FeatureCache(cache_path) as fc:
        items = items_of(fc, n_videos)
        ds = GroundingDataset(items, fc, FPS, K, train=True)
        resident = next(iter(make_loader(ds, EpochBatchSampler(len(ds), BATCH, 0), 0)))
        resident = resident.to("cuda")
        step(resident)
        _sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(resident)
        _sync()
        limit = steps / (time.perf_counter() - t0)
        report("training step alone (batch on the GPU)", 1000 / limit, "ms/step",
               better="lower", note=f"B={BATCH}, fp16 autocast")  # fmt: skip
        for mode in ("none", "ram", "gpu"):
            features = fc if mode == "none" else PreloadedFeatures.load(
                fc, items, K, "cuda" if mode == "gpu" else None)  # fmt: skip
            ds = GroundingDataset(items, features, FPS, K, train=True)
            sampler = EpochBatchSampler(len(ds), BATCH, 0)
            loader = make_loader(ds, sampler, 2, 0, mode, torch.device("cuda"))
            done, t0 = 0, time.perf_counter()
            for epoch in range(10**6):
                sampler.set_epoch(epoch)
                for batch in loader:
                    step(batch)
                    batch, done = None, done + 1
                    if done == steps:
                        break
                if done == steps:
                    break
            _sync()
            rate = done / (time.perf_counter() - t0)
            report(f"training with --preload {mode}", BATCH * rate, "samples/s",
                   anchor="step alone", anchor_value=BATCH * limit,
                   note=f"{1000 / rate:.1f} ms/step, 2 loader workers")  # fmt: skip
            del features, loader


# ---------------------------------------------------------------- inference


def inference() -> None:
    from r2.evaluate.postprocess import postprocess_windows
    from r2.train.batch import Sample, collate
    from r2.train.config import QVHIGHLIGHTS
    from r2.train.model import R2Model

    dv, dq, p, l_tokens = 768, 512, 50, 20
    model = R2Model(QVHIGHLIGHTS.model_config(video_dim=dv, query_dim=dq, k=K)).cuda().eval()
    query = torch.randn(l_tokens, K, dq).half()
    for name, seconds in (("150 s video", 150), ("2 h video", 7200)):
        t = round(seconds * CLIP_FPS)
        video = torch.randn(t, K, p, dv, dtype=torch.float16)
        with torch.inference_mode():
            for _ in (False, True):  # a warm-up, then the measurement
                _sync()
                t0 = time.perf_counter()
                batch = collate([Sample("q", "v", video, query, CLIP_FPS, seconds)]).to("cuda")
                raw = model.predict(model(batch), batch)[0]
                postprocess_windows(raw.boundary.astype(np.float64), seconds, None, "normal", 0.7)
                _sync()
        report(f"inference, {name}", time.perf_counter() - t0, "s", better="lower",
               note=f"{t} clips, one query, features on the host")  # fmt: skip
        del video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2 if quick() else 4, help="extraction")
    ap.add_argument("--train-videos", type=int, default=64 if quick() else 300)
    ap.add_argument("--steps", type=int, default=5 if quick() else 20)
    ap.add_argument("--workers", default="1,2,4,8,all", help="decode workers to measure")
    ap.add_argument("--model", default=None, help="CLIP folder or hub id (default: random)")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "r2_bench")
    args = ap.parse_args()
    reason = no_gpu_reason()
    if reason is not None:
        print(f"benchmarks/gpu.py: {reason}")
        return
    print(f"GPU: {torch.cuda.get_device_name()}, {os.cpu_count()} cores")
    cores = os.cpu_count() or 1
    workers = sorted({cores if w == "all" else int(w) for w in args.workers.split(",")})
    extraction(args.data_dir, args.model, args.videos, workers)
    training(args.data_dir, args.steps, args.train_videos)
    inference()


if __name__ == "__main__":
    main()
