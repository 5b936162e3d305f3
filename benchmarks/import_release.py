"""Speed and memory of `r2 data import-release` on generated releases of real feature shapes.

1. Speed: a QVHighlights-like release (`--videos` videos of T = 75 clips, 23 MB each, and
   `--queries` queries of L = 16 tokens) is imported by a fresh process; prints files/s and
   MiB/s and the peak RSS, next to an anchor measured in the same run on the same files:
   copying their bytes into one plain file (what any import must at least do).
   The files were just written, so they are read from the page cache (warm).
2. Memory: releases of `--memory` sizes (e.g. 100 and 400 videos of T = 4, two queries
   each) are imported by fresh processes; prints each one's peak RSS above its RSS before
   the import (h5py and r2.cache already loaded). Flat = memory does not grow with the
   number of files.

Usage: python benchmarks/import_release.py [--folder DIR] [--videos 40] [--queries 400]
       [--memory 100,400]
Run under `flock -x /tmp/r2-cpu.lock` for figures you report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE_V, SHAPE_Q = (4, 50, 768), (4, 512)
CHILD = """
import json, sys, time
import h5py, tqdm  # loaded before the baseline: the figure is the import's working memory
import r2.cache
from r2.data.release import import_release
def status_kb(field):  # VmHWM, unlike ru_maxrss, is not inherited across exec
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
before = status_kb("VmRSS")
t0 = time.perf_counter()
r = import_release(sys.argv[1], "qvhighlights", sys.argv[2])
seconds = time.perf_counter() - t0
peak = status_kb("VmHWM")
print(json.dumps({"seconds": seconds, "files": sum(r.imported.values()),
                  "bytes": r.bytes_read, "rss_before_kb": before, "peak_kb": peak}))
"""


def make_release(folder: Path, n_videos: int, t: int, n_queries: int, seed: int = 0) -> int:
    """A QVHighlights-layout release; returns its feature bytes."""
    rng = np.random.default_rng(seed)
    vdir, qdir = folder / "clip_b32_vid_k4", folder / "clip_b32_txt_k4"
    vdir.mkdir(parents=True)
    qdir.mkdir()
    video = rng.standard_normal((t, *SHAPE_V)).astype(np.float16)
    query = rng.standard_normal((16, *SHAPE_Q)).astype(np.float16)
    rows, total = [], 0
    for v in range(n_videos):
        np.save(vdir / f"v{v:05d}.npy", video)
        total += video.nbytes
    for q in range(n_queries):
        np.save(qdir / f"{q}.npy", query)
        total += query.nbytes
        rows.append({"qid": q, "query": f"query {q}", "vid": f"v{q % n_videos:05d}",
                     "duration": t * 2.0, "relevant_windows": [[0, 2]]})  # fmt: skip
    (folder / "qvhighlights_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return total


def run_child(folder: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out)], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def anchor(folder: Path, out: Path) -> tuple[float, int]:
    """Seconds to copy every feature file's bytes into one plain file (the floor of any import)."""
    files = sorted(folder.glob("clip_b32_*/*.npy"))
    t0 = time.perf_counter()
    with open(out, "wb") as dst:
        for f in files:
            with open(f, "rb") as src:
                shutil.copyfileobj(src, dst, 2**20)
    return time.perf_counter() - t0, len(files)


def speed(root: Path, n_videos: int, n_queries: int) -> None:
    folder = root / "speed"
    total = make_release(folder, n_videos, 75, n_queries)
    r = run_child(folder, root / "speed.h5")
    base, n = anchor(folder, root / "anchor.bin")
    mib = total / 2**20
    print(f"speed: {n_videos} videos (T=75, 23 MB) + {n_queries} queries (L=16) = "
          f"{mib:,.0f} MiB, {n} files")  # fmt: skip
    print(
        f"  import-release: {r['seconds']:.2f} s = {r['files'] / r['seconds']:,.0f} files/s, "
        f"{r['bytes'] / 2**20 / r['seconds']:,.0f} MiB/s, peak RSS "
        f"{r['peak_kb'] / 1024:,.0f} MiB (+{(r['peak_kb'] - r['rss_before_kb']) / 1024:,.0f})"
    )
    print(f"  anchor (plain copy of the bytes): {base:.2f} s = {n / base:,.0f} files/s, "
          f"{mib / base:,.0f} MiB/s; import / anchor = {r['seconds'] / base:.2f}")  # fmt: skip


def memory(root: Path, sizes: list[int]) -> None:
    print("memory (videos of T=4 + 2 queries per video; RSS above the pre-import RSS):")
    for n in sizes:
        folder = root / f"mem{n}"
        make_release(folder, n, 4, 2 * n)
        r = run_child(folder, root / f"mem{n}.h5")
        grow = (r["peak_kb"] - r["rss_before_kb"]) / 1024
        print(
            f"  {3 * n:5d} files: peak RSS {r['peak_kb'] / 1024:7.1f} MiB, "
            f"+{grow:6.1f} MiB during the import ({r['files'] / r['seconds']:,.0f} files/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--memory", default="100,400")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        speed(Path(tmp), args.videos, args.queries)
        memory(Path(tmp), [int(x) for x in args.memory.split(",") if x])


if __name__ == "__main__":
    main()
