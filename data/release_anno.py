"""The annotation side of the R²-Tuning feature release: its files, per dataset, as unified rows.

Layout of a release folder (one per dataset, as the original's `tools/prepare_data.sh`
leaves it; `../shared/spec/datasets.md`):

    clip_b32_vid_k4/{vid}.npy     (T, 4, 50, 768) float16 per video
    clip_b32_txt_k4/{qid}.npy     (L, 4, 512) float16 per query
    qvhighlights_{train,val,test}.jsonl | nlq_{train,val}.jsonl | charades_{train,test}.jsonl
    | {train,val,test}.jsonl (TACoS) | youtube_anno.json | tvsum_anno.json

- The jsonl datasets are in the QVHighlights schema already: rows are checked with the
  strict checker (errors stop the import before any feature is read) and kept verbatim.
  TACoS feature files are named `{vid}-cam-002.npy` (the camera of the videos) while the
  annotations say `{vid}`: the cache keeps the files' ids, as `r2 extract` of the videos
  would, and `r2 train` maps them (r2.train.annotations).
- `youtube_anno.json` / `tvsum_anno.json` are one JSON object keyed by video id; the
  query file of a video is named by its id (qid = vid). Rows get the fields of r2's
  converters (`r2 data convert youtube|tvsum`): `domain` and split from the per-domain lists
  (`domain_splits.json`, shipped, or `splits=`), YouTube `fps` = len(match) / duration with
  duration = frames / native fps (the original's frame-extraction rule, so T = number of
  labels), `label`, `match`; TVSum `label` = the per-clip scores of the 20 annotators.
- The query text is what the release ENCODED: `query`, else `title`, else `info[5]` (the
  original extractor's order), verbatim, so the cache's text and the features agree
  (TVSum's 4 quoted and 2 mis-decoded titles stay as they are; `r2 data convert tvsum`
  repairs them, but these features are of the unrepaired strings). A blank title cannot be
  a row of r2's schema: its row is dropped and counted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ConvertResult, ReleaseError, RepairLog, finite_or_none, load_release_json

log = logging.getLogger(__name__)

VIDEO_DIR, QUERY_DIR = "clip_b32_vid_k4", "clip_b32_txt_k4"
TACOS_CAMERA = "-cam-002"
TITLE_INDEX, LENGTH_INDEX = 5, 3  # YouTube info.json elements (title, listed length)


@dataclass(frozen=True)
class ReleaseLayout:
    """What one dataset's release folder holds and how its features were made."""

    dataset: str  # r2's dataset / preset name
    fps: float  # clips per second of the features (YouTube: per video; this is the default)
    files: dict[str, str]  # split -> annotation file (QVHighlights-schema jsonl)
    anno_json: str | None = None  # one JSON object keyed by video id (YouTube, TVSum)
    splits_key: str | None = None  # its key in domain_splits.json
    video_suffix: str = ""  # feature files' id = annotation vid + suffix (TACoS)


LAYOUTS = {
    "qvhighlights": ReleaseLayout(
        "qvhighlights", 0.5, {s: f"qvhighlights_{s}.jsonl" for s in ("train", "val", "test")}
    ),
    "ego4d": ReleaseLayout("ego4d", 0.5, {s: f"nlq_{s}.jsonl" for s in ("train", "val")}),
    "charades": ReleaseLayout(
        "charades", 1.0, {s: f"charades_{s}.jsonl" for s in ("train", "test")}
    ),
    "tacos": ReleaseLayout(
        "tacos", 0.5, {s: f"{s}.jsonl" for s in ("train", "val", "test")}, video_suffix=TACOS_CAMERA
    ),
    "youtube": ReleaseLayout("youtube", 0.5, {}, "youtube_anno.json", "youtube_highlights"),
    "tvsum": ReleaseLayout("tvsum", 0.5, {}, "tvsum_anno.json", "tvsum"),
}


@dataclass
class VideoInfo:
    """What the annotations say about one video (keyed by its feature file's id)."""

    duration: float | None  # seconds; None: unknown (then T / fps)
    fps: float | None = None  # its own clips per second (YouTube), else None


@dataclass
class ReleaseAnnotations:
    """The release's annotations: unified rows per split, videos, query texts, repairs."""

    rows: dict[str, list[dict[str, Any]]]  # split -> rows (QVHighlights schema + extras)
    videos: dict[str, VideoInfo]  # feature id -> info
    texts: dict[str, str]  # qid -> the text the release encoded
    result: ConvertResult  # repairs and notes, later the written files
    inputs: list[Path] = field(default_factory=list)  # annotation files read


def get_layout(dataset: str) -> ReleaseLayout:
    """The layout of a dataset by any name `r2 train --preset` accepts."""
    from r2.train.config import get_preset

    try:
        return LAYOUTS[get_preset(dataset).name]
    except KeyError:
        raise ReleaseError(f"unknown dataset {dataset!r}; one of {', '.join(LAYOUTS)}") from None


def video_id(layout: ReleaseLayout, vid: str) -> str:
    """The feature file id of an annotation's video id."""
    return f"{vid}{layout.video_suffix}"


def read_release_annotations(
    folder: Path, layout: ReleaseLayout, splits: str | os.PathLike | None = None
) -> ReleaseAnnotations:
    """Read and check a release folder's annotation files (module docstring).

    Raises:
        ReleaseError: no annotation file, malformed JSON objects (naming file and id).
        AnnotationError: a jsonl file with errors (file:line:field), before any import work.
    """
    out = ReleaseAnnotations({}, {}, {}, ConvertResult(layout.dataset, {}, {}, RepairLog()))
    if layout.anno_json is not None:
        _read_keyed(folder, layout, splits, out)
    else:
        _read_jsonl(folder, layout, out)
    return out


def _add_text(out: ReleaseAnnotations, qid: str, text: str, where: str) -> None:
    known = out.texts.setdefault(qid, text)
    if known != text:
        raise ReleaseError(
            f"{where}: qid {qid!r} has the text {text[:60]!r} here but "
            f"{known[:60]!r} in another row: one query file cannot be both"
        )


def _read_jsonl(folder: Path, layout: ReleaseLayout, out: ReleaseAnnotations) -> None:
    from .check import AnnotationError, check_file

    present = {s: folder / n for s, n in layout.files.items() if (folder / n).is_file()}
    if not present:
        raise ReleaseError(
            f"{folder}: none of the annotation files of the {layout.dataset} "
            f"release ({', '.join(layout.files.values())})"
        )
    missing = [n for s, n in layout.files.items() if s not in present]
    if missing:
        out.result.notes.append(f"annotation files not in the release folder: {', '.join(missing)}")
    for split, path in present.items():
        report = check_file(path)
        if report.errors:
            raise AnnotationError(report.error_message())
        report.log_warnings(f"{split} annotations")
        out.inputs.append(path)
        out.rows[split] = [r.data for r in report.rows]
        for r in report.rows:
            _add_text(out, r.qid, r.data["query"], r.where)
            info = out.videos.setdefault(video_id(layout, r.vid), VideoInfo(None))
            if info.duration is None:
                info.duration = finite_or_none(r.data.get("duration"))


def _load_object(path: Path) -> dict:
    data = load_release_json(path)
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: expected one JSON object keyed by video id")
    return data


def _domains(layout: ReleaseLayout, splits) -> dict[str, tuple[str, str]]:
    """vid -> (domain, split) from the per-domain lists."""
    from .youtube import load_splits

    where = {}
    for domain, lists in load_splits(splits, layout.splits_key).items():
        for split, vids in lists.items():
            for vid in vids:
                where.setdefault(vid, (domain, split))
    return where


def query_text(entry: dict) -> tuple[str | None, str]:
    """The text the original extractor encoded for a keyed entry, and where it came from."""
    for key in ("query", "title"):
        if key in entry:
            return entry[key], key
    info = entry.get("info")
    if isinstance(info, list) and len(info) > TITLE_INDEX:
        return info[TITLE_INDEX], "title"
    return None, ""


def _read_keyed(folder: Path, layout: ReleaseLayout, splits, out: ReleaseAnnotations) -> None:
    path = folder / layout.anno_json
    data, lists = _load_object(path), _domains(layout, splits)
    out.inputs.append(path)
    log_ = out.result.repairs
    unlisted = []
    for vid, entry in data.items():
        where = f"{path.name}[{vid}]"
        if not isinstance(entry, dict):
            raise ReleaseError(f"{path}: the entry of {vid!r} must be a JSON object")
        text, _ = query_text(entry)
        if text is not None and not isinstance(text, str):
            raise ReleaseError(f"{where}: the query text must be a string, got {text!r:.60}")
        row, info = (_youtube_row if layout.dataset == "youtube" else _tvsum_row)(vid, entry, where)
        out.videos[vid] = info
        if text is not None:
            _add_text(out, vid, text, where)
        domain, split = lists.get(vid, (entry.get("domain") or entry.get("category"), None))
        if split is None:
            unlisted.append(vid)
            continue
        if text is None or not text.strip():
            log_.add(split, "blank query text (no row of r2's schema)", "dropped", where)
            continue
        out.rows.setdefault(split, []).append(
            {"qid": vid, "query": text, "vid": vid, "domain": domain, **row}
        )
    _check_rows(out, path)
    if unlisted:
        out.result.notes.append(
            f"{len(unlisted)} videos of {path.name} are in no split list "
            f"(features imported, no row): {', '.join(unlisted[:5])}"
        )


def _labels(entry: dict, key: str, where: str) -> list:
    value = entry.get(key)
    if not isinstance(value, list) or not value:
        raise ReleaseError(f"{where}: field {key!r} must be a non-empty list of per-clip labels")
    return value


def _youtube_duration(entry: dict) -> tuple[float | None, str]:
    frames, native = finite_or_none(entry.get("frames")), finite_or_none(entry.get("fps"))
    if frames and native and frames > 0 and native > 0:
        return int(frames) / native, "release"  # the original: int(frames) / fps
    duration = finite_or_none(entry.get("duration"))
    if duration and duration > 0:
        return duration, "release"
    info = entry.get("info")
    length = (
        finite_or_none(info[LENGTH_INDEX]) if isinstance(info, list) and len(info) > 3 else None
    )
    return (length, "youtube_listing") if length and length > 0 else (None, "")


def _youtube_row(vid: str, entry: dict, where: str) -> tuple[dict, VideoInfo]:
    match = _labels(entry, "match", where)
    if any(m not in (-1, 0, 1) or isinstance(m, bool) for m in match):
        raise ReleaseError(f"{where}: field 'match' must hold -1, 0 or 1 per clip")
    duration, source = _youtube_duration(entry)
    fps = len(match) / duration if duration else None
    row = {
        "query_source": "title",
        "duration": duration,
        "fps": fps,
        "label": [[1 if m > 0 else 0] for m in match],
        "match": match,
        "duration_source": source,
    }
    if isinstance(entry.get("clip"), list):
        row["clip"] = entry["clip"]
    if finite_or_none(entry.get("frames")):
        row["frames"] = int(entry["frames"])
    return row, VideoInfo(duration, fps)


def _tvsum_row(vid: str, entry: dict, where: str) -> tuple[dict, VideoInfo]:
    label = _labels(entry, "anno", where)
    duration = next(
        (d for d in (finite_or_none(entry.get(k)) for k in ("duration", "length")) if d and d > 0),
        None,
    )
    return {"duration": duration, "label": label}, VideoInfo(duration)


def _check_rows(out: ReleaseAnnotations, path: Path) -> None:
    """The rows built from a keyed file pass r2's schema (errors name file[id] and field)."""
    from .check import AnnotationError, CheckReport
    from .schema import check_rows

    located = [(f"{path.name}[{r['vid']}]", r) for rows in out.rows.values() for r in rows]
    rows, problems = check_rows(located)
    report = CheckReport(str(path), rows, problems)
    if report.errors:
        raise AnnotationError(report.error_message())
