"""Memory and speed of the strict annotation reader (r2.data), with anchors in the same run.

1. Peak RSS of reading one annotation line with 3 million windows (the line that drove
   `r2 train` to 19 GB): the bounded reader (refused at the 8 MiB line limit) vs the
   anchor `json.loads` of that line (what every reader did first before). Each in a fresh
   subprocess; ru_maxrss.
2. Checking speed on QVHighlights train (7,218 rows, when ../shared is present): the full
   checker vs the anchor `json.loads` of every line.

    python benchmarks/anno_limits.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QVH_TRAIN = ROOT.parent / "shared/testdata/qvhighlights/highlight_train_release.jsonl"
N_WINDOWS = 3_000_000

CHILD = """
import json, resource, sys, time
path, mode = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "anchor":
    for line in open(path, "rb"):
        json.loads(line)
    outcome = "parsed"
else:
    from r2.data.check import AnnotationError, check_file
    try:
        check_file(path)
        outcome = "accepted"
    except AnnotationError as err:
        outcome = "refused: " + str(err).split(": ", 1)[1][:40]
print(json.dumps({"mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "s": time.perf_counter() - t, "outcome": outcome}))
"""


def _child(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.jsonl"
        windows = ",".join(["[1.5,2.5]"] * N_WINDOWS)
        path.write_text('{"qid": 1, "vid": "v", "query": "q", "relevant_windows": [' + windows
                        + "]}\n")  # fmt: skip
        size = path.stat().st_size / 2**20
        anchor, ours = _child(path, "anchor"), _child(path, "r2")
    print(f"one line with {N_WINDOWS:,} windows ({size:.0f} MB):")
    print(f"  anchor json.loads      peak RSS {anchor['mb']:7.0f} MB  {anchor['s']:.2f} s")
    print(f"  r2.data check_file     peak RSS {ours['mb']:7.0f} MB  {ours['s']:.2f} s  "
          f"({ours['outcome']}); {ours['mb'] / anchor['mb']:.2f}x the anchor")  # fmt: skip


def speed() -> None:
    if not QVH_TRAIN.is_file():
        print(f"speed: skipped ({QVH_TRAIN} not found)")
        return
    from r2.data.check import check_file

    lines = QVH_TRAIN.read_bytes().splitlines()
    t = time.perf_counter()
    for line in lines:
        json.loads(line)
    anchor = time.perf_counter() - t
    t = time.perf_counter()
    report = check_file(QVH_TRAIN)
    ours = time.perf_counter() - t
    print(f"QVHighlights train, {len(report.rows):,} rows: json.loads {anchor:.3f} s, "
          f"full check {ours:.3f} s ({len(report.rows) / ours:,.0f} rows/s, "
          f"{ours / anchor:.1f}x the anchor)")  # fmt: skip


if __name__ == "__main__":
    memory()
    speed()
