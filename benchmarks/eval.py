"""Time `r2.evaluate` on the 1,550 QVHighlights val queries (official sample predictions).

Prints the wall time of reading + validating + scoring every metric (best and median of a
few repeats), the in-memory variant training validation uses, and post-processing of 50
raw windows per query. Needs ../shared/testdata; run from the repository root:

    python benchmarks/eval.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from r2.evaluate import evaluate, evaluate_records
from r2.evaluate.postprocess import postprocess_windows

QVH = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "qvhighlights"
PRED = QVH / "official_eval_sample" / "sample_val_preds.jsonl"
GT = QVH / "highlight_val_release.jsonl"


def _time(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not PRED.is_file() or not GT.is_file():
        sys.exit(f"test data not found under {QVH}")

    report = []
    report.append(("evaluate(files), all metrics", _time(lambda: evaluate(PRED, GT), args.repeats)))
    with_words = _time(lambda: evaluate(PRED, GT, by_query_length=True), args.repeats)
    report.append(("  + query-length report", with_words))
    preds = [json.loads(line) for line in PRED.read_text().splitlines()]
    gts = [json.loads(line) for line in GT.read_text().splitlines()]
    in_memory = _time(lambda: evaluate_records(preds, gts), args.repeats)
    report.append(("evaluate_records(in memory)", in_memory))
    print(f"scoring {len(gts)} QVHighlights val queries (official sample predictions):")
    for name, (best, median) in report:
        print(f"  {name:<32} best {best:.2f} s, median {median:.2f} s")

    rng = np.random.default_rng(0)
    raw = []
    for _ in range(len(gts)):
        start = rng.uniform(-10, 150, 50)
        raw.append(np.stack([start, start + rng.uniform(1, 60, 50), rng.random(50)], axis=1))
    best, median = _time(lambda: [postprocess_windows(b, 150.0, 2) for b in raw], args.repeats)
    print(f"postprocess_windows, {len(raw)} queries x 50 raw windows (unit 2, NMS normal 0.7):")
    print(f"  {'':<32} best {best:.2f} s, median {median:.2f} s")
    print("(shared, loaded CPU: timings are noisy)")


if __name__ == "__main__":
    main()
