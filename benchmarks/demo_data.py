"""Demo dataset: generation time at the default size, and the trivial baselines' val scores.

    python benchmarks/demo_data.py [--n-videos 100] [--seed 0]

Prints wall and CPU seconds (the machine may be shared: CPU seconds are the steadier figure),
the size on disk, the query counts per split, and the QVHighlights metrics of
`baseline_predictions` (best fixed window + random saliency) on the val split: the numbers a
trained model has to beat.
"""

import argparse
import tempfile
import time
from pathlib import Path

from r2.demo_data import baseline_predictions, best_fixed_window, load_jsonl, make_demo_dataset
from r2.evaluate import evaluate_records

SHOWN = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mIoU", "HL-min-VeryGood-mAP",
         "HL-min-VeryGood-Hit1")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-videos", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        ds = make_demo_dataset(tmp, n_videos=args.n_videos, seed=args.seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        megabytes = sum(p.stat().st_size for p in Path(ds.videos).iterdir()) / 1e6
        train, val, test = (load_jsonl(p) for p in (ds.train, ds.val, ds.test))
    print(f"generated {args.n_videos} videos in {wall:.1f} s wall, {cpu:.1f} s CPU; "
          f"{megabytes:.1f} MB of video")  # fmt: skip
    print(f"queries: {len(train)} train / {len(val)} val / {len(test)} test")
    start, end = best_fixed_window(train)
    print(f"best fixed window on train: [{start:.2f}, {end:.2f}] x duration")
    metrics = evaluate_records(baseline_predictions(train, val, seed=args.seed), val)
    for name in SHOWN:
        print(f"baseline val {name}: {metrics.get(name, float('nan')):.2f}")


if __name__ == "__main__":
    main()
