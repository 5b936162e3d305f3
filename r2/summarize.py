"""Video summarization made real: `r2 summarize VIDEO [--query Q] --budget 15% --out s.mp4`.

1. Scores: the checkpoint's saliency of every clip for the query (`--query`; for highlight
   checkpoints without one, the checkpoint's generic query: an official TVSum/YouTube
   domain's name, else the video's title taken from its file name, as the released
   pipeline asks the title).
2. Segmentation: kernel temporal segmentation (KTS, Potapov et al. 2014, the change points
   the TVSum protocol uses) on the clips' CLIP features (last layer's CLS token,
   L2-normalised, linear kernel): the split minimising the within-segment scatter for each
   number of segments m (dynamic programming, segments of 1 to `MAX_SEGMENT_S` seconds),
   m chosen by KTS's penalty `vmax·m/(2T)·(log(T/m)+1)` with vmax = 1 (`cpd_auto`).
   Segments are whole clips (1/fps seconds each); when the budget is shorter than every
   segment, single clips are the segments.
3. Selection: the TVSum protocol's 0/1 knapsack: value = a segment's mean saliency,
   weight = its length in clips, capacity = floor(budget × T) clips; the best total value
   that fits (exact dynamic programming).
4. Output: the selected segments in time order, re-encoded with PyAV (H.264 + AAC, audio
   kept when the video has it, display rotation kept), written atomically.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2.errors import UsageError

MAX_SEGMENT_S = 8.0  # seconds: KTS segments are at most this long (shots: a few seconds)
MAX_SEGMENTS = 600  # numbers of segments tried by KTS (bounds time on very long videos)
KTS_VMAX = 1.0


@dataclass(frozen=True)
class Segment:
    """Clips [first, stop) and their mean saliency; `selected` when in the summary."""

    first: int
    stop: int
    score: float
    selected: bool = False

    def seconds(self, fps: float, duration: float) -> tuple[float, float]:
        return self.first / fps, min(self.stop / fps, duration)


def parse_budget(text: str, duration: float) -> float:
    """ "15%" (of the duration) or "30s" / "30" (seconds) -> seconds."""
    value = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|s)?", value)
    if not match:
        raise UsageError(f"--budget {text!r}: give a percentage (15%) or seconds (30s)")
    number = float(match.group(1))
    seconds = duration * number / 100 if match.group(2) == "%" else number
    if number <= 0 or (match.group(2) == "%" and number > 100):
        raise UsageError(f"--budget {text!r}: must be in (0, 100]% or a positive duration")
    return min(seconds, duration)


def kts(features: np.ndarray, max_len: int, vmax: float = KTS_VMAX) -> list[tuple[int, int]]:
    """Kernel temporal segmentation of (T, D) features into [(first, stop), ...]."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    max_len = max(1, min(max_len, n))
    prefix = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # (T+1, D)
    sq = np.concatenate([[0.0], np.cumsum((x * x).sum(1))])
    cost = np.full((max_len + 1, n + 1), np.inf)  # cost[l, j]: scatter of clips j-l..j-1
    for length in range(1, max_len + 1):
        diff = prefix[length:] - prefix[:-length]
        cost[length, length:] = sq[length:] - sq[:-length] - (diff * diff).sum(1) / length
    fewest = math.ceil(n / max_len)
    most = min(n, max(fewest, MAX_SEGMENTS))
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((most + 1, n + 1), np.int32)
    totals = np.full(most + 1, np.inf)
    for m in range(1, most + 1):
        step = np.full(n + 1, np.inf)
        for length in range(1, max_len + 1):
            cand = np.full(n + 1, np.inf)
            cand[length:] = best[:-length] + cost[length, length:]
            better = cand < step
            step[better], choice[m, better] = cand[better], length
        best = step
        totals[m] = best[n]
    changes = np.arange(most + 1) - 1.0  # m segments = m - 1 change points
    with np.errstate(divide="ignore", invalid="ignore"):
        penalty = np.where(changes > 0, vmax * changes / (2 * n) * (np.log(n / changes) + 1), 0)
    m = int(np.argmin(totals / n + penalty))
    bounds, j = [], n
    for k in range(m, 0, -1):
        length = int(choice[k, j])
        bounds.append((j - length, j))
        j -= length
    return bounds[::-1]


def knapsack(values: list[float], weights: list[int], capacity: int) -> list[int]:
    """Indices of the items of largest total value with total weight <= capacity (0/1)."""
    n = len(values)
    table = np.zeros((n + 1, capacity + 1))
    for i in range(1, n + 1):
        w, v = weights[i - 1], values[i - 1]
        table[i] = table[i - 1]
        if w <= capacity:
            table[i, w:] = np.maximum(table[i - 1, w:], table[i - 1, : capacity + 1 - w] + v)
    chosen, c = [], capacity
    for i in range(n, 0, -1):
        if table[i, c] != table[i - 1, c]:
            chosen.append(i - 1)
            c -= weights[i - 1]
    return chosen[::-1]


def select_segments(saliency, features, fps: float, budget_s: float) -> list[Segment]:
    """KTS segments of the video with the knapsack's choice under `budget_s` seconds."""
    saliency = np.asarray(saliency, dtype=np.float64)
    bounds = kts(features, max(1, round(MAX_SEGMENT_S * fps)))
    scores = [float(saliency[a:b].mean()) for a, b in bounds]
    capacity = math.floor(budget_s * fps + 1e-9)
    if capacity < 1:
        raise UsageError(
            f"--budget of {budget_s:.2f} s is shorter than one clip "
            f"({1 / fps:.1f} s); give a larger budget"
        )
    if capacity < min(b - a for a, b in bounds):  # no segment fits: single clips instead
        bounds = [(i, i + 1) for i in range(len(saliency))]
        scores = [float(v) for v in saliency]
    values = [s + 1e-9 for s in scores]  # ties (e.g. all 0): fill the budget rather than not
    chosen = set(knapsack(values, [b - a for a, b in bounds], capacity))
    pairs = enumerate(zip(bounds, scores, strict=True))
    return [Segment(a, b, s, i in chosen) for i, ((a, b), s) in pairs]


def generic_query(meta: dict, video: Path) -> str | None:
    """The query a highlight checkpoint is asked without --query; None for moment retrieval."""
    if meta.get("generic_query"):
        return str(meta["generic_query"])
    if (meta.get("preset") or {}).get("grounding", True):
        return None
    return " ".join(video.stem.replace("_", " ").replace("-", " ").split()) or video.stem


def merged_intervals(segments: list[Segment], fps: float, duration: float):
    """Selected segments as [(start_s, end_s)], adjacent ones joined, in time order."""
    out: list[list[float]] = []
    for seg in segments:
        if not seg.selected:
            continue
        start, end = seg.seconds(fps, duration)
        if out and abs(out[-1][1] - start) < 1e-9:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def summary_dict(video: Path, query: str, budget_s: float, pred, segments) -> dict:
    """The `--json` of r2 summarize (times in ms, scores to 4 decimals)."""
    from r2.export import ms

    fps, duration = pred.fps, pred.duration
    return {
        "video": str(video),
        "query": query,
        "duration": ms(duration),
        "fps": float(fps),
        "budget": ms(budget_s),
        "segments": [
            {
                "start": ms(s.seconds(fps, duration)[0]),
                "end": ms(s.seconds(fps, duration)[1]),
                "score": round(s.score, 4),
                "selected": s.selected,
            }
            for s in segments
        ],
        "summary": [[ms(a), ms(b)] for a, b in merged_intervals(segments, fps, duration)],
    }
