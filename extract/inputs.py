"""What `extract` works on: video files found in the inputs and queries read from annotations.

Everything here is validated before any decoding or model loading starts, so a typo in an
annotation file or two videos with the same id stop the run before it has done any work.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from r2.errors import UsageError

log = logging.getLogger(__name__)

# Folder scans pick up these extensions (lower case). Audio-only containers are included on
# purpose: a media file in a video folder that has no picture deserves a reported skip, not
# silence. A file named explicitly on the command line is always tried, whatever its name.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".qt", ".mpg", ".mpeg", ".m2v", ".ts",
     ".mts", ".m2ts", ".flv", ".wmv", ".asf", ".3gp", ".3g2", ".ogv", ".ogg", ".vob", ".mxf",
     ".dv", ".gif"}
)  # fmt: skip
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".m4a", ".aac", ".flac", ".opus", ".oga", ".wma"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS


class InputError(UsageError, ValueError):
    """The inputs can't be used as given (missing path, duplicate id, malformed annotation)."""


@dataclass(frozen=True)
class VideoInput:
    """One video file to extract; `vid` is the file stem."""

    vid: str
    path: Path
    size: int  # bytes, from os.stat at scan time
    mtime: float  # os.stat st_mtime at scan time
    fps: float | None = None  # clips per second of this video (annotation "fps"), None: --fps


@dataclass(frozen=True)
class QueryInput:
    """One query of an annotation file."""

    qid: str  # str(qid) of the annotation
    text: str  # the query as written in the file
    vid: str | None  # the annotation's video id (str of an integer id), if given
    where: str  # "file:line", for messages
    fps: float | None = None  # the annotation's "fps" (clips per second of its video), if given


@dataclass
class ScanResult:
    """Videos found in the inputs and what a folder scan left out (counted, never silent)."""

    videos: list[VideoInput]
    hidden: list[Path] = field(default_factory=list)  # hidden files / folders (name ".*")
    unknown: list[Path] = field(default_factory=list)  # files without a media extension

    def skipped_counts(self) -> dict[str, int]:
        """Reason -> number of entries left out of folder scans (zero counts omitted)."""
        counts = {"hidden": len(self.hidden), "unknown extension": len(self.unknown)}
        return {k: v for k, v in counts.items() if v}


def _scan_folder(folder: Path, result: ScanResult) -> list[Path]:
    """Media files under `folder` (recursive, sorted); hidden entries and files without a
    media extension are recorded in `result`."""
    found = []
    for root, dirs, files in os.walk(folder):
        result.hidden += [Path(root) / d for d in sorted(dirs) if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                result.hidden.append(Path(root) / name)
            elif Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                found.append(Path(root) / name)
            else:
                result.unknown.append(Path(root) / name)
    return found


def scan_inputs(inputs: list[str | Path]) -> ScanResult:
    """Files and folders (searched recursively) -> videos with unique ids, in input order,
    plus the entries the folder scans skipped.

    Raises:
        InputError: a path doesn't exist, or two different files share a stem (video id).
    """
    result = ScanResult([])
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(_scan_folder(path, result))
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    by_vid: dict[str, Path] = {}
    for path in paths:
        first = by_vid.setdefault(path.stem, path)
        if first is not path:
            if first.resolve() == path.resolve():
                continue  # the same file reached twice (named and inside a named folder)
            raise InputError(
                f"two videos have the id {path.stem!r} (the file stem): {first} and {path}; "
                "rename one of them"
            )
        stat = path.stat()
        result.videos.append(VideoInput(path.stem, path, stat.st_size, stat.st_mtime))
    for reason, n in result.skipped_counts().items():
        log.info("folder scan: skipped %d %s entr%s", n, reason, "y" if n == 1 else "ies")
    return result


def find_videos(inputs: list[str | Path]) -> list[VideoInput]:
    """The videos of :func:`scan_inputs` (files and folders, searched recursively)."""
    return scan_inputs(inputs).videos


def read_queries(files: list[str | Path]) -> list[QueryInput]:
    """Read QVHighlights-schema jsonl files (`qid`, `query`, optional `vid` and `fps`).

    Each file goes through the strict checker of `r2.data` (bounded line size and nesting,
    at most `MAX_QUERY_CHARS` characters per query, checked before any tokenising): its
    errors stop the run, its warnings are logged once. A qid repeated in another file with
    the same text is kept once; with a different text it is an error.

    Raises:
        InputError: naming file:line and the field of the problems found.
    """
    from r2.data.check import AnnotationError, check_file
    from r2.data.schema import Requirements

    queries: dict[str, QueryInput] = {}
    for file in files:
        try:
            report = check_file(file, Requirements(vid=False, query=True))
        except AnnotationError as err:
            raise InputError(str(err)) from None
        if report.errors:
            raise InputError(report.error_message())
        report.log_warnings()
        for row in report.rows:
            fps = row.data.get("fps")  # validated by the checker: a positive number
            fps = float(fps) if fps is not None and row.vid is not None else None
            query = QueryInput(row.qid, row.data["query"], row.vid, row.where, fps)
            seen = queries.setdefault(query.qid, query)
            if seen.text != query.text:
                raise InputError(
                    f"{query.where}: field 'qid' {query.qid!r} was already given with a "
                    f"different query at {seen.where}"
                )
    return list(queries.values())


def video_fps(queries: list[QueryInput]) -> dict[str, float]:
    """The per-video clip rate the annotations give (rows with an "fps" field), by vid.

    Raises:
        InputError: two rows of one video give different fps (naming both lines).
    """
    found: dict[str, QueryInput] = {}
    for q in queries:
        if q.fps is None or q.vid is None:
            continue
        first = found.setdefault(q.vid, q)
        if first.fps != q.fps:
            raise InputError(
                f"{q.where}: field 'fps' {q.fps:g} for video {q.vid!r} differs from the "
                f"{first.fps:g} given at {first.where}; all rows of a video must agree"
            )
    return {vid: q.fps for vid, q in found.items()}
