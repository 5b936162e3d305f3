"""What bfloat16 CLIP encoding costs: feature differences, prediction differences, speed.

CLIP weights: the full ViT-B/32 architecture with RANDOM weights (extract.tiny_clip.
make_random_vit_b32; no pretrained weights can be downloaded on the build machines), unless
--clip names a real model. Printed, fp32 compute vs bf16 compute (both stored float16):

1. features of real frames (../shared/testdata/videos/decodable, 1 frame/s) and of real
   queries (QVHighlights val): per kept layer, the relative L2 difference and the worst
   per-token cosine, next to what float16 storage alone changes (for scale); and the
   encoding speed of both in the same run;
2. predictions: an R² model trained on fp32 features of the procedural demo dataset
   (r2.demo, this CLIP) predicts its validation split from fp32 and from bf16 features:
   the benchmark metrics of both, and per query the top-1 window IoU between the two, the
   largest saliency difference and the saliency correlation.

    python benchmarks/clip_precision.py [--clip ID_OR_FOLDER] [--threads 2] [--skip-predictions]

Part 2 extracts and trains the demo (about 30 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
VIDEOS = SHARED / "videos" / "decodable"
QUERIES = SHARED / "qvhighlights" / "highlight_val_release.jsonl"
N_QUERIES = 300
FRAME_FPS = 1.0


def real_frames(image_size: int) -> np.ndarray:
    from r2.extract.decode import iter_clip_frames

    frames = [
        f for v in sorted(VIDEOS.iterdir()) for f in iter_clip_frames(v, FRAME_FPS, image_size)
    ]
    return np.stack(frames)


def real_queries() -> list[str]:
    lines = QUERIES.read_text().splitlines()[:N_QUERIES]
    return [json.loads(line)["query"] for line in lines]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def _worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.min())


def feature_report(clip: str) -> None:
    from r2.extract.encode import ClipEncoder

    enc = {dt: ClipEncoder.load(clip, k=4, device="cpu", dtype=dt) for dt in ("fp32", "bf16")}
    frames = real_frames(enc["fp32"].settings.image_size)
    queries = real_queries()
    feats, texts, secs = {}, {}, {}
    for _round in range(2):  # alternate; the second round is timed
        for dt, e in enc.items():
            t0 = time.perf_counter()
            feats[dt] = e.encode_frames(frames, batch=32)  # (N, K, P, Dv) float16
            secs[dt] = time.perf_counter() - t0
            texts[dt] = [t.features for t in e.encode_texts(queries)]  # (L, K, Dq) each
    with torch.inference_mode():
        exact = torch.cat([enc["fp32"].frame_hidden_states(frames[i : i + 32]).float()
                           for i in range(0, len(frames), 32)]).numpy()  # fmt: skip
    print(f"features: {len(frames)} real frames, {len(queries)} real queries, CLIP {clip}")
    rate = {dt: len(frames) / secs[dt] for dt in secs}
    print(f"  video encoding: fp32 {rate['fp32']:.1f} frames/s, bf16 {rate['bf16']:.1f} "
          f"frames/s ({rate['bf16'] / rate['fp32']:.2f}x)")  # fmt: skip
    for k in range(feats["fp32"].shape[1]):
        a, b = feats["fp32"][:, k], feats["bf16"][:, k]
        qa = np.concatenate([t[:, k] for t in texts["fp32"]])
        qb = np.concatenate([t[:, k] for t in texts["bf16"]])
        print(f"  layer -{4 - k}: video bf16 vs fp32 relative L2 {_rel(a, b):.2e} (worst "
              f"token cosine {_worst_cosine(a, b):.5f}; float16 storage alone "
              f"{_rel(exact[:, k], a):.1e}); text {_rel(qa, qb):.2e} (worst cosine "
              f"{_worst_cosine(qa, qb):.5f})")  # fmt: skip


def prediction_report(clip: str, out: Path, n_videos: int) -> None:
    from r2.demo import DemoSize, run_demo
    from r2.demo_data import load_jsonl
    from r2.evaluate import evaluate_records
    from r2.evaluate.inference import predict_split
    from r2.extract import extract
    from r2.train.checkpoint import load_checkpoint

    result = run_demo(out, size=DemoSize(n_videos=n_videos), clip=clip, device="cpu")
    model, _ = load_checkpoint(result.checkpoint, device="cpu")
    val = load_jsonl(out / "data" / "val.jsonl")
    caches = {"fp32": out / "cache.h5", "bf16": out / "cache_bf16.h5"}
    extract([out / "data" / "videos"], caches["bf16"], annotations=[out / "data" / "val.jsonl"],
            model=clip, k=4, fps=0.5, device="cpu", dtype="bf16", strict=True)  # fmt: skip
    preds = {dt: predict_split(model, c, val, "qvhighlights") for dt, c in caches.items()}
    metrics = {dt: evaluate_records(p, val, "qvhighlights") for dt, p in preds.items()}
    n_train = len(load_jsonl(out / "data" / "train.jsonl"))
    print(f"predictions: R² model trained on fp32 features of {n_train} demo queries, "
          f"{len(val)} validation queries")  # fmt: skip
    for key in ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "HL-min-VeryGood-mAP"):
        a, b = metrics["fp32"][key], metrics["bf16"][key]
        print(f"  {key:22s} fp32 {a:6.2f}  bf16 {b:6.2f}  ({b - a:+.2f})")
    ious, dsal, corr = [], [], []
    for pa, pb in zip(preds["fp32"], preds["bf16"], strict=True):
        (s1, e1, _), (s2, e2, _) = pa["pred_relevant_windows"][0], pb["pred_relevant_windows"][0]
        inter = max(0.0, min(e1, e2) - max(s1, s2))
        ious.append(inter / (max(e1, e2) - min(s1, s2)))
        sa, sb = np.asarray(pa["pred_saliency_scores"]), np.asarray(pb["pred_saliency_scores"])
        dsal.append(np.abs(sa - sb).max())
        corr.append(np.corrcoef(sa, sb)[0, 1])
    print(f"  top-1 window IoU fp32 vs bf16: mean {np.mean(ious):.4f}, min {np.min(ious):.4f}, "
          f"identical in {np.mean(np.asarray(ious) > 0.999) * 100:.0f}% of queries")  # fmt: skip
    print(
        f"  saliency: largest |difference| {np.max(dsal):.2e}, correlation min {np.min(corr):.5f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--clip", default=None, help="CLIP id/folder (default: random ViT-B/32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--videos", type=int, default=90, help="demo videos for part 2")
    ap.add_argument("--skip-predictions", action="store_true")
    args = ap.parse_args()
    if not VIDEOS.is_dir() or not QUERIES.is_file():
        raise SystemExit(f"needs the shared test data ({SHARED}): real frames and queries")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        clip = args.clip
        if clip is None:
            from r2.extract.tiny_clip import make_random_vit_b32

            clip = str(make_random_vit_b32(out / "random_vit_b32", seed=0))
        feature_report(clip)
        if not args.skip_predictions:
            prediction_report(clip, out, args.videos)


if __name__ == "__main__":
    main()
