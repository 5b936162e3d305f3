"""`r2 data check`: every problem of an annotation file, alone or against a feature cache.

:func:`check_annotations` is what `r2 data check` runs; :func:`read_annotations` is the
strict reader `r2 train`, `r2 eval --checkpoint` and `r2 data` use (errors stop, warnings are
summarised once). Cache checks use `r2.cache`'s public API only.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from r2.errors import UsageError

from .jsonl import iter_jsonl
from .schema import ERROR, REPAIR_KINDS, WARNING, AnnoRow, Problem, Requirements, check_rows

log = logging.getLogger(__name__)

MAX_LISTED = 5  # locations named per kind in a summary / error message
MAX_ERRORS_SHOWN = 10  # problems quoted in one error message
DURATION_TOLERANCE_S = 4.0  # annotated duration vs the cached video's T / fps
LABEL_CLIP_SLACK = 5  # per-clip labels vs cached clips: fewer differences are cut (as released)
TACOS_CAMERA = "-cam-002"  # suffix of the TACoS video files (and feature ids) annotations omit


class AnnotationError(UsageError, ValueError):
    """An annotation file cannot be used; the message names file, line and field."""


@dataclass
class CheckReport:
    """What checking one annotation file found."""

    source: str
    rows: list[AnnoRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def repairs(self) -> list[Problem]:
        """Warnings about windows that training repairs (fatal with --strict-anno)."""
        return [p for p in self.problems if p.kind in REPAIR_KINDS]

    def counts(self) -> dict[tuple[str, str], int]:
        """(severity, kind) -> number of problems."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for p in self.problems:
            out[(p.severity, p.kind)] += 1
        return dict(out)

    def summary(self, problems: list[Problem] | None = None) -> list[str]:
        """One line per kind: count and the first few locations (with qids)."""
        groups: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in self.problems if problems is None else problems:
            groups[(p.severity, p.kind)].append(p)
        lines = []
        for (severity, kind), found in sorted(groups.items()):
            first = ", ".join(
                f"{p.where}" + (f" (qid {p.qid})" if p.qid is not None else "")
                for p in found[:MAX_LISTED]
            )
            lines.append(f"{severity} {kind}: {len(found)} (first: {first})")
        return lines

    def error_message(self) -> str:
        """One message quoting the first errors and how many there are."""
        errors = self.errors
        shown = "; ".join(str(p) for p in errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        tail = f"; and {more} more (r2 data check {self.source} lists all)" if more > 0 else ""
        head = f"{len(errors)} errors in {self.source}: " if len(errors) > 1 else ""
        return head + shown + tail

    def log_warnings(self, what: str = "annotations") -> None:
        """Log the warnings once, as counts per kind with the first locations."""
        warnings = self.warnings
        if warnings:
            log.warning("%d warnings in %s %s:\n  %s", len(warnings), what, self.source,
                        "\n  ".join(self.summary(warnings)))  # fmt: skip


def read_annotations(
    path: str | os.PathLike,
    need: Requirements | None = None,
    *,
    strict: bool = False,
    what: str = "annotations",
) -> CheckReport:
    """Read and check an annotation file; stop on errors, report warnings once.

    Args:
        path: QVHighlights-schema JSON Lines.
        need: required fields (default: qid, vid and query).
        strict: window repairs (start > end, negative, past the end, zero length) are
            errors too (`r2 train --strict-anno`).
        what: how the file is named in the warning summary.

    Raises:
        AnnotationError: any error (all of them counted, the first few quoted), or an
            empty file.
    """
    report = check_file(path, need)
    if strict and report.repairs:
        raise AnnotationError(
            f"{len(report.repairs)} windows in {path} need repairs and --strict-anno is set:\n  "
            + "\n  ".join(report.summary(report.repairs))
        )
    if report.errors:
        raise AnnotationError(report.error_message())
    if not report.rows:
        raise AnnotationError(f"{path}: no annotations in the file")
    report.log_warnings(what)
    return report


def check_file(path: str | os.PathLike, need: Requirements | None = None) -> CheckReport:
    """Every problem of one annotation file (nothing raised for bad rows).

    Raises:
        AnnotationError: the file cannot be read as JSON Lines at all (missing, over-long
            line, invalid or too deeply nested JSON: these stop the reading).
    """
    from .jsonl import JsonInputError

    try:
        rows, problems = check_rows(iter_jsonl(path, "annotation file"), need)
    except JsonInputError as exc:
        raise AnnotationError(str(exc)) from None
    return CheckReport(str(path), rows, problems)


def check_annotations(
    path: str | os.PathLike, cache: str | os.PathLike | None = None
) -> CheckReport:
    """`r2 data check`: the file's problems, plus the cache's when one is given."""
    report = check_file(path)
    if cache is not None:
        report.problems += check_against_cache(report.rows, Path(cache))
    return report


def _cache_fps(cache, record, row: AnnoRow) -> float:
    """The clip rate of a video: its own (per-video fps) when recorded, else the cache's."""
    fps = row.data.get("fps")
    if fps is None:
        fps = getattr(record, "fps", None)
    return float(fps) if fps else float(cache.settings.fps)


def _cached_vid(vid: str, cache) -> str | None:
    if cache.has_video(vid):
        return vid
    return vid + TACOS_CAMERA if cache.has_video(vid + TACOS_CAMERA) else None


def check_against_cache(rows: list[AnnoRow], cache_path: Path) -> list[Problem]:
    """Missing videos/queries, query text vs the cached text, T vs duration x fps, labels
    vs clips (`r2.cache.FeatureCache` public API only)."""
    from r2.cache import FeatureCache

    out: list[Problem] = []
    with FeatureCache(cache_path) as cache:
        for row in rows:
            out += _row_vs_cache(row, cache)
    return out


def _row_vs_cache(row: AnnoRow, cache) -> list[Problem]:
    out = []

    def add(name: str, message: str, kind: str, severity: str = ERROR) -> None:
        out.append(Problem(row.where, name, message, severity, kind, row.qid))

    if not cache.has_query(row.qid):
        add("qid", f"query {row.qid!r} is not in {cache.path} (run r2 extract)", "query_not_cached")
    else:
        text, cached = row.data.get("query"), cache.query_record(row.qid).text
        if isinstance(text, str) and text != cached:
            add("query", f"differs from the text cached for qid {row.qid!r} ({cached[:60]!r}): "
                "its features are of another text; re-extract", "query_text")  # fmt: skip
    vid = None if row.vid is None else _cached_vid(row.vid, cache)
    if row.vid is not None and vid is None:
        add("vid", f"video {row.vid!r} is not in {cache.path} (run r2 extract)", "video_not_cached")
    if vid is None:
        return out
    record = cache.video_record(vid)
    fps, t = _cache_fps(cache, record, row), record.n_clips
    duration = row.data.get("duration")
    if isinstance(duration, int | float) and abs(t / fps - duration) > DURATION_TOLERANCE_S:
        add("duration", f"{duration:g} s annotated but the cached video has T = {t} clips at "
            f"{fps:g} fps ({t / fps:g} s; wrong video?)", "duration_vs_cache", WARNING)  # fmt: skip
    label = row.data.get("label")
    if isinstance(label, list) and label and len(label) != t:
        gap = abs(len(label) - t)
        severity = ERROR if gap >= LABEL_CLIP_SLACK else WARNING
        add("label", f"{len(label)} per-clip labels for T = {t} cached clips"
            + ("" if severity == ERROR else " (both cut to the shorter, as released)"),
            "labels_vs_clips", severity)  # fmt: skip
    return out
