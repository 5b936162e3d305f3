"""The common way every benchmark reports a figure: `report(...)`.

Each call prints one human-readable line and, when the environment variable
`R2_BENCH_RECORDS` names a file (set by `benchmarks/collect.py`, i.e. `make bench`), appends
the figure to it as one JSON object per line. A figure carries its anchor (the original
implementation or the physical limit) measured in the same run, and the ratio to it, so the
table `collect.py` writes never compares numbers from different runs.

`quick()` is true under `BENCH_QUICK=1`: scripts then use smaller sizes / fewer repeats and
their figures are marked as quick-mode figures.

Every script stays runnable alone (`python benchmarks/loader.py`): without the environment
variable it only prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

RECORDS_ENV = "R2_BENCH_RECORDS"  # path of the JSON-lines file collecting the figures
QUICK_ENV = "BENCH_QUICK"  # "1": quick mode (smaller sizes, fewer repeats)


def quick() -> bool:
    """True when the benchmarks run in quick mode (`BENCH_QUICK=1`)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0", "false", "no")


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def report(
    figure: str,
    value: float | None,
    unit: str,
    *,
    anchor: str | None = None,
    anchor_value: float | None = None,
    ratio: float | None = None,
    better: str = "higher",
    note: str = "",
    script: str | None = None,
) -> dict[str, Any]:
    """Print one figure and record it (see the module doc).

    Args:
        figure: what was measured, e.g. "loader, no preload, cold, 2 threads".
        value: the measurement, in `unit`; None when it could not be measured.
        unit: e.g. "samples/s", "GB/s", "s", "MB".
        anchor: what the figure is compared with, e.g. "memcpy of the same bytes".
        anchor_value: the anchor's measurement in the same run, same unit.
        ratio: value / anchor_value unless given (e.g. when the anchor's unit differs).
        better: "higher" or "lower" (how to read the ratio).
        note: one short remark (sizes, conditions).
        script: the benchmark's file name (default: the running script's).

    Returns:
        The record (also appended to `$R2_BENCH_RECORDS` when set).
    """
    value, anchor_value = _finite(value), _finite(anchor_value)
    if ratio is None and value is not None and anchor_value:
        ratio = value / anchor_value
    ratio = _finite(ratio)
    record = {
        "script": script or os.path.basename(sys.argv[0]),
        "figure": figure,
        "value": value,
        "unit": unit,
        "anchor": anchor,
        "anchor_value": anchor_value,
        "ratio": ratio,
        "better": better,
        "note": note,
        "quick": quick(),
    }
    line = f"{figure}: {_fmt(value)} {unit}"
    if anchor is not None:
        line += f"  | {anchor}: {_fmt(anchor_value)} {unit}, ratio {_fmt(ratio)}"
    if note:
        line += f"  ({note})"
    print(line, flush=True)
    path = os.environ.get(RECORDS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False, default=_nan_to_none) + "\n")
    return record


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _nan_to_none(obj: Any) -> Any:  # pragma: no cover - only non-JSON types reach here
    return str(obj)
