"""What `extract` works on: video files found in the inputs and queries read from annotations.

Everything here is validated before any decoding or model loading starts, so a typo in an
annotation file or two videos with the same id stop the run before it has done any work.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class QueryInput:
    """One query of an annotation file."""

    qid: str  # str(qid) of the annotation
    text: str  # the query as written in the file
    vid: str | None  # the annotation's video id, if given
    where: str  # "file:line", for messages


def _scan_folder(folder: Path) -> tuple[list[Path], int]:
    """Media files under `folder` (recursive, sorted, hidden entries skipped) + ignored count."""
    found, ignored = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                found.append(Path(root) / name)
            else:
                ignored += 1
    return found, ignored


def find_videos(inputs: list[str | Path]) -> list[VideoInput]:
    """Files and folders (searched recursively) -> videos with unique ids, in input order.

    Raises:
        InputError: a path doesn't exist, or two different files share a stem (video id).
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files, ignored = _scan_folder(path)
            if ignored:
                log.info("%s: ignored %d file(s) without a media extension", path, ignored)
            paths.extend(files)
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    by_vid: dict[str, Path] = {}
    videos: list[VideoInput] = []
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
        videos.append(VideoInput(path.stem, path, stat.st_size, stat.st_mtime))
    return videos


def _parse_line(line: str, where: str) -> QueryInput:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "qid" not in row:
        raise InputError(f"{where}: field 'qid' is missing")
    qid = row["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or str(qid) == "":
        raise InputError(f"{where}: field 'qid' must be an integer or a non-empty string")
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: field 'query' must be a non-empty string")
    vid = row.get("vid")
    if vid is not None and not isinstance(vid, str):
        raise InputError(f"{where}: field 'vid' must be a string")
    return QueryInput(str(qid), query, vid, where)


def read_queries(files: list[str | Path]) -> list[QueryInput]:
    """Read QVHighlights-schema jsonl files (`qid`, `query`, optional `vid`; other fields ignored).

    A qid repeated with the same text is kept once; with a different text it is an error.

    Raises:
        InputError: naming file:line and the field, for the first malformed line.
    """
    queries: dict[str, QueryInput] = {}
    for file in files:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: cannot read annotation file ({err})") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            query = _parse_line(line, f"{path}:{number}")
            seen = queries.setdefault(query.qid, query)
            if seen.text != query.text:
                raise InputError(
                    f"{query.where}: field 'qid' {query.qid!r} was already given with a "
                    f"different query at {seen.where}"
                )
    return list(queries.values())
