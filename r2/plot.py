"""Plot one prediction: saliency over time, top moments, ground truth and a frame strip.

The figure has up to three rows: the saliency curve (y-axis scaled to the data, the best
moment shaded, annotated windows hatched in green and annotated clip scores as grey steps
when known), one lane per top moment (label inside the frame), and a strip of the top
moments' frames (a frame at each moment's middle, when the video can be read). The title
names the video and its duration. The file is written atomically (r2.files).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from r2.errors import UsageError

FIGURE_WIDTH_IN = 10.0  # inches
CURVE_HEIGHT_IN, LANE_HEIGHT_IN, STRIP_HEIGHT_IN = 2.6, 0.28, 1.5  # inches
DPI = 120
PLOT_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")
Y_MARGIN = 0.08  # of the data range, above and below the curve


def check_plot_path(path: str | Path) -> Path:
    """Refuse a plot path whose format is not supported (UsageError, one line)."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise UsageError(
            f"{path}: unsupported plot format {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(PLOT_FORMATS)}"
        )
    return path


def format_duration(seconds: float) -> str:
    """150.0 -> "2:30 (150.0 s)"."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{clock} ({seconds:.1f} s)"


def _y_limits(values: list[np.ndarray]) -> tuple[float, float]:
    data = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values if len(v)])
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 1.0)
    pad = max(hi - lo, 0.05) * Y_MARGIN
    return lo - pad, hi + pad


def _curve(ax, prediction, moments, truth) -> None:
    saliency = np.asarray(prediction.saliency, dtype=np.float64)
    clip_s = 1.0 / prediction.fps
    centres = (np.arange(len(saliency)) + 0.5) * clip_s  # seconds
    lo, hi = _y_limits([saliency])
    for i, (start, end) in enumerate(truth.windows if truth else []):
        ax.axvspan(
            start,
            end,
            facecolor="none",
            edgecolor="tab:green",
            hatch="///",
            lw=0,
            alpha=0.6,
            label="ground truth" if i == 0 else None,
        )
    if truth and truth.clip_saliency:  # scores in [0, 1], drawn over the prediction's range
        labels = np.array([truth.clip_saliency.get(i, 0.0) for i in range(len(saliency))])
        ax.step(
            centres,
            lo + labels * (hi - lo),
            where="mid",
            color="0.55",
            lw=1.0,
            label="annotated score (scaled)",
        )
    if moments:
        ax.axvspan(
            moments[0].start,
            moments[0].end,
            color="tab:orange",
            alpha=0.25,
            lw=0,
            label=f"best moment ({moments[0].score:.2f})",
        )
    ax.plot(centres, saliency, color="tab:blue", lw=1.6, marker="o", ms=2.5, label="saliency")
    ax.set_ylim(lo, hi)
    ax.set_ylabel("saliency")
    ax.legend(loc="upper right", fontsize=7, framealpha=0.85)


def _lanes(ax, moments, duration: float) -> None:
    for rank, m in enumerate(moments):  # one lane per moment, best on top
        y = len(moments) - rank
        ax.barh(
            y,
            m.end - m.start,
            left=m.start,
            height=0.7,
            color="tab:orange",
            alpha=0.3 + 0.7 * m.score / max(moments[0].score, 1e-9),
        )
        label = f"#{rank + 1}  {m.start:.1f}-{m.end:.1f} s  {m.score:.2f}"
        if m.end < 0.7 * duration:  # keep the label inside the frame: after the bar,
            x, text, ha = m.end, f" {label}", "left"
        elif m.start > 0.3 * duration:  # before it,
            x, text, ha = m.start, f"{label} ", "right"
        else:  # or on it
            x, text, ha = m.start, f" {label}", "left"
        ax.text(x, y, text, ha=ha, va="center", fontsize=7, clip_on=True)
    ax.set_yticks([])
    ax.set_ylim(0.4, max(len(moments), 1) + 0.6)
    ax.set_ylabel("top", fontsize=8)


def _strip(ax, moments, thumbnails) -> None:
    images = [t for t in thumbnails if t is not None]
    height = max(t.shape[0] for t in images)
    gap = np.full((height, 6, 3), 255, np.uint8)
    tiles, centres, x = [], [], 0
    for rank, thumb in enumerate(thumbnails):
        if thumb is None:
            continue
        tile = np.full((height, thumb.shape[1], 3), 255, np.uint8)
        tile[: thumb.shape[0]] = thumb
        tiles += [tile, gap]
        centres.append((x + thumb.shape[1] / 2, rank))
        x += thumb.shape[1] + gap.shape[1]
    ax.imshow(np.concatenate(tiles[:-1], axis=1))
    for cx, rank in centres:
        m = moments[rank]
        ax.text(
            cx,
            height - 4,
            f"#{rank + 1} {m.start:.0f}-{m.end:.0f} s",
            ha="center",
            va="bottom",
            fontsize=7,
            color="white",
            backgroundcolor="0.2",
        )
    ax.set_axis_off()


def plot_prediction(
    prediction,
    out: str | Path,
    top: int = 5,
    *,
    video_name: str | None = None,
    truth=None,
    thumbnails: list | None = None,
) -> Path:
    """Write a figure of `prediction` (an `r2.api.Prediction`) to `out` (PNG, SVG, PDF, JPEG).

    Args:
        prediction: the result of `R2Predictor.predict`.
        out: the figure path (its folder is created); written atomically.
        top: how many of the best moments to show.
        video_name: named in the title with the duration.
        truth: an `r2.truth.Truth` to draw (annotated windows and clip scores), or None.
        thumbnails: one RGB image (or None) per top moment, from `r2.frames.grab_frames`.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from r2.files import atomic_path

    out = check_plot_path(out)
    moments = prediction.moments[:top]
    strip = bool(thumbnails) and any(t is not None for t in thumbnails)
    heights = [CURVE_HEIGHT_IN, 0.5 + LANE_HEIGHT_IN * max(len(moments), 1)]
    heights += [STRIP_HEIGHT_IN] * strip
    fig = plt.figure(figsize=(FIGURE_WIDTH_IN, sum(heights) + 0.7), dpi=DPI)
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    ax = fig.add_subplot(grid[0])
    lanes = fig.add_subplot(grid[1], sharex=ax)
    _curve(ax, prediction, moments, truth)
    _lanes(lanes, moments, prediction.duration)
    lanes.set_xlim(0, max(prediction.duration, 1.0 / prediction.fps))
    lanes.set_xlabel("time (s)")
    if strip:
        _strip(fig.add_subplot(grid[2]), moments, thumbnails)
    name = f"{video_name}, " if video_name else ""
    title = f"{name}{format_duration(prediction.duration)}\n" + "\n".join(
        textwrap.wrap(repr(prediction.query), 90)
    )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lower().lstrip(".").replace("jpg", "jpeg"))
    plt.close(fig)
    return out
