"""Speed of what people with videos run: app queries on an encoded video, batch throughput.

Models: a CLIP with ViT-B/32's architecture and random weights (the real model's speed,
`make_random_vit_b32`) and a random model of the released QVHighlights size (hidden 256,
K = 4, 0.5 clip/s). Videos: generated H.264, 640×360 at 30 frames/s (a moving bar on a
slowly changing colour); 2 torch threads.

- `latency`: `r2 app`'s engine on a 150 s video: the first request (decode + CLIP-encode,
  the anchor), then further requests on the encoded video, 1 and 3 queries each: total
  (CLIP text forward + R² forward + post-processing + thumbnails) and the HTML rendering,
  median of `--repeat` runs, with the ratio to the anchor.
- `batch`: `r2 predict DIR --queries FILE --out results.jsonl` over `--videos` videos of
  `--seconds` seconds, 3 queries each: videos/min with one decoding worker overlapping the
  CLIP forward (the default on 2 cores) and with decoding in the main process (the anchor,
  `--workers 0`).

    python benchmarks/app.py latency [--repeat 10]
    python benchmarks/app.py batch [--videos 6] [--seconds 150]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_SIZE, VIDEO_FPS, GOP = (640, 360), 30, 60  # generated files: pixels, frames/s, frames
QUERIES = ["a white bar moves to the right", "the screen turns red", "nothing happens at all"]
WORK = Path(tempfile.gettempdir()) / "r2-bench-app"  # generated models and videos, reused


def write_video(path: Path, seconds: float, shade: int = 0) -> Path:
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(VIDEO_FPS))
        stream.width, stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(GOP), "preset": "ultrafast", "crf": "28"}
        w, h = VIDEO_SIZE
        for i in range(round(seconds * VIDEO_FPS)):
            rgb = np.empty((h, w, 3), np.uint8)
            rgb[:] = ((i // 7 + shade) % 256, (i // 3) % 256, 128)
            x = (i * 3) % w
            rgb[:, x : x + 16] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def predictor():
    """A released-size random checkpoint whose CLIP is a random ViT-B/32 (built once)."""
    import torch

    from r2.api import R2Predictor
    from r2.cache import CacheSettings
    from r2.extract.encode import ClipEncoder
    from r2.extract.tiny_clip import make_random_vit_b32
    from r2.train.checkpoint import build_meta, save_checkpoint
    from r2.train.config import QVHIGHLIGHTS
    from r2.train.model import R2Model

    torch.set_num_threads(2)
    clip, ckpt = WORK / "vit-b32", WORK / "run" / "best.safetensors"
    if not (clip / "config.json").exists():
        make_random_vit_b32(clip)
    if not ckpt.exists():
        s = ClipEncoder.load(str(clip), k=4, device="cpu", towers=()).settings
        settings = CacheSettings(
            s.model_id,
            s.revision,
            s.k,
            0.5,
            "middle",
            s.image_size,
            s.mean,
            s.std,
            s.dtype,
            s.tokens_per_frame,
            s.video_dim,
            s.text_dim,
        )
        cfg = QVHIGHLIGHTS.model_config(video_dim=s.video_dim, query_dim=s.text_dim, k=s.k)
        torch.manual_seed(0)
        save_checkpoint(ckpt.with_suffix(""), R2Model(cfg), build_meta(cfg, QVHIGHLIGHTS, settings))
    return R2Predictor.from_pretrained(ckpt, device="cpu")


def latency(repeat: int) -> None:
    from r2.app_engine import AppEngine
    from r2.app_render import answer_html

    video = write_video(WORK / "video_150s.mp4", 150)
    engine = AppEngine(predictor())
    began = time.perf_counter()
    engine.ask(video, QUERIES[:1])
    anchor = time.perf_counter() - began
    print(f"150 s video, 75 clips; first request (decode + ViT-B/32 encode): {anchor:.2f} s")
    for n in (1, 3):
        totals, renders, models = [], [], []
        for r in range(repeat):
            queries = [f"{q} {r}" for q in QUERIES[:n]]  # new texts: no caching of queries
            began = time.perf_counter()
            answer = engine.ask(video, queries)
            middle = time.perf_counter()
            answer_html(answer, 5)
            totals.append(middle - began)
            renders.append(time.perf_counter() - middle)
            models.append(answer.seconds["predict"])
        total, render = statistics.median(totals), statistics.median(renders)
        print(
            f"further request, {n} quer{'y' if n == 1 else 'ies'}: {total * 1000:.0f} ms "
            f"(model {statistics.median(models) * 1000:.0f} ms) + HTML {render * 1000:.0f} ms"
            f" = {(total + render) / anchor:.3f} × the first request"
        )


def batch(videos: int, seconds: float) -> None:
    from r2.batch import predict_batch

    folder = WORK / f"batch_{videos}x{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        write_video(folder / f"video_{i:02d}.mp4", seconds, shade=40 * i)
    queries = WORK / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n")
    pred = predictor()
    pred.encoder.encode_frames(np.zeros((1, 224, 224, 3), np.uint8))  # warm-up
    rates = {}
    for workers in (0, 1):
        out = WORK / f"results_w{workers}.jsonl"
        out.unlink(missing_ok=True)
        summary = predict_batch(pred, [folder], queries, out, workers=workers)
        rates[workers] = len(summary.videos_done) / summary.seconds * 60
        print(
            f"workers={workers}: {len(summary.videos_done)} videos of {seconds:g} s, "
            f"{summary.rows_written} rows in {summary.seconds:.1f} s = "
            f"{rates[workers]:.2f} videos/min"
        )
    print(f"overlap (1 worker) vs decoding in the main process: {rates[1] / rates[0]:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("latency").add_argument("--repeat", type=int, default=10)
    b = sub.add_parser("batch")
    b.add_argument("--videos", type=int, default=6)
    b.add_argument("--seconds", type=float, default=150.0)
    a = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if a.what == "latency":
        latency(a.repeat)
    else:
        batch(a.videos, a.seconds)


if __name__ == "__main__":
    main()
