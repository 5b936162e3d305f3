"""Stage-1 speed on the cores there are: end-to-end vs the best any overlap can do.

Videos: 150 s, 30 fps, 640×360 H.264 (x264 veryfast, B-frames), keyframes every 1 s ("short
GOP") and every 8 s ("long GOP"), textured panning content; written once with PyAV into
--data-dir. Model: the full CLIP ViT-B/32 architecture with random weights (speed is the
real model's; the hub is not needed). At 0.5 fps each video gives 75 frames.

When decoding and the forward pass both need the CPU, no schedule can beat

    bound = (decode CPU time + forward CPU time) / cores

per video, with each part's CPU time measured alone at its cheapest (decoding single-
threaded, the forward pass with one thread). Printed per keyframe spacing:

  decode      decode.decode_video of the 75 frames, 1 decoder thread: wall and CPU seconds
  forward     ClipEncoder.encode_frames in the pipeline's batches, 1 thread and all cores
  bound       (decode CPU + forward CPU at 1 thread) / cores
  end-to-end  extract() over --videos copies in a fresh process, per configuration:
              seconds per video (model load included), the marginal seconds per extra
              video ((T(n) - T(1)) / (n - 1): no fixed costs), both ÷ bound

Configurations: "default" (r2's defaults: one decode worker per core at nice +10, one
decoder thread each, torch threads = cores) and "before" (r2 0.2's: cores - 1 workers, not
niced, FFmpeg's decoder threads, torch threads = cores), measured in the same run.

Memory (`--memory [MINUTES ...]`, default 0.5 2.5 30 120): one `extract()` of one video of
each length in a fresh process with r2's defaults and the same ViT-B/32; the peak resident
memory (VmHWM) of the main process, model included, and of the largest decode worker. The
videos are low-resolution (128×72, 2 frames/s, long_video.py's generator): decoding is
cheap, but every clip goes through the real 224-pixel ViT-B/32 feature path and its
features (293 KB per clip) are streamed into the cache.

Usage: python benchmarks/extract.py [--videos 6] [--repeat 1] [--gop short|long|both]
       python benchmarks/extract.py --memory [0.5 2.5 30 120]
Run it under `flock -x /tmp/r2-cpu.lock` (the machine is shared): figures need quiet cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

SECONDS, FPS, WIDTH, HEIGHT = 150, 30, 640, 360  # the benchmark video
GOPS = {"short": ("short GOP (1 s)", 30), "long": ("long GOP (8 s)", 240)}  # frames
CLIP_FPS = 0.5  # clips per second, QVHighlights' rate
IMAGE_SIZE = 224


def configs(cores: int) -> dict[str, dict]:
    """End-to-end configurations: workers, torch threads, decode niceness, decoder threads."""
    from r2.extract.options import default_threads, default_workers
    from r2.extract.workers import DECODE_NICE, decoder_threads

    w = default_workers(cores)
    return {
        "default": {"workers": w, "threads": default_threads(cores), "nice": DECODE_NICE,
                    "decoder_threads": decoder_threads(w, cores)},
        "before": {"workers": max(1, min(8, cores - 1)), "threads": cores, "nice": 0,
                   "decoder_threads": 0},
    }  # fmt: skip


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


def prepare(data: Path, gops: list[str]) -> tuple[Path, dict[str, Path]]:
    """The random ViT-B/32 folder and one video per keyframe spacing (made once, reused)."""
    from r2.extract.tiny_clip import make_random_vit_b32

    data.mkdir(parents=True, exist_ok=True)
    model = data / "vit-b32-random"
    if not (model / "preprocessor_config.json").exists():
        print(f"writing random ViT-B/32 to {model}", flush=True)
        make_random_vit_b32(model)
    videos = {}
    for key in gops:
        gop = GOPS[key][1]
        path = data / f"bench_{WIDTH}x{HEIGHT}_{FPS}fps_{SECONDS}s_gop{gop}.mp4"
        if not path.exists():
            print(f"writing {path} ...", flush=True)
            make_video(path, gop)
        videos[key] = path
    return model, videos


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `fn()` over `repeat` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), _cpu()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def measure_parts(model: Path, videos: dict[str, Path], args, cores: int) -> dict[str, dict]:
    """Decode and forward wall/CPU seconds per video, in this process."""
    import torch

    from r2.extract.decode import decode_video
    from r2.extract.encode import ClipEncoder

    encoder = ClipEncoder.load(str(model), towers=("vision",), device="cpu", dtype=args.dtype)
    batch, out = args.batch_frames, {}

    def forward(frames, threads: int) -> None:
        torch.set_num_threads(threads)
        for start in range(0, len(frames), batch):  # the pipeline's batches
            encoder.encode_frames(frames[start : start + batch])

    for key, path in videos.items():
        frames = decode_video(path, CLIP_FPS, IMAGE_SIZE).frames
        forward(frames[:batch], 1)  # warm-up
        decode = timed(lambda p=path: decode_video(p, CLIP_FPS, IMAGE_SIZE, threads=1),
                       args.repeat)  # fmt: skip
        one = timed(lambda f=frames: forward(f, 1), args.repeat)
        many = timed(lambda f=frames: forward(f, cores), args.repeat)
        out[key] = {"frames": len(frames), "decode": decode, "forward_1": one,
                    "forward_all": many, "bound": (decode[1] + one[1]) / cores}  # fmt: skip
    return out


def end_to_end(model: Path, video: Path, n: int, config: dict, args) -> float:
    """Seconds of one extract() over n copies of `video`, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for i in range(n):
            (folder / f"copy{i}{video.suffix}").symlink_to(video)
        cmd = [sys.executable, __file__, "--e2e-child", str(folder), "--model", str(model),
               "--out", str(Path(tmp) / "c.h5"), "--config", json.dumps(config),
               "--batch-frames", str(args.batch_frames)]  # fmt: skip
        if args.dtype:
            cmd += ["--dtype", args.dtype]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"end-to-end run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def e2e_child(args) -> None:
    """--e2e-child: time extract() (imports excluded) and print {"seconds": ...}."""
    from r2.extract import extract, tune_environment

    config = json.loads(args.config)
    tune_environment()
    import torch  # noqa: F401  (imported before the clock starts)

    from r2.extract import workers

    workers.DECODE_NICE = config["nice"]
    workers.decoder_threads = lambda *_: config["decoder_threads"]
    began = time.perf_counter()
    extract([args.e2e_child], args.out, model=args.model, workers=config["workers"],
            threads=config["threads"], batch_frames=args.batch_frames, dtype=args.dtype,
            device="cpu")  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - began}))


def report(key: str, path: Path, part: dict, model: Path, args, cores: int) -> None:
    """Print one keyframe spacing's figures, running its end-to-end configurations."""
    (dw, dc), (f1w, f1c), (faw, fac) = part["decode"], part["forward_1"], part["forward_all"]
    bound = part["bound"]
    print(f"\n{GOPS[key][0]}: {path.name} ({part['frames']} frames at {CLIP_FPS} fps)")
    print(f"  decode              {dw:6.2f} s wall, {dc:6.2f} s CPU (1 decoder thread)")
    print(f"  forward, 1 thread   {f1w:6.2f} s wall, {f1c:6.2f} s CPU")
    print(f"  forward, {cores} threads  {faw:6.2f} s wall, {fac:6.2f} s CPU "
          f"({part['frames'] / faw:.1f} frames/s)")  # fmt: skip
    print(f"  bound               {bound:6.2f} s/video = ({dc:.2f} + {f1c:.2f}) / {cores} cores")
    for name, config in configs(cores).items():
        single = end_to_end(model, path, 1, config, args)
        runs = [end_to_end(model, path, args.videos, config, args) for _ in range(args.repeat)]
        many = statistics.median(runs)
        per_video, marginal = many / args.videos, (many - single) / max(args.videos - 1, 1)
        print(
            f"  end-to-end [{name}: {config['workers']} workers nice +{config['nice']}, "
            f"{config['threads']} threads, decoder threads {config['decoder_threads']}]"
        )
        print(
            f"     {per_video:6.2f} s/video over {args.videos} videos (model load included) "
            f"= {per_video / bound:.2f} × bound; marginal {marginal:.2f} s/video = "
            f"{marginal / bound:.2f} × bound; one video alone {single:.2f} s",
            flush=True,
        )


def memory_child(args) -> None:
    """--memory-child: extract() one video with the defaults; print peaks as JSON."""
    from long_video import _ChildPeaks, _status

    from r2.cache import FeatureCache
    from r2.extract import extract, tune_environment

    tune_environment()
    workers = _ChildPeaks()
    began = time.perf_counter()
    summary = extract([args.memory_child], args.out, model=args.model, device="cpu")
    seconds = time.perf_counter() - began
    worker = workers.stop()
    with FeatureCache(args.out) as cache:
        rows = cache.video_record(Path(args.memory_child).stem).n_clips
    print(json.dumps({"clips": rows, "main_mb": _status("VmHWM") / 2**20, "seconds": seconds,
                      "worker_mb": worker / 2**20, "skipped": len(summary.videos_skipped),
                      "cache_mb": Path(args.out).stat().st_size / 2**20}))  # fmt: skip


def memory(args) -> None:
    """Peak memory of extract() per video length (one fresh process each)."""
    from long_video import _write_video

    model, _ = prepare(args.data_dir, [])
    print(f"main-process and decode-worker peak resident memory, random ViT-B/32 ({model})")
    print(f"{'length':>8} {'clips':>6} {'features MB':>12} {'main peak MB':>13} "
          f"{'worker peak MB':>15} {'seconds':>8} {'clips/s':>8}", flush=True)  # fmt: skip
    for minutes in args.memory:
        video = _write_video(args.data_dir / f"long-{minutes:g}min.mp4", minutes)
        with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
            cmd = [sys.executable, __file__, "--memory-child", str(video), "--model",
                   str(model), "--out", str(Path(tmp) / "c.h5")]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"memory run failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        length = f"{minutes * 60:g} s" if minutes < 5 else f"{minutes:g} min"
        print(f"{length:>8} {r['clips']:>6} {r['clips'] * 4 * 50 * 768 * 2 / 2**20:>12.0f} "
              f"{r['main_mb']:>13.0f} {r['worker_mb']:>15.0f} {r['seconds']:>8.1f} "
              f"{r['clips'] / r['seconds']:>8.1f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "r2_bench")
    parser.add_argument("--videos", type=int, default=6, help="copies per end-to-end run")
    parser.add_argument("--batch-frames", type=int, default=32)
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    parser.add_argument("--gop", choices=["short", "long", "both"], default="both")
    parser.add_argument("--e2e-child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory",
        type=float,
        nargs="*",
        default=None,
        metavar="MINUTES",
        help="peak memory per video length instead (default 0.5 2.5 30 120)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # long_video.py's helpers
    if args.e2e_child:
        return e2e_child(args)
    if args.memory_child:
        return memory_child(args)
    if args.memory is not None:
        args.memory = args.memory or [0.5, 2.5, 30, 120]
        return memory(args)
    from r2.extract import tune_environment
    from r2.extract.options import usable_cores

    tune_environment()  # as extract() does, before torch is imported (forward-only runs here)
    cores = usable_cores()
    model, videos = prepare(args.data_dir, ["short", "long"] if args.gop == "both" else [args.gop])
    print(f"cores={cores} load={os.getloadavg()[0]:.1f} batch={args.batch_frames} "
          f"dtype={args.dtype or 'fp32'}", flush=True)  # fmt: skip
    parts = measure_parts(model, videos, args, cores)
    for key, path in videos.items():
        report(key, path, parts[key], model, args, cores)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
