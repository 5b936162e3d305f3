"""Decode benchmark: what one clip frame per 2 s costs with each strategy.

For 150 s, 30 fps, 640×360 H.264 videos (B-frames, keyframe every 1 s and every 8 s) it
prints the seconds to decode every frame, to sample with r2.extract.decode (the exact fast
path), to decode everything and select (the sequential reference), and to seek to every target.

    python benchmarks/decode.py [--seconds 150] [--repeats 3] [--workdir DIR]

Other benchmarks import the helpers (make_benchmark_video, time_decode_*).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import videogen

from r2.extract.decode import decode_video, probe_video

CLIP_FPS = 0.5  # clips per second (QVHighlights)
IMAGE_SIZE = 224


def make_benchmark_video(
    path: str | Path,
    seconds: float = 150,
    fps: int = 30,
    keyint_s: float = 1.0,
    size: tuple[int, int] = (640, 360),
    overwrite: bool = False,
) -> Path:
    """Write (once) an H.264 video with a panning texture, 3 B-frames, fixed keyframe spacing."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    return videogen.write_video(
        path,
        round(seconds * fps),
        fps=fps,
        size=size,
        content="texture",
        keyint=max(1, round(keyint_s * fps)),
        bframes=3,
        crf=23,
    )


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    return min(_timed(fn)[0] for _ in range(repeats))


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def decode_all(path: str | Path, threads: int = 0) -> int:
    """Decode every frame (no conversion); returns the frame count."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type, stream.codec_context.thread_count = "AUTO", threads
        return sum(1 for _ in container.decode(stream))


def seek_per_target(path: str | Path, fps: float = CLIP_FPS, threads: int = 0) -> list[int]:
    """The naive exact sampler: for each clip, seek to the keyframe before its midpoint and
    decode until the first frame at or after the midpoint (keeping the one before it)."""
    n_clips, picked = probe_video(path, fps).n_clips, []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type, stream.codec_context.thread_count = "AUTO", threads
        for i in range(n_clips):
            middle = (i + 0.5) / fps
            container.seek(int(max(0.0, middle - 1e-3) / stream.time_base), stream=stream)
            last = None
            for frame in container.decode(stream):
                if frame.time >= middle:
                    break
                last = frame
            if last is not None:
                last.reformat(format="rgb24")
                picked.append(last.pts)
    return picked


def time_decode_all(path: str | Path, repeats: int = 3, threads: int = 0) -> float:
    """Seconds to decode every frame (best of ``repeats``)."""
    return _best_of(lambda: decode_all(path, threads), repeats)


def time_decode_selected(
    path: str | Path, fps: float = CLIP_FPS, repeats: int = 3, threads: int = 0
) -> float:
    """Seconds for decode_video's exact fast path, including the packet pass and RGB output."""
    return _best_of(lambda: decode_video(path, fps, IMAGE_SIZE, threads=threads), repeats)


def time_decode_sequential(
    path: str | Path, fps: float = CLIP_FPS, repeats: int = 3, threads: int = 0
) -> float:
    """Seconds for decode_video(method="sequential"): decode everything, convert selected."""
    run = lambda: decode_video(path, fps, IMAGE_SIZE, threads=threads, method="sequential")  # noqa: E731
    return _best_of(run, repeats)


def time_seek_per_target(
    path: str | Path, fps: float = CLIP_FPS, repeats: int = 3, threads: int = 0
) -> float:
    """Seconds for the naive seek-to-every-target sampler."""
    return _best_of(lambda: seek_per_target(path, fps, threads), repeats)


def compare(path: Path, repeats: int, threads: int) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each strategy; strategies alternate within each repeat so
    that a busy machine slows them alike."""
    runs = {
        "all frames": lambda: decode_all(path, threads),
        "selected": lambda: decode_video(path, CLIP_FPS, IMAGE_SIZE, threads=threads),
        "sequential": lambda: decode_video(
            path, CLIP_FPS, IMAGE_SIZE, threads=threads, method="sequential"
        ),
        "seek/target": lambda: seek_per_target(path, CLIP_FPS, threads),
    }
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = _timed(fn)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="decoder threads (0: auto)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the videos here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="r2-decode-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.seconds:g} s, 30 fps, 640x360 H.264 (3 B-frames), clips at {CLIP_FPS} fps;")
    print(
        f"best of {args.repeats} (strategies interleaved), decoder threads "
        f"{args.threads or 'auto'}; wall / CPU seconds; the machine may be shared"
    )
    names = ("all frames", "selected", "sequential", "seek/target")
    print(f"{'keyframes':>10} " + " ".join(f"{n:>15}" for n in names))
    for keyint_s in (1.0, 8.0):
        name = f"bench_{args.seconds:g}s_key{keyint_s:g}s.mp4"
        path = make_benchmark_video(workdir / name, seconds=args.seconds, keyint_s=keyint_s)
        fast = decode_video(path, CLIP_FPS, IMAGE_SIZE, threads=args.threads)
        ref = decode_video(path, CLIP_FPS, IMAGE_SIZE, threads=args.threads, method="sequential")
        if not np.array_equal(fast.frames, ref.frames):
            raise SystemExit(f"{path}: fast path and sequential decode differ")
        best = compare(path, args.repeats, args.threads)
        cells = " ".join(f"{best[n][0]:>6.2f} / {best[n][1]:>5.2f}" for n in names)
        print(f"{keyint_s:>9g}s {cells}   ({fast.n_clips} clips, identical)")
    print(f"videos in {workdir}")


if __name__ == "__main__":
    main()
