"""TACoS from its original release (2D-TAN's copy) to QVHighlights-schema jsonl.

Release files: `{train,val,test}.json`, each `{"sXX-dYY.avi": {"num_frames", "fps",
"timestamps": [[f0, f1], ...] (FRAMES), "sentences": [...]}}`.

Output rows: `qid` = "{vid}_{i}" (i = the sentence's index in its video), `query`, `vid`
(the key without ".avi"; the feature files of the R²-Tuning release add "-cam-002", which
`r2 train` maps), `duration` = num_frames / fps, `relevant_windows` [[f0 / fps, f1 / fps]].

Known defects, repaired and counted in the repair table: windows ending after the last
frame (43 train and 5 test sentences) have their end clamped to the duration; start > end,
windows wholly outside the video, empty sentences and videos without frames or fps are
dropped (none in the release).

Agreement with `../testdata/datasets/unified/tacos` (multisets of (vid, normalised query,
window rounded to 0.1 s)): train 9,790 / 9,790, val 4,436 / 4,436, test 4,001 / 4,001
(100 %); no remaining difference (tests/test_data_convert.py).
"""

from __future__ import annotations

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
    load_release_json,
    require,
    seconds,
    write_splits,
)

DATASET = "tacos"
SPLITS = ("train", "val", "test")
VIDEO_SUFFIX = ".avi"


def _load(path: Path) -> dict:
    data = load_release_json(path)
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: expected one JSON object keyed by video file name")
    return data


def _video_rows(key: str, video, split: str, log: RepairLog, where: str) -> list[dict]:
    vid = key[: -len(VIDEO_SUFFIX)] if key.endswith(VIDEO_SUFFIX) else key
    ok = isinstance(video, dict) and all(k in video for k in ("timestamps", "sentences"))
    fps = finite_or_none(video.get("fps")) if ok else None
    frames = finite_or_none(video.get("num_frames")) if ok else None
    if not ok or not isinstance(video["timestamps"], list) or not isinstance(
        video["sentences"], list
    ) or len(video["timestamps"]) != len(video["sentences"]):  # fmt: skip
        raise ReleaseError(f"{where}: expected num_frames, fps and as many timestamps as "
                           "sentences")  # fmt: skip
    if not fps or fps <= 0 or not frames or frames <= 0:
        for _ in video["sentences"]:
            log.add(split, "video without num_frames / fps", "dropped", where)
        return []
    duration, rows = frames / fps, []
    for i, (stamp, query) in enumerate(zip(video["timestamps"], video["sentences"], strict=True)):
        at = f"{where}[{i}]"
        if not isinstance(query, str) or not query.strip():
            log.add(split, "query without text", "dropped", at)
            continue
        f0, f1 = (finite_or_none(x) for x in stamp) if len(stamp) == 2 else (None, None)
        if f0 is None or f1 is None:
            raise ReleaseError(f"{at}: a timestamp must be [start_frame, end_frame]")
        window = clamp_window(f0 / fps, f1 / fps, duration, log, split, at)
        if window is not None:
            rows.append(
                {
                    "qid": f"{vid}_{i}",
                    "query": query.strip(),
                    "duration": duration,
                    "vid": vid,
                    "relevant_windows": [[seconds(x) for x in window]],
                }
            )
    return rows  # fmt: skip


def convert_tacos(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> ConvertResult:
    """Convert the TACoS release in `sources` (folder(s) or the three files) into
    `{out}/tacos_{train,val,test}.jsonl` (+ `tacos_report.json`).

    Raises:
        ReleaseError: a release file is missing or malformed (names the file and video).
    """
    names = [f"{s}.json" for s in SPLITS]
    paths = require(find_files(sources, names), names, sources)
    log, splits = RepairLog(), {}
    for split, path in zip(SPLITS, paths, strict=True):
        rows = []
        for key, video in _load(path).items():
            rows += _video_rows(key, video, split, log, f"{path.name}[{key}]")
        splits[split] = rows
    return write_splits(DATASET, out, splits, ConvertResult(DATASET, {}, {}, log))
