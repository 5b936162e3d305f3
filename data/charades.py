"""Charades-STA from its original release (2D-TAN's copy) to QVHighlights-schema jsonl.

Release files: `charades_sta_{train,test}.txt`, one query per line
`VIDEOID start end##sentence` (seconds), and `Charades_v1_{train,test}.csv` whose `length`
column is each video's duration in seconds (both CSVs are read: a few test queries name
train-list videos and vice versa).

Output rows: `qid` (one integer sequence over train then test, in file order, as the
reference conversion), `query`, `vid`, `duration` (the CSV length), `relevant_windows`.

Known defects, repaired the documented way and counted in the repair table:
- start > end (4 train rows: LEOL6, IOL8Q, AKKWU twice): dropped, as the reference
  conversion (Lighthouse / UniVTG) and hence the released R²-Tuning files drop them;
- window ending after the video's length (1,805 train and 562 test rows): end clamped to
  the length (1,802 train rows: the other 3 are among the 4 dropped above);
- video without a length in the CSVs, empty sentence: dropped (none in the release).

Agreement with `../testdata/datasets/unified/charades` (multisets of (vid, normalised
query, window rounded to 0.1 s)): train 12,404 / 12,404 reference rows, test 3,720 / 3,720
(100 %); no remaining difference (tests/test_data_convert.py).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from .common import (
    ConvertResult,
    ReleaseError,
    RepairLog,
    clamp_window,
    find_files,
    finite_or_none,
    require,
    seconds,
    write_splits,
)

DATASET = "charades"
SPLITS = ("train", "test")
QUERY_SEP = "##"  # between "VID start end" and the sentence


def _lengths(paths: list[Path]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"id", "length"} <= set(reader.fieldnames):
                raise ReleaseError(f"{path}: expected a CSV with 'id' and 'length' columns")
            for row in reader:
                out.setdefault(row["id"], finite_or_none(row["length"]))
    return out


def _parse(line: str, where: str) -> tuple[str, float, float, str]:
    head, sep, query = line.partition(QUERY_SEP)
    parts = head.split()
    start = finite_or_none(parts[1]) if len(parts) == 3 else None
    end = finite_or_none(parts[2]) if len(parts) == 3 else None
    if not sep or start is None or end is None:
        raise ReleaseError(f"{where}: expected 'VIDEOID start end##sentence', got {line[:80]!r}")
    return parts[0], start, end, query.strip()


def _split_rows(path: Path, split: str, lengths, log: RepairLog, qid: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            vid, start, end, query = _parse(line.rstrip("\n"), where)
            duration = lengths.get(vid)
            if not query:
                log.add(split, "query without text", "dropped", where)
                continue
            if duration is None or duration <= 0:
                log.add(split, "video without a length in the CSVs", "dropped", where)
                continue
            window = clamp_window(start, end, duration, log, split, where)
            if window is None:
                continue
            rows.append(
                {
                    "qid": qid + len(rows),
                    "query": query,
                    "duration": duration,
                    "vid": vid,
                    "relevant_windows": [[seconds(x) for x in window]],
                }
            )
    return rows  # fmt: skip


def convert_charades(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> ConvertResult:
    """Convert the Charades-STA release in `sources` (folder(s) or the four files) into
    `{out}/charades_{train,test}.jsonl` (+ `charades_report.json`).

    Raises:
        ReleaseError: a release file is missing or malformed (names file and line).
    """
    names = [f"charades_sta_{s}.txt" for s in SPLITS]
    csvs = [f"Charades_v1_{s}.csv" for s in SPLITS]
    found = find_files(sources, names + csvs)
    texts = require(found, names, sources)
    lengths = _lengths(require(found, csvs, sources))
    log, splits, qid = RepairLog(), {}, 0
    for split, path in zip(SPLITS, texts, strict=True):
        splits[split] = _split_rows(path, split, lengths, log, qid)
        qid += len(splits[split])
    result = ConvertResult(DATASET, {}, {}, log)
    return write_splits(DATASET, out, splits, result)
