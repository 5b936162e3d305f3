"""YouTube Highlights from its original release (DomainSpecificHighlight) to jsonl.

Release layout: `{domain}/{vid}/match_label.json` = [clips, labels] (clips: [start_frame,
end_frame] windows of 100 frames, hop 50; labels: -1 / 0 / 1 per clip), `clip.json`,
`info.json` (element 5: the video's YouTube title, element 3: its listed length in whole
seconds), for the six domains; `missingVideos/` names unavailable ones. The released
R²-Tuning configuration uses the per-domain train/val lists of `domain_splits.json`
(shipped with r2; 247 train / 172 val videos, all present in the raw release).

Output (`youtube_{train,val}.jsonl`), one row per video: `qid` = `vid` = the YouTube id,
`query`, `query_source` ("title" or "domain"), `domain`, `duration` (s), `fps` (clips per
second, see below), `label` ([[1]] for a matched clip, [[0]] otherwise: the evaluation's
positives, as in the unified files), `match` (the raw -1 / 0 / 1, the training target
(match + 1) / 2), `clip` (the frame windows), `frames`, `duration_source`.

- Per-video frame rate, as released: one frame per annotated clip, fps = len(labels) /
  duration with duration = frames / native fps, so T = len(labels). The duration is
  measured on the video files with `videos=` (r2's own probe: first frame to the end of
  the last); without videos it is the YouTube listing's length (`info[3]`, whole seconds,
  typically 0-1 s above the file's; 31 of the 385 videos of the unified files differ by
  more than 1 s), and `duration_source` says "youtube_listing": pass the videos for exact
  per-video rates.
- Query: the video's title by default (the released pipeline), the domain name with
  `query="domain"` (the unified files' experiment). One listed video (dog/eGCD1F74iy8) has
  a blank title: its query falls back to the domain name (repair table: fixed).

Agreement with `../testdata/datasets/unified/youtube_highlight` (converted with
`query="domain"`, multisets of (vid, query, per-clip labels)): train 233 / 233, val 152 /
152 reference rows (100 %). Explained differences: ours has 34 more rows (14 train, 20 val)
for listed videos that the unified files lack (their authors could not download them; the
raw release has their labels); with the default title queries no row's query agrees, by
design.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .common import ConvertResult, ReleaseError, RepairLog, find_files, seconds, write_splits

DATASET = "youtube"
DOMAINS = ("dog", "gymnastics", "parkour", "skating", "skiing", "surfing")
SPLITS = ("train", "val")
QUERY_CHOICES = ("title", "domain")
TITLE_INDEX, LENGTH_INDEX = 5, 3  # info.json elements
SPLITS_FILE = Path(__file__).with_name("domain_splits.json")
SPLITS_KEY = "youtube_highlights"


def load_splits(path: str | os.PathLike | None, key: str) -> dict[str, dict[str, list[str]]]:
    """domain -> {"train": [vid...], "val": [...]} from a domain_splits.json-style file."""
    path = Path(path) if path is not None else SPLITS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{path}: cannot read the '{key}' split lists ({exc})") from None
    return data


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{path}: not readable JSON ({exc})") from None


def _video_paths(videos: str | os.PathLike | None) -> dict[str, Path]:
    if videos is None:
        return {}
    from r2.extract.inputs import find_videos

    return {v.vid: v.path for v in find_videos([videos])}


def _duration(vid: str, info: list, files: dict[str, Path], log: RepairLog, split: str,
              where: str) -> tuple[float | None, str, int | None]:  # fmt: skip
    """(duration s, source, native frame count) of a video."""
    if vid in files:
        from r2.extract.decode import VideoError, probe_video

        try:
            probe = probe_video(files[vid], fps=1.0)
            return probe.duration, "video", probe.n_frames
        except VideoError as exc:
            log.add(
                split, "video file unreadable: listing length used", "fixed", f"{where} ({exc})"
            )
    if files:
        log.add(split, "video file not found: listing length used", "fixed", where)
    length = info[LENGTH_INDEX] if len(info) > LENGTH_INDEX else None
    if isinstance(length, int | float) and not isinstance(length, bool) and length > 0:
        return float(length), "youtube_listing", None
    return None, "", None


def _row(domain: str, vid: str, folder: Path, query: str, files, log: RepairLog,
         split: str) -> dict | None:  # fmt: skip
    where = f"{domain}/{vid}"
    match_label, info = _read_json(folder / "match_label.json"), _read_json(folder / "info.json")
    if match_label is None or info is None:
        log.add(split, "video missing from the raw release", "dropped", where)
        return None
    if not (isinstance(match_label, list) and len(match_label) == 2
            and isinstance(info, list) and len(match_label[0]) == len(match_label[1])):  # fmt: skip
        raise ReleaseError(f"{folder}: match_label.json must be [clips, labels] of equal length")
    clips, labels = match_label
    duration, source, frames = _duration(vid, info, files, log, split, where)
    if duration is None:
        log.add(split, "video without a duration", "dropped", where)
        return None
    text, used = (domain, "domain") if query == "domain" else (info[TITLE_INDEX], "title")
    if not isinstance(text, str) or not text.strip():
        log.add(split, "blank title: query = domain name", "fixed", where)
        text, used = domain, "domain"
    return {"qid": vid, "query": text.strip(), "query_source": used, "duration": duration,
            "vid": vid, "domain": domain, "fps": len(labels) / duration,
            "label": [[1 if m > 0 else 0] for m in labels], "match": labels,
            "clip": [[seconds(a), seconds(b)] for a, b in clips],
            "frames": frames if frames is not None else int(clips[-1][1]),
            "duration_source": source}  # fmt: skip


def convert_youtube(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    query: str = "title",
    videos: str | os.PathLike | None = None,
    splits: str | os.PathLike | None = None,
) -> ConvertResult:
    """Convert the YouTube Highlights release folder into `{out}/youtube_{train,val}.jsonl`.

    Args:
        sources: the release folder (holding the six domain folders).
        out: output folder.
        query: "title" (released pipeline) or "domain" (the unified files' experiment).
        videos: folder of the videos (`{vid}.mp4` ...): exact durations, hence fps.
        splits: a domain_splits.json-style file (default: the released lists, shipped).

    Raises:
        ReleaseError: no release folder, or malformed release files (names the file).
    """
    if query not in QUERY_CHOICES:
        raise ReleaseError(f"query must be one of {QUERY_CHOICES}, got {query!r}")
    root = next((Path(s) for s in sources if (Path(s) / DOMAINS[0]).is_dir()), None)
    find_files(sources, ())  # existence of every source
    if root is None:
        raise ReleaseError(f"no YouTube Highlights release (domain folders such as "
                           f"{DOMAINS[0]}/) in {', '.join(map(str, sources))}")  # fmt: skip
    lists, files, log = load_splits(splits, SPLITS_KEY), _video_paths(videos), RepairLog()
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for domain in [d for d in DOMAINS if d in lists] + sorted(set(lists) - set(DOMAINS)):
        for split in SPLITS:
            for vid in lists[domain].get(split, []):
                row = _row(domain, vid, root / domain / vid, query, files, log, split)
                if row is not None:
                    rows[split].append(row)
    result = ConvertResult(DATASET, {}, {}, log)
    sources_used = {r["duration_source"] for split in rows.values() for r in split}
    result.notes.append(f"query = {query}; durations from {', '.join(sorted(sources_used))}")
    if "youtube_listing" in sources_used:
        result.notes.append("durations from the YouTube listing are whole seconds: pass "
                            "--videos DIR for the exact per-video fps (T = labels)")  # fmt: skip
    return write_splits(DATASET, out, rows, result)
