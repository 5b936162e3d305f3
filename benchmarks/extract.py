"""Stage-1 speed: decode-only, forward-only and end-to-end seconds per 150 s video.

Videos: 150 s, 30 fps, 640×360 H.264 (x264 veryfast, B-frames), keyframes every 1 s ("short
GOP") and every 8 s ("long GOP"), textured panning content; written once with PyAV into
--data-dir. Model: the full CLIP ViT-B/32 architecture with random weights (speed is the
real model's; the hub is not needed). At 0.5 fps each video gives 75 frames.

Printed per keyframe spacing:
  all-frames decode   PyAV decoding every frame (what a naive extractor does)
  decode-only         decode.decode_video: the 75 selected, resized, cropped frames
  forward-only        ClipEncoder.encode_frames of those 75 frames
  end-to-end          extract() over --videos copies, seconds per video
  ratio               end-to-end / (decode-only + forward-only); <= 1.1 means decoding
                      hides behind the forward pass (pipelining works)
End-to-end runs happen in fresh processes, once per environment variant (OMP_WAIT_POLICY,
a tcmalloc LD_PRELOAD when the library is installed), so such settings can be compared.

Usage: python benchmarks/extract.py [--videos 3] [--workers N] [--dtype fp32] [--repeat 1]
The machine may be shared: repeat and compare medians before drawing conclusions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

SECONDS, FPS, WIDTH, HEIGHT = 150, 30, 640, 360  # the benchmark video
GOPS = {"short GOP (1 s)": 30, "long GOP (8 s)": 240}  # keyframe spacing in frames
CLIP_FPS = 0.5  # clips per second, QVHighlights' rate
IMAGE_SIZE = 224
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4")  # fmt: skip


def make_video(path: Path, gop: int) -> Path:
    """A 150 s 640×360 30 fps H.264 video with keyframes exactly every `gop` frames."""
    import av
    import numpy as np

    rng = np.random.default_rng(gop)
    small = rng.integers(0, 256, (HEIGHT // 8 + 40, WIDTH // 8 + 80, 3)).astype(np.float32)
    texture = np.kron(small, np.ones((8, 8, 1), np.float32))
    kernel = np.ones(9, np.float32) / 9
    for axis in (0, 1):
        texture = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), axis, texture)
    texture = texture.astype(np.uint8)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": params}
        for i in range(SECONDS * FPS):
            dx, dy = int(200 + 150 * np.sin(i / 90)), int(100 + 80 * np.cos(i / 70))
            image = texture[dy : dy + HEIGHT, dx : dx + WIDTH].copy()
            x0, y0 = (3 * i) % (WIDTH - 80), int((HEIGHT - 80) * (0.5 + 0.4 * np.sin(i / 25)))
            image[y0 : y0 + 80, x0 : x0 + 80] = (255, 64, (5 * i) % 256)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def prepare(data: Path) -> tuple[Path, dict[str, Path]]:
    """The random ViT-B/32 folder and one video per keyframe spacing (made once, reused)."""
    from r2.extract.tiny_clip import make_random_vit_b32

    data.mkdir(parents=True, exist_ok=True)
    model = data / "vit-b32-random"
    if not (model / "preprocessor_config.json").exists():
        print(f"writing random ViT-B/32 to {model}", flush=True)
        make_random_vit_b32(model)
    videos = {}
    for name, gop in GOPS.items():
        path = data / f"bench_{WIDTH}x{HEIGHT}_{FPS}fps_{SECONDS}s_gop{gop}.mp4"
        if not path.exists():
            print(f"writing {path} ...", flush=True)
            make_video(path, gop)
        videos[name] = path
    return model, videos


def best(fn, repeat: int) -> float:
    """Median wall time of `fn()` over `repeat` runs."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def decode_all_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def measure_parts(model: Path, videos: dict[str, Path], args) -> dict[str, dict[str, float]]:
    """all-frames decode, decode-only and forward-only seconds per video, in this process."""
    import numpy as np

    from r2.extract.decode import decode_video
    from r2.extract.encode import ClipEncoder

    encoder = ClipEncoder.load(str(model), towers=("vision",), device="cpu", dtype=args.dtype)
    batch, repeat = args.batch_frames, args.repeat

    def forward(frames: np.ndarray) -> None:
        for start in range(0, len(frames), batch):  # the pipeline's batches
            encoder.encode_frames(frames[start : start + batch])

    out = {}
    for name, path in videos.items():
        frames = decode_video(path, CLIP_FPS, IMAGE_SIZE).frames
        forward(frames[:batch])  # warm-up
        out[name] = {
            "all_frames_decode_s": best(lambda p=path: decode_all_frames(p), repeat),
            "decode_only_s": best(
                lambda p=path: decode_video(p, CLIP_FPS, IMAGE_SIZE), args.repeat
            ),
            "forward_only_s": best(lambda f=frames: forward(f), repeat),
            "frames": len(frames),
        }
    return out


def end_to_end(model: Path, video: Path, n: int, args, env: dict[str, str]) -> float:
    """Seconds of one extract() over n copies of `video`, in a fresh process with `env`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for i in range(n):
            (folder / f"copy{i}{video.suffix}").symlink_to(video)
        cmd = [sys.executable, __file__, "--e2e-child", str(folder), "--model", str(model),
               "--out", str(Path(tmp) / "c.h5"), "--workers", str(args.workers),
               "--batch-frames", str(args.batch_frames)]  # fmt: skip
        if args.dtype:
            cmd += ["--dtype", args.dtype]
        done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"end-to-end run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def e2e_child(args) -> None:
    """--e2e-child: time extract() (imports excluded) and print {"seconds": ...}."""
    from r2.extract import extract, tune_environment

    tune_environment()
    import torch  # noqa: F401  (imported before the clock starts)

    began = time.perf_counter()
    extract([args.e2e_child], args.out, model=args.model, workers=args.workers,
            batch_frames=args.batch_frames, dtype=args.dtype, device="cpu")  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - began}))


def env_variants(all_variants: bool) -> dict[str, dict[str, str]]:
    """Environments for the end-to-end runs: our default, OpenMP spinning, tcmalloc."""
    variants = {"OMP_WAIT_POLICY=PASSIVE (default)": {}}
    if all_variants:
        variants["OMP_WAIT_POLICY=ACTIVE"] = {"OMP_WAIT_POLICY": "ACTIVE"}
        lib = next((p for p in TCMALLOC if Path(p).exists()), None)
        if lib:
            variants["PASSIVE + tcmalloc"] = {"LD_PRELOAD": lib}
    return variants


def report(name: str, path: Path, part: dict[str, float], model: Path, args) -> None:
    """Print one keyframe spacing's figures, running its end-to-end variants."""
    frames, decode_s, forward_s = part["frames"], part["decode_only_s"], part["forward_only_s"]
    print(f"\n{name}: {path.name} ({frames} frames at {CLIP_FPS} fps)")
    print(f"  all-frames decode   {part['all_frames_decode_s']:7.2f} s/video")
    print(f"  decode-only         {decode_s:7.2f} s/video")
    print(f"  forward-only        {forward_s:7.2f} s/video ({frames / forward_s:.1f} frames/s)")
    for label, env in env_variants(not args.skip_env_variants).items():
        runs = [end_to_end(model, path, n, args, env) for n in (1, args.videos)]
        many = statistics.median([runs[1], *(end_to_end(model, path, args.videos, args, env)
                                             for _ in range(args.repeat - 1))])  # fmt: skip
        per_video = many / args.videos
        marginal = (many - runs[0]) / max(args.videos - 1, 1)
        print(
            f"  end-to-end          {per_video:7.2f} s/video over {args.videos} videos "
            f"[{label}]; marginal {marginal:.2f} s/video, a single video {runs[0]:.2f} s"
        )
        print(
            f"  ratio               {per_video / (decode_s + forward_s):7.2f} "
            f"(marginal {marginal / (decode_s + forward_s):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "r2_bench")
    parser.add_argument("--videos", type=int, default=3, help="copies per end-to-end run")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-frames", type=int, default=32)
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    parser.add_argument("--skip-env-variants", action="store_true")
    parser.add_argument("--e2e-child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.e2e_child:
        return e2e_child(args)
    from r2.extract import default_workers, tune_environment

    tune_environment()  # as extract() does, before torch is imported (forward-only runs here)
    args.workers = default_workers() if args.workers is None else args.workers
    model, videos = prepare(args.data_dir)
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} workers={args.workers} "
          f"batch={args.batch_frames} dtype={args.dtype or 'fp32'}")  # fmt: skip
    parts = measure_parts(model, videos, args)
    for name, path in videos.items():
        report(name, path, parts[name], model, args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
