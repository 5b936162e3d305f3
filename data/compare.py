"""Agreement of two annotation files as multisets of (video, normalised query, labels).

Used to compare a converter's output with an independent conversion (Lighthouse's unified
files): ids and field order may differ, so rows are compared by content:

- video: `str(vid)`;
- query: Unicode NFC, lower case, whitespace collapsed, trailing full stop removed;
- labels: the windows rounded to 0.1 s (sorted), and the per-clip `label` entries (rounded
  to 0.01) when present.

`matched` counts the rows the two multisets share; agreement = matched / reference rows.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .jsonl import iter_jsonl

EXAMPLES = 5  # unmatched rows quoted per side


def normalise_query(text: Any) -> str:
    """Comparable form of a query (see the module docstring)."""
    if not isinstance(text, str):
        return ""
    text = " ".join(unicodedata.normalize("NFC", text).lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def _windows(value: Any) -> tuple:
    if not isinstance(value, list):
        return ()
    return tuple(sorted((round(float(s), 1), round(float(e), 1)) for s, e in value))


def _label(value: Any) -> tuple:
    if not isinstance(value, list):
        return ()
    return tuple(
        tuple(round(float(x), 2) for x in (v if isinstance(v, list) else [v])) for v in value
    )


def row_key(row: dict[str, Any]) -> tuple:
    """(vid, normalised query, windows, labels) of one row."""
    return (
        str(row.get("vid")),
        normalise_query(row.get("query")),
        _windows(row.get("relevant_windows")),
        _label(row.get("label")),
    )


@dataclass
class Agreement:
    """How many reference rows a converted file reproduces."""

    matched: int
    reference: int
    ours: int
    only_reference: list[tuple] = field(default_factory=list)  # first unmatched keys
    only_ours: list[tuple] = field(default_factory=list)
    n_only_reference: int = 0
    n_only_ours: int = 0

    @property
    def ratio(self) -> float:
        """matched / reference rows (1.0 for an empty reference)."""
        return self.matched / self.reference if self.reference else 1.0

    def __str__(self) -> str:
        return (f"{self.matched:,} of {self.reference:,} reference rows matched "
                f"({100 * self.ratio:.2f} %); {self.n_only_reference:,} only in the reference, "
                f"{self.n_only_ours:,} only in ours")  # fmt: skip


def agreement(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> Agreement:
    """Compare two lists of rows as multisets of :func:`row_key`."""
    a, b = Counter(map(row_key, ours)), Counter(map(row_key, reference))
    only_b, only_a = b - a, a - b
    return Agreement(
        matched=sum((a & b).values()),
        reference=sum(b.values()),
        ours=sum(a.values()),
        only_reference=list(only_b)[:EXAMPLES],
        only_ours=list(only_a)[:EXAMPLES],
        n_only_reference=sum(only_b.values()),
        n_only_ours=sum(only_a.values()),
    )


def compare_files(ours: str | os.PathLike, reference: str | os.PathLike) -> Agreement:
    """:func:`agreement` of two JSON Lines files (bounded reader)."""
    rows = [[v for _, v in iter_jsonl(p, "annotation file")] for p in (ours, reference)]
    return agreement(*rows)
