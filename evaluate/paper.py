"""The published R²-Tuning numbers (CLIP ViT-B/32, no extra backbone) to print beside ours.

Sources: the paper's Table 1 (QVHighlights test), Table 9 (QVHighlights val), Table 2
(Charades-STA and TACoS test, Ego4D-NLQ val), Table 3 (YouTube Highlights, per domain) and
Table 4 (TVSum top-5 mAP, per domain); also spec r2-tuning.md §6. Keys are `r2 eval`'s
metric names. Run-to-run spread is about 1 mAP (spec §6).
"""

from __future__ import annotations

import re
from pathlib import Path

PAPER: dict[tuple[str, str], dict[str, float]] = {
    ("qvhighlights", "test"): {  # Table 1
        "R1@0.5": 68.03, "R1@0.7": 49.35, "mAP@0.5": 69.04, "mAP@0.75": 47.56, "mAP": 46.17,
        "HD-mAP": 40.75, "HIT@1": 64.20,
    },
    ("qvhighlights", "val"): {  # Table 9
        "R1@0.5": 68.71, "R1@0.7": 52.06, "mAP": 47.59, "HD-mAP": 40.59, "HIT@1": 64.32,
    },
    ("charades", "test"): {"R1@0.3": 70.91, "R1@0.5": 59.78, "R1@0.7": 37.02, "mIoU": 50.86},
    ("tacos", "test"): {"R1@0.3": 49.71, "R1@0.5": 38.72, "R1@0.7": 25.12, "mIoU": 35.92},
    ("ego4d", "val"): {"R1@0.3": 7.20, "R1@0.5": 4.49, "R1@0.7": 2.12, "mIoU": 4.94},
    ("youtube", "val"): {  # Table 3
        "mAP-dog": 75.6, "mAP-gymnastics": 73.5, "mAP-parkour": 73.0, "mAP-skating": 74.6,
        "mAP-skiing": 74.8, "mAP-surfing": 84.8, "mAP": 76.1,
    },
    ("tvsum", "val"): {  # Table 4
        "mAP-VT": 85.0, "mAP-VU": 85.9, "mAP-GA": 91.0, "mAP-MS": 81.7, "mAP-PK": 88.8,
        "mAP-PR": 87.4, "mAP-FM": 78.1, "mAP-BK": 89.2, "mAP-BT": 90.3, "mAP-DS": 74.7,
        "mAP": 85.2,
    },
}  # fmt: skip
TABLES = {
    ("qvhighlights", "test"): "Table 1",
    ("qvhighlights", "val"): "Table 9",
    ("charades", "test"): "Table 2",
    ("tacos", "test"): "Table 2",
    ("ego4d", "val"): "Table 2",
    ("youtube", "val"): "Table 3",
    ("tvsum", "val"): "Table 4",
}
SPLIT_WORDS = {"test": "test", "val": "val", "validation": "val"}


def split_of(path: str | Path | None) -> str | None:
    """The split, "test" or "val", when the file name says so (highlight_test_with_gt.jsonl)."""
    if path is None:
        return None
    words = re.split(r"[^a-z]+", Path(path).stem.lower())
    found = {SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS}
    return found.pop() if len(found) == 1 else None


def published(dataset: str, split: str | None) -> tuple[str, dict[str, float]] | None:
    """(table name, metric -> published value) for a dataset's reported split, if any."""
    key = (dataset, split or "")
    return (TABLES[key], PAPER[key]) if key in PAPER else None
