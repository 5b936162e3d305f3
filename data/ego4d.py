"""Ego4D-NLQ from its official annotation files to QVHighlights-schema jsonl.

The annotations are gated (Ego4D license), so there is no copy in the project's test data;
the converter follows the public NLQ schema (`nlq_{train,val}.json`,
`nlq_test_unannotated.json`)::

    {"videos": [{"video_uid", "clips": [{"clip_uid", "video_start_sec", "video_end_sec",
      "clip_start_sec", "clip_end_sec", "annotations": [{"annotation_uid",
      "language_queries": [{"clip_start_sec", "clip_end_sec", "video_start_sec",
      "video_end_sec", "template", "query", ...}]}]}]}]}

The unit of retrieval is the clip (about 480 s), as in the released R²-Tuning pipeline:
`vid` = clip_uid, `duration` = the clip's clip_end_sec − clip_start_sec, a query's window =
its own clip_start_sec / clip_end_sec (seconds from the clip's start). `qid` =
"{annotation_uid}_{j}" (j = the query's index in its annotation); `video_uid` and
`template` are kept. The split is the file name's (`nlq_val.json` -> val; `_unannotated`
files give rows without windows, for submission).

Known defects, repaired and counted in the repair table: language queries without `query`
text are dropped (the NLQ release has some), windows past the clip's end are clamped,
start > end and windows wholly outside the clip are dropped, clips without a positive
duration drop their queries. No reference conversion is available here to compare with;
tests/test_data_convert.py checks every rule on a file built in the test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .common import (
    ConvertResult,
    ReleaseError,
    RepairLog,
    clamp_window,
    finite_or_none,
    load_release_json,
    seconds,
    write_splits,
)

DATASET = "ego4d"
FILE_NAME = re.compile(r"^nlq_(?P<split>[a-z]+)(?:_unannotated)?\.json$")


def _files(sources: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """split -> NLQ file, from files and folders."""
    out: dict[str, Path] = {}
    for src in map(Path, sources):
        if not src.exists():
            raise ReleaseError(f"{src}: no such file or folder")
        for path in sorted(src.glob("nlq_*.json")) if src.is_dir() else [src]:
            match = FILE_NAME.match(path.name)
            if match is None:
                raise ReleaseError(f"{path}: expected a file named nlq_SPLIT.json "
                                   "(e.g. nlq_train.json, nlq_test_unannotated.json)")  # fmt: skip
            out.setdefault(match["split"], path)
    if not out:
        raise ReleaseError(f"no nlq_*.json file in {', '.join(map(str, sources))}")
    return out


def _load(path: Path) -> list:
    data = load_release_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise ReleaseError(f"{path}: expected the NLQ schema ({{'videos': [...]}})")
    return data["videos"]


def _query_row(q, clip: dict, duration: float, at: str, split: str, log: RepairLog, j: int,
               annotation_uid: str) -> dict | None:  # fmt: skip
    text = q.get("query") if isinstance(q, dict) else None
    if not isinstance(text, str) or not text.strip():
        log.add(split, "query without text", "dropped", at)
        return None
    row = {"qid": f"{annotation_uid}_{j}", "query": text.strip(), "duration": duration,
           "vid": clip["clip_uid"], "video_uid": clip.get("video_uid")}  # fmt: skip
    if q.get("template") is not None:
        row["template"] = q["template"]
    start, end = finite_or_none(q.get("clip_start_sec")), finite_or_none(q.get("clip_end_sec"))
    if start is None and end is None:
        return row  # unannotated split: no window
    if start is None or end is None:
        log.add(split, "query with half a window", "dropped", at)
        return None
    window = clamp_window(start, end, duration, log, split, at)
    if window is None:
        return None
    row["relevant_windows"] = [[seconds(x) for x in window]]
    return row


def _clip_rows(clip, split: str, log: RepairLog, where: str) -> list[dict]:
    if not isinstance(clip, dict) or not isinstance(clip.get("clip_uid"), str):
        raise ReleaseError(f"{where}: a clip needs a clip_uid")
    start = finite_or_none(clip.get("clip_start_sec"))
    end = finite_or_none(clip.get("clip_end_sec"))
    annotations = clip.get("annotations") or []
    queries = [(a, q) for a in annotations for q in (a.get("language_queries") or [])]
    if start is None or end is None or end <= start:
        for _ in queries:
            log.add(split, "clip without a positive duration", "dropped", where)
        return []
    rows = []
    for a in annotations:
        uid = a.get("annotation_uid")
        if not isinstance(uid, str) or not uid:
            raise ReleaseError(f"{where}: an annotation needs an annotation_uid")
        for j, q in enumerate(a.get("language_queries") or []):
            row = _query_row(q, clip, end - start, f"{where}[{uid}][{j}]", split, log, j, uid)
            if row is not None:
                rows.append(row)
    return rows


def convert_ego4d(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> ConvertResult:
    """Convert Ego4D-NLQ annotation files (`nlq_{split}.json`, files or folders) into
    `{out}/ego4d_{split}.jsonl` (+ `ego4d_report.json`).

    Raises:
        ReleaseError: no NLQ file, or one not in the NLQ schema (names file and clip).
    """
    log, splits = RepairLog(), {}
    for split, path in sorted(_files(sources).items()):
        rows = []
        for video in _load(path):
            clips = video.get("clips") if isinstance(video, dict) else None
            for clip in clips or []:
                if isinstance(clip, dict):
                    clip = {**clip, "video_uid": video.get("video_uid")}
                rows += _clip_rows(clip, split, log, f"{path.name}[{_clip_uid(clip)}]")
        splits[split] = rows
    return write_splits(DATASET, out, splits, ConvertResult(DATASET, {}, {}, log))


def _clip_uid(clip) -> str:
    return clip.get("clip_uid", "?") if isinstance(clip, dict) else "?"
