"""What every converter shares: locating release files, the repair log, writing the splits.

A converter turns one benchmark's original release into one QVHighlights-schema JSON Lines
file per split, `{out}/{dataset}_{split}.jsonl`, plus `{out}/{dataset}_report.json` (counts,
repairs, notes). Repairs of known defects are never silent: each is logged in a
:class:`RepairLog` (defect, action fixed / clamped / dropped, count, first line numbers)
that the command prints as a table. Every written file is re-read by the strict checker
(`check.py`): a converter never writes a row `r2 train` would refuse.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2.errors import UsageError
from r2.files import atomic_write, ensure_writable_dir, write_text_atomic

from .jsonl import MAX_ARRAY_FILE_BYTES, JsonInputError, loads

FIRST_LINES = 5  # line numbers kept per repair kind
ACTIONS = ("fixed", "clamped", "dropped")


class ReleaseError(UsageError, ValueError):
    """A release file is missing or not in the documented format (names the file)."""


def find_files(sources: Sequence[str | os.PathLike], names: Iterable[str]) -> dict[str, Path]:
    """Map each wanted file name to a path: given directly, or inside a given folder.

    Raises:
        ReleaseError: a source does not exist.
    """
    wanted, found = set(names), {}
    for src in map(Path, sources):
        if src.is_dir():
            for name in wanted:
                if (src / name).is_file():
                    found.setdefault(name, src / name)
        elif src.is_file():
            if src.name in wanted:
                found.setdefault(src.name, src)
        else:
            raise ReleaseError(f"{src}: no such file or folder")
    return found


def load_release_json(path: Path) -> Any:
    """One whole-file JSON document of a release, size-bounded and strictly parsed.

    Raises:
        ReleaseError: the file is missing, larger than `MAX_ARRAY_FILE_BYTES` or not JSON.
    """
    if not path.is_file():
        raise ReleaseError(f"{path}: the release's annotation file is missing")
    if path.stat().st_size > MAX_ARRAY_FILE_BYTES:
        raise ReleaseError(f"{path}: larger than {MAX_ARRAY_FILE_BYTES:,} bytes")
    try:
        return loads(path.read_bytes(), str(path))
    except JsonInputError as exc:
        raise ReleaseError(str(exc)) from None


def require(found: dict[str, Path], names: Iterable[str], sources: Sequence) -> list[Path]:
    """The paths of `names`; a ReleaseError listing every one that is missing."""
    missing = [n for n in names if n not in found]
    if missing:
        where = ", ".join(str(s) for s in sources)
        raise ReleaseError(f"release file(s) {', '.join(missing)} not found in {where}")
    return [found[n] for n in names]


@dataclass
class Repair:
    """One class of repaired defect."""

    split: str
    defect: str
    action: str
    count: int = 0
    first: list[str] = field(default_factory=list)


class RepairLog:
    """Counts of repaired defects per (split, defect, action), with the first locations."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], Repair] = {}

    def add(self, split: str, defect: str, action: str, where: str) -> None:
        """Record one repair of `defect` at `where` ("file:line" or an id)."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        item = self._items.setdefault((split, defect, action), Repair(split, defect, action))
        item.count += 1
        if len(item.first) < FIRST_LINES:
            item.first.append(where)

    def items(self) -> list[Repair]:
        return list(self._items.values())

    def count(self, defect: str, action: str | None = None, split: str | None = None) -> int:
        """How many repairs of `defect` (optionally only one action / split)."""
        return sum(r.count for r in self._items.values() if r.defect == defect
                   and action in (None, r.action) and split in (None, r.split))  # fmt: skip

    def table(self) -> str:
        """A fixed-width table: split, defect, action, count, first locations."""
        if not self._items:
            return "repairs: none needed"
        rows = [("split", "defect", "action", "count", "first")]
        rows += [(r.split, r.defect, r.action, str(r.count), ", ".join(r.first))
                 for r in self._items.values()]  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  "
            + row[4] for row in rows
        )  # fmt: skip


@dataclass
class ConvertResult:
    """What a converter wrote."""

    dataset: str
    files: dict[str, Path]  # split -> jsonl
    rows: dict[str, int]  # split -> rows written
    repairs: RepairLog
    notes: list[str] = field(default_factory=list)  # other facts worth telling
    report: Path | None = None  # {dataset}_report.json

    def summary(self) -> str:
        """Human summary: files and row counts, notes, the repair table."""
        lines = [f"{self.dataset}: wrote " + ", ".join(
            f"{split} {self.rows[split]:,} rows -> {path}" for split, path in self.files.items()
        )]  # fmt: skip
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.repairs.table())
        return "\n".join(lines)


def seconds(value: float, digits: int = 6) -> float:
    """Round a time to `digits` decimals (kills float noise such as 7.619047619047619e0)."""
    return round(float(value), digits)


def clamp_window(
    start: float, end: float, duration: float, log: RepairLog, split: str, where: str
) -> list[float] | None:
    """The release rule for a window: dropped if start > end or wholly outside the video,
    end clamped to the duration (start to 0); every repair logged."""
    if start > end:
        log.add(split, "start > end", "dropped", where)
        return None
    if end <= 0 or start >= duration:
        log.add(split, "window outside the video", "dropped", where)
        return None
    if start < 0:
        log.add(split, "window starts before 0", "clamped", where)
        start = 0.0
    if end > duration:
        log.add(split, "window ends after the video", "clamped", where)
        end = duration
    return [start, end]


def _check_written(path: Path) -> None:
    from .check import check_file

    report = check_file(path)
    if report.errors:  # a converter bug, not a user error
        raise RuntimeError(f"converted file fails the checker: {report.error_message()}")


def write_splits(
    dataset: str, out: str | os.PathLike, splits: dict[str, list[dict[str, Any]]],
    result: ConvertResult,
) -> ConvertResult:  # fmt: skip
    """Write `{out}/{dataset}_{split}.jsonl` atomically (+ the report) and check them."""
    out = ensure_writable_dir(out)
    for split, rows in splits.items():
        path = out / f"{dataset}_{split}.jsonl"
        with atomic_write(path) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        _check_written(path)
        result.files[split], result.rows[split] = path, len(rows)
    report = {
        "dataset": dataset,
        "files": {s: str(p) for s, p in result.files.items()},
        "rows": result.rows,
        "notes": result.notes,
        "repairs": [r.__dict__ for r in result.repairs.items()],
    }
    result.report = write_text_atomic(out / f"{dataset}_report.json",
                                      json.dumps(report, indent=1) + "\n")  # fmt: skip
    return result


def finite_or_none(value: Any) -> float | None:
    """float(value) when it is a finite number, else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
