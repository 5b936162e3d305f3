"""Memory of long videos: peak resident memory beyond the features, 15 min vs 2 h.

Each length runs in a fresh process; peak resident memory (VmHWM) is reset through
/proc/self/clear_refs once the inputs exist, so the figure is what the measured step adds.

- `model`: the released QVHighlights model (hidden 256, K = 4) on ViT-B/32-sized features
  (P = 50 tokens per frame, Dv = 768, float16) at 0.5 clip/s, one 20-token query: collate,
  forward, decoding, post-processing (what `predict` runs on encoded features).
  `--no-chunk` turns the inference chunking off (one pass, as in training) to compare.
- `e2e`: `R2Predictor` on a generated video file: `encode_video` (decode → CLIP), one
  query (`predict`), then three in one pass (`predict_many`), all on one encoding; the peak
  includes the features, not the CLIP weights (a warm-up forward pages them in first: they
  are memory-mapped and would count otherwise).
- `extract`: `r2.extract.extract` of the same file with one decoding worker: peak of the
  main process (model load included) and of the decoding worker (largest descendant).
  `--no-spill` keeps long videos' decoded frames in memory (no r2.extract.spill) to compare.

CLIP weights are random (`--clip`): "tiny224" (224-pixel frames, 50 tokens, tiny widths:
real decoding sizes, fast), "tiny" (32-pixel frames) or "vit-b32" (full size, about 10-15
frames/s on 2 cores).

    python benchmarks/long_video.py model [--minutes 15 60 120] [--no-chunk]
    python benchmarks/long_video.py e2e [--minutes 15 120] [--clip tiny224|tiny|vit-b32]
    python benchmarks/long_video.py extract [--minutes 15 120] [--clip tiny224] [--no-spill]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FPS = 0.5  # clips per second (QVHighlights)
K_LAYERS, P_TOKENS, DV, DQ, L_TOKENS = 4, 50, 768, 512, 20  # ViT-B/32 feature sizes
VIDEO_FPS, VIDEO_SIZE, VIDEO_GOP = 2, (128, 72), 20  # generated file: frames/s, pixels, frames
MB = 2**20
CLIPS = {  # --clip: random CLIP sizes (make_tiny_clip arguments; vit-b32 is the full model)
    "tiny224": {"image_size": 224, "patch_size": 32},  # real frame size, tiny widths
    "tiny": {},  # 32-pixel frames
    "vit-b32": None,
}


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak resident memory to the current one; returns the current (bytes)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _child_model(minutes: float, chunk: bool) -> dict:
    import torch

    from r2.evaluate.postprocess import postprocess_windows
    from r2.train import attention, block
    from r2.train.batch import Sample, collate
    from r2.train.config import QVHIGHLIGHTS
    from r2.train.model import R2Model

    if not chunk:
        block.INFER_CHUNK_TOKENS = attention.INFER_MAX_SCORES = 1 << 62
    torch.set_num_threads(2)
    t = round(minutes * 60 * FPS)
    cfg = QVHIGHLIGHTS.model_config(video_dim=DV, query_dim=DQ, k=K_LAYERS)
    model = R2Model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    video = torch.empty(t, K_LAYERS, P_TOKENS, DV, dtype=torch.float16)
    for s in range(0, t, 64):  # filled in chunks: no float32 copy of the whole video
        video[s : s + 64] = torch.randn(video[s : s + 64].shape, generator=g)
    query = torch.randn(L_TOKENS, K_LAYERS, DQ, generator=g).half()
    with torch.inference_mode():  # warm-up: library initialisation is not what is measured
        model(collate([Sample("w", "w", video[:8], query, FPS, 8 / FPS)]))
    base = _reset_peak()
    start = time.perf_counter()
    with torch.inference_mode():
        sample = Sample("q", "v", video, query, FPS, t / FPS)
        batch = collate([sample])
        raw = model.predict(model(batch), batch)[0]
        postprocess_windows(raw.boundary.astype(np.float64), t / FPS, None, "normal", 0.7)
    seconds = time.perf_counter() - start
    extra = _status("VmHWM") - base
    return {"minutes": minutes, "clips": t, "features_mb": video.nbytes / MB,
            "extra_mb": extra / MB, "seconds": seconds}  # fmt: skip


def _write_video(path: Path, minutes: float) -> Path:
    """A low-resolution H.264 file of `minutes` (a moving bar on a slowly changing colour)."""
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(VIDEO_GOP), "preset": "ultrafast", "crf": "30"}
        w, h = VIDEO_SIZE
        for i in range(round(minutes * 60 * VIDEO_FPS)):
            rgb = np.empty((h, w, 3), np.uint8)
            rgb[:] = ((i // 7) % 256, (i // 3) % 256, 128)
            x = (i * 3) % w
            rgb[:, x : x + 8] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def _checkpoint(folder: Path, clip: str) -> Path:
    """A random released-size model whose cache settings name `clip` (what predict loads)."""
    import torch

    from r2.cache import CacheSettings
    from r2.extract.encode import ClipEncoder
    from r2.train.checkpoint import build_meta, save_checkpoint
    from r2.train.config import QVHIGHLIGHTS
    from r2.train.model import R2Model

    s = ClipEncoder.load(clip, k=K_LAYERS, device="cpu", towers=()).settings
    settings = CacheSettings(s.model_id, s.revision, s.k, FPS, "middle", s.image_size,
                             s.mean, s.std, s.dtype, s.tokens_per_frame, s.video_dim,
                             s.text_dim)  # fmt: skip
    cfg = QVHIGHLIGHTS.model_config(video_dim=s.video_dim, query_dim=s.text_dim, k=s.k)
    torch.manual_seed(0)
    model = R2Model(cfg)
    return save_checkpoint(folder / "best", model, build_meta(cfg, QVHIGHLIGHTS, settings))


def _child_e2e(minutes: float, video: Path, ckpt: Path) -> dict:
    import torch

    from r2.api import R2Predictor

    torch.set_num_threads(2)
    predictor = R2Predictor.from_pretrained(ckpt, device="cpu")
    size = predictor.image_size  # warm-up: touch the (memory-mapped) CLIP weights first
    predictor.encoder.encode_frames(np.zeros((1, size, size, 3), np.uint8))
    predictor.encoder.encode_texts(["warm up"])
    base = _reset_peak()
    start = time.perf_counter()
    features = predictor.encode_video(video)
    encoded = time.perf_counter()
    queries = ["a white bar moves right", "the screen turns red", "nothing happens"]
    predictor.predict(features, queries[0])
    one = time.perf_counter()
    predictor.predict_many(features, queries)
    done = time.perf_counter()
    extra = _status("VmHWM") - base
    return {"minutes": minutes, "clips": len(features.features),
            "features_mb": features.features.nbytes / MB, "extra_mb": extra / MB,
            "beyond_features_mb": (extra - features.features.nbytes) / MB,
            "encode_s": encoded - start, "predict_s": one - encoded,
            "predict3_s": done - one}  # fmt: skip


class _ChildPeaks:
    """Peak resident memory (VmHWM) of every descendant process, polled every 50 ms.

    Decoding workers are forkserver children, not this process's own: RUSAGE_CHILDREN
    would not see them, so their /proc status is read while they run.
    """

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _descendants(self) -> list[str]:
        import os

        parent = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parent[d.name] = (d / "stat").read_text().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
        ours, found = {str(os.getpid())}, True
        while found:
            found = False
            for pid, ppid in parent.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    found = True
        return [pid for pid in ours if pid != str(os.getpid())]

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._descendants():
                try:
                    text = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _child_extract(minutes: float, video: Path, clip: Path, out: Path, spill: bool) -> dict:
    from r2.extract import extract
    from r2.extract import spill as spill_module

    if not spill:
        spill_module.SPILL_BYTES = 1 << 62
    out.unlink(missing_ok=True)
    base = _reset_peak()
    children = _ChildPeaks()
    start = time.perf_counter()
    summary = extract([video], out, model=str(clip), workers=1)
    seconds = time.perf_counter() - start
    worker = children.stop()
    from r2.cache import FeatureCache

    with FeatureCache(out) as cache:
        features = cache.video(video.stem)
    return {"minutes": minutes, "clips": len(features), "features_mb": features.nbytes / MB,
            "extra_mb": (_status("VmHWM") - base) / MB, "worker_mb": worker / MB,
            "seconds": seconds, "skipped": len(summary.videos_skipped)}  # fmt: skip


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["model", "e2e", "extract", "child-model", "child-e2e",
                                         "child-extract"])  # fmt: skip
    parser.add_argument("--minutes", type=float, nargs="+", default=None)
    parser.add_argument("--no-chunk", action="store_true", help="model: one-pass inference")
    parser.add_argument("--no-spill", action="store_true", help="extract: frames in memory")
    parser.add_argument("--clip", choices=list(CLIPS), default="tiny224")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "r2_long")
    parser.add_argument("--video", type=Path)
    parser.add_argument("--ckpt", type=Path)
    a = parser.parse_args()
    if a.mode == "child-model":
        print(json.dumps(_child_model(a.minutes[0], not a.no_chunk)))
    elif a.mode == "child-e2e":
        print(json.dumps(_child_e2e(a.minutes[0], a.video, a.ckpt)))
    elif a.mode == "child-extract":
        print(
            json.dumps(
                _child_extract(a.minutes[0], a.video, a.ckpt, a.work / "long.h5", not a.no_spill)
            )
        )
    elif a.mode == "extract":
        _extract(a)
    elif a.mode == "model":
        print(f"{'minutes':>8} {'clips':>6} {'features MB':>12} {'peak extra MB':>14} {'s':>6}")
        for m in a.minutes or [15, 60, 120]:
            r = _run_child(["child-model", "--minutes", str(m)] + ["--no-chunk"] * a.no_chunk)
            print(f"{m:>8g} {r['clips']:>6} {r['features_mb']:>12.0f} {r['extra_mb']:>14.0f} "
                  f"{r['seconds']:>6.1f}", flush=True)  # fmt: skip
    else:
        _e2e(a)


def _clip(a: argparse.Namespace) -> Path:
    """The random CLIP folder of `--clip` (made once in the work folder)."""
    from r2.extract.tiny_clip import make_random_vit_b32, make_tiny_clip

    a.work.mkdir(parents=True, exist_ok=True)
    clip = a.work / f"clip-{a.clip}"
    if not (clip / "config.json").exists():
        if a.clip == "vit-b32":
            make_random_vit_b32(clip)
        else:
            make_tiny_clip(clip, **CLIPS[a.clip])
    return clip


def _extract(a: argparse.Namespace) -> None:
    clip = _clip(a)
    print(f"CLIP: random {a.clip} ({clip}); r2 extract with 1 decoding worker")
    print(f"{'minutes':>8} {'clips':>6} {'features MB':>12} {'main peak MB':>13} "
          f"{'worker peak MB':>15} {'s':>6}")  # fmt: skip
    for m in a.minutes or [15, 120]:
        video = _write_video(a.work / f"video-{m:g}min.mp4", m)
        args = ["--minutes", str(m), "--video", str(video), "--ckpt", str(clip), "--work",
                str(a.work)] + ["--no-spill"] * a.no_spill  # fmt: skip
        r = _run_child(["child-extract", *args])
        print(f"{m:>8g} {r['clips']:>6} {r['features_mb']:>12.1f} {r['extra_mb']:>13.1f} "
              f"{r['worker_mb']:>15.1f} {r['seconds']:>6.1f}", flush=True)  # fmt: skip


def _e2e(a: argparse.Namespace) -> None:
    clip = _clip(a)
    ckpt = _checkpoint(a.work / f"run-{a.clip}", str(clip))
    print(f"CLIP: random {a.clip} ({clip}); checkpoint {ckpt}")
    print(f"{'minutes':>8} {'clips':>6} {'features MB':>12} {'peak extra MB':>14} "
          f"{'beyond features MB':>19} {'encode s':>9} {'1 query s':>10} "
          f"{'3 queries s':>12}")  # fmt: skip
    for m in a.minutes or [15, 120]:
        video = _write_video(a.work / f"video-{m:g}min.mp4", m)
        r = _run_child(["child-e2e", "--minutes", str(m), "--video", str(video), "--ckpt",
                        str(ckpt)])  # fmt: skip
        print(f"{m:>8g} {r['clips']:>6} {r['features_mb']:>12.1f} {r['extra_mb']:>14.1f} "
              f"{r['beyond_features_mb']:>19.1f} {r['encode_s']:>9.1f} {r['predict_s']:>10.2f} "
              f"{r['predict3_s']:>12.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
