"""The annotation schema and its strict checker, shared by every command that reads annotations.

QVHighlights-schema rows (`qid`, `vid`, `query`, `duration`, `relevant_windows`,
`relevant_clip_ids` + `saliency_scores`) with the other benchmarks' extra fields (`label`,
`match`, `domain`, per-video `fps`). A field that is present follows the same rules in
every command; which fields are REQUIRED depends on what the command needs (extract: qid
and query; train and `r2 data check`: qid, vid and query; eval: qid and the ground truth).

Every problem is a :class:`Problem` naming file:line and field, classed as

- an **error**: the row cannot be used as written (wrong types, NaN/inf, a window wholly
  outside the video, a negative duration, saliency scores that do not match their clip
  ids, duplicate qids, limits exceeded, ...);
- a **warning**: usable, but repaired or suspicious. The window repairs that training
  applies (`REPAIR_KINDS`: start > end swapped, negative start and end past the duration
  clamped, zero length widened to one clip) are warnings; `r2 train --strict-anno` makes
  them fatal.

Limits (documented in README "Datasets"): `MAX_WINDOWS` windows per query,
`MAX_QUERY_CHARS` characters per query (checked before any tokeniser sees it), `MAX_ID_CHARS`
per id, `MAX_CLIPS` per-clip entries; line size and JSON nesting are bounded by `jsonl.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_WINDOWS = 1_000  # relevant_windows per query (QVHighlights has at most 6)
MAX_QUERY_CHARS = 2_000  # characters per query (CLIP reads ~300 of them: 77 tokens)
MAX_ID_CHARS = 512  # characters of a qid / vid
MAX_CLIPS = 200_000  # entries of relevant_clip_ids / label / match (111 h at 0.5 fps)
CLIP_SECONDS = 2.0  # relevant_clip_ids count 2-second clips (QVHighlights)
END_SLACK = 1e-6  # seconds a window may end past `duration` before it counts as a repair

ERROR, WARNING = "error", "warning"
REPAIR_KINDS = frozenset(
    {"window_reversed", "window_negative", "window_past_end", "window_zero_length"}
)


@dataclass(frozen=True)
class Problem:
    """One finding: where (file:line), which field, what, how bad, and its class."""

    where: str
    field: str
    message: str
    severity: str  # ERROR or WARNING
    kind: str  # short class name, e.g. "window_reversed", "duplicate_qid"
    qid: str | None = None

    def __str__(self) -> str:
        at = f" field '{self.field}':" if self.field else ""
        return f"{self.where}:{at} {self.message}"


@dataclass
class AnnoRow:
    """One parsed annotation row: its dict, location and ids as strings."""

    where: str
    data: dict[str, Any]
    qid: str
    vid: str | None


@dataclass
class Requirements:
    """Which fields a command needs (present fields are always checked)."""

    vid: bool = True
    query: bool = True


@dataclass
class _Row:
    """Checks of one row, collecting problems."""

    where: str
    data: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    qid: str | None = None

    def add(self, name: str, message: str, kind: str, severity: str = ERROR) -> None:
        self.problems.append(Problem(self.where, name, message, severity, kind, self.qid))


def is_number(value: Any) -> bool:
    """An int or float (numpy scalars too), not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number that is neither NaN nor infinite (nor an integer too large for a float)."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def _id(row: _Row, name: str, required: bool) -> str | None:
    if name not in row.data or row.data[name] is None:
        if required:
            row.add(name, "missing", f"{name}_missing")
        return None
    value = row.data[name]
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        row.add(name, f"must be an integer or a non-empty string, got {value!r:.60}",
                f"{name}_type")  # fmt: skip
        return None
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        row.add(name, f"{len(text):,} characters (the limit is {MAX_ID_CHARS})", f"{name}_long")
        return None
    return text


def _query(row: _Row, required: bool) -> None:
    value = row.data.get("query")
    if value is None:
        if required:
            row.add("query", "missing (a query needs its text)", "query_missing")
        return
    if not isinstance(value, str) or not value.strip():
        row.add("query", f"must be a non-empty string, got {value!r:.60}", "query_empty")
    elif len(value) > MAX_QUERY_CHARS:
        row.add("query", f"{len(value):,} characters (the limit is {MAX_QUERY_CHARS:,})",
                "query_long")  # fmt: skip


def _duration(row: _Row) -> float | None:
    value = row.data.get("duration")
    if value is None:
        return None
    if not is_finite(value):
        row.add("duration", f"must be a finite number of seconds, got {value!r:.60}",
                "duration_type")  # fmt: skip
        return None
    if value <= 0:
        kind = "duration_negative" if value < 0 else "duration_zero"
        row.add("duration", f"must be > 0 seconds, got {value!r}", kind)
        return None
    return float(value)


def _window_problems(row: _Row, i: int, start: float, end: float, duration: float | None):
    name = f"relevant_windows[{i}]"
    lo, hi = min(start, end), max(start, end)
    if hi <= 0 or (duration is not None and lo >= duration):
        span = f"[0, {duration:g}]" if duration is not None else "the video (t >= 0)"
        row.add(name, f"[{start:g}, {end:g}] lies wholly outside {span}", "window_outside")
        return
    if start > end:
        row.add(name, f"start {start:g} > end {end:g} (swapped for training)",
                "window_reversed", WARNING)  # fmt: skip
    if lo < 0:
        row.add(name, f"starts at {lo:g} < 0 (clamped to 0 for training)",
                "window_negative", WARNING)  # fmt: skip
    if duration is not None and hi > duration + END_SLACK:
        row.add(name, f"ends at {hi:g}, past the duration {duration:g} (clamped for training)",
                "window_past_end", WARNING)  # fmt: skip
    if lo == hi:
        row.add(name, f"zero length [{start:g}, {end:g}] (widened to one clip for training)",
                "window_zero_length", WARNING)  # fmt: skip


def _windows(row: _Row, duration: float | None) -> None:
    value = row.data.get("relevant_windows")
    if value is None:
        return
    if not isinstance(value, list) or not value:
        row.add("relevant_windows", f"must be a non-empty list of [start_s, end_s], got "
                f"{str(value)[:60]}", "windows_type")  # fmt: skip
        return
    if len(value) > MAX_WINDOWS:
        row.add("relevant_windows", f"{len(value):,} windows (the limit is {MAX_WINDOWS:,} "
                "per query)", "windows_many")  # fmt: skip
        return
    for i, w in enumerate(value):
        if not (isinstance(w, list) and len(w) == 2 and all(is_number(x) for x in w)):
            row.add(f"relevant_windows[{i}]", f"must be [start_s, end_s] numbers, got "
                    f"{str(w)[:60]}", "window_type")  # fmt: skip
        elif not all(is_finite(x) for x in w):
            row.add(f"relevant_windows[{i}]", f"must be finite numbers, got {w}",
                    "window_nonfinite")  # fmt: skip
        else:
            _window_problems(row, i, float(w[0]), float(w[1]), duration)


def _numbers(row: _Row, name: str, values: Any, kind: str) -> bool:
    """A list of finite numbers; one problem naming the first bad element."""
    if not isinstance(values, list):
        row.add(name, f"must be a list of numbers, got {type(values).__name__}", f"{kind}_type")
        return False
    for j, v in enumerate(values):
        if not is_number(v):
            row.add(f"{name}[{j}]", f"must be a number, got {v!r:.40}", f"{kind}_type")
            return False
        if not is_finite(v):
            row.add(f"{name}[{j}]", f"must be finite, got {v!r}", f"{kind}_nonfinite")
            return False
    return True


def _saliency(row: _Row, duration: float | None) -> None:
    ids, scores = row.data.get("relevant_clip_ids"), row.data.get("saliency_scores")
    if ids is None and scores is None:
        return
    if ids is None or scores is None:
        row.add("saliency_scores", "relevant_clip_ids and saliency_scores go together",
                "saliency_pair")  # fmt: skip
        return
    if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores):
        n_ids = len(ids) if isinstance(ids, list) else type(ids).__name__
        n_sc = len(scores) if isinstance(scores, list) else type(scores).__name__
        row.add("saliency_scores", f"needs one entry per relevant_clip_ids ({n_sc} scores for "
                f"{n_ids} clip ids)", "saliency_length")  # fmt: skip
        return
    if len(ids) > MAX_CLIPS:
        row.add("relevant_clip_ids", f"{len(ids):,} entries (limit {MAX_CLIPS:,})", "clips_many")
        return
    n_clips = int(duration / CLIP_SECONDS) if duration is not None else None
    seen: set[int] = set()
    for i, clip in enumerate(ids):
        name = f"relevant_clip_ids[{i}]"
        if isinstance(clip, bool) or not isinstance(clip, int) or clip < 0:
            row.add(name, f"must be a clip index >= 0, got {clip!r:.40}", "clip_id_type")
        elif n_clips is not None and clip >= n_clips:
            row.add(name, f"clip {clip} is past the video: duration {duration:g} s has "
                    f"{n_clips} clips of {CLIP_SECONDS:g} s", "clip_id_range")  # fmt: skip
        elif clip in seen:
            row.add(name, f"clip {clip} listed twice", "clip_id_duplicate")
        seen.add(clip)
    widths = set()
    for i, triple in enumerate(scores):
        if _numbers(row, f"saliency_scores[{i}]", triple, "saliency"):
            widths.add(len(triple))
    if len(widths) > 1 or 0 in widths:
        row.add("saliency_scores", f"every clip needs the same (non-zero) number of "
                f"annotator scores, got {sorted(widths)}", "saliency_width")  # fmt: skip


def _labels(row: _Row) -> None:
    label, match = row.data.get("label"), row.data.get("match")
    if label is not None:
        if not isinstance(label, list) or not label:
            row.add("label", f"must be a non-empty list, one entry per clip, got "
                    f"{str(label)[:60]}", "label_type")  # fmt: skip
        elif len(label) > MAX_CLIPS:
            row.add("label", f"{len(label):,} clips (limit {MAX_CLIPS:,})", "clips_many")
        else:
            widths = set()
            for i, entry in enumerate(label):
                entry = entry if isinstance(entry, list) else [entry]
                if not _numbers(row, f"label[{i}]", entry, "label"):
                    break
                widths.add(len(entry))
            if len(widths) > 1 or 0 in widths:
                row.add("label", f"every clip needs the same (non-zero) number of scores, "
                        f"got {sorted(widths)}", "label_width")  # fmt: skip
    if match is not None and _numbers(row, "match", match, "match"):
        bad = [m for m in match if m not in (-1, 0, 1)]
        if bad:
            row.add("match", f"values must be -1, 0 or 1, got {bad[0]!r}", "match_value")
        elif isinstance(label, list) and len(match) != len(label):
            row.add("match", f"{len(match)} values for {len(label)} label clips",
                    "match_length")  # fmt: skip


def _extras(row: _Row, duration: float | None) -> None:
    domain = row.data.get("domain")
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        row.add("domain", f"must be a non-empty string, got {domain!r:.40}", "domain_type")
    fps = row.data.get("fps")
    if fps is None:
        return
    if not is_finite(fps) or fps <= 0:
        row.add("fps", f"must be a positive number of clips per second, got {fps!r:.40}",
                "fps_type")  # fmt: skip
        return
    label = row.data.get("label")
    if isinstance(label, list) and label and duration is not None:
        expected = duration * fps
        if abs(expected - len(label)) > 1:
            row.add("fps", f"duration x fps = {expected:.1f} clips but there are {len(label)} "
                    "per-clip labels ('fps' is read as clips per second, not the video's "
                    "native frame rate)", "fps_labels", WARNING)  # fmt: skip


def check_row(data: Any, where: str, need: Requirements) -> tuple[AnnoRow | None, list[Problem]]:
    """Check one parsed line. Returns the row (None when it has no usable qid) and problems."""
    if not isinstance(data, dict):
        problem = Problem(where, "", f"expected a JSON object, got {type(data).__name__}",
                          ERROR, "not_object")  # fmt: skip
        return None, [problem]
    row = _Row(where, data)
    row.qid = _id(row, "qid", required=True)
    vid = _id(row, "vid", need.vid)
    _query(row, need.query)
    duration = _duration(row)
    _windows(row, duration)
    _saliency(row, duration)
    _labels(row)
    _extras(row, duration)
    out = None if row.qid is None else AnnoRow(where, data, row.qid, vid)
    return out, row.problems


def check_rows(
    located: Iterable[tuple[str, Any]], need: Requirements | None = None
) -> tuple[list[AnnoRow], list[Problem]]:
    """Check every row and the file-level rules (duplicate qids, vid types, per-vid fps).

    Returns:
        (rows with a usable qid, every problem in file order).
    """
    need = need or Requirements()
    rows, problems = [], []
    first_at: dict[str, str] = {}
    vid_types: dict[type, list[str]] = {}
    vid_fps: dict[str, tuple[float, str]] = {}
    for where, data in located:
        row, found = check_row(data, where, need)
        problems += found
        if row is None:
            continue
        if row.qid in first_at:
            problems.append(
                Problem(
                    where,
                    "qid",
                    f"{row.qid!r} already used at {first_at[row.qid]}",
                    ERROR,
                    "duplicate_qid",
                    row.qid,
                )
            )
            continue  # fmt: skip
        first_at[row.qid] = where
        rows.append(row)
        if row.vid is not None:
            vid_types.setdefault(type(data["vid"]), []).append(where)
            fps = data.get("fps")
            if is_finite(fps) and fps > 0:
                seen = vid_fps.setdefault(row.vid, (float(fps), where))
                if abs(seen[0] - fps) > 1e-9 * max(1.0, fps):
                    problems.append(Problem(where, "fps", f"{fps!r} for video {row.vid!r}, "
                                            f"which has fps {seen[0]!r} at {seen[1]}", ERROR,
                                            "fps_disagree", row.qid))  # fmt: skip
    if len(vid_types) > 1:
        ints, strs = vid_types.get(int, []), vid_types.get(str, [])
        problems.append(Problem(ints[0], "vid", f"video ids are integers on {len(ints)} lines "
                                f"and strings on {len(strs)} (first string at {strs[0]}); "
                                "they are compared as text", WARNING, "vid_types"))  # fmt: skip
    return rows, problems
