"""Plot one prediction: the saliency curve over time with the predicted moments shaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

FIGURE_SIZE_IN = (10.0, 3.6)  # inches
DPI = 120


def plot_prediction(prediction, out: str | Path, top: int = 5) -> Path:
    """Write a PNG of `prediction` (an `r2.api.Prediction`) to `out`.

    Args:
        prediction: the result of `R2Predictor.predict`.
        out: the PNG path (its folder is created).
        top: how many of the best moments to shade (darker = higher score).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saliency = np.asarray(prediction.saliency, dtype=np.float64)
    clip_s = 1.0 / prediction.fps
    centres = (np.arange(len(saliency)) + 0.5) * clip_s  # seconds

    fig, ax = plt.subplots(figsize=FIGURE_SIZE_IN, dpi=DPI)
    moments = prediction.moments[:top]
    best = max((m.score for m in moments), default=1.0) or 1.0
    for rank, m in enumerate(moments):
        ax.axvspan(m.start, m.end, color="tab:orange", alpha=0.12 + 0.38 * m.score / best, lw=0)
        ax.text(m.start, 1.02, f"#{rank + 1} {m.score:.2f}", fontsize=7, va="bottom")
    ax.plot(centres, saliency, color="tab:blue", lw=1.6, marker="o", ms=2.5, label="saliency")
    ax.set_xlim(0, max(prediction.duration, clip_s))
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("saliency")
    ax.set_title("\n".join(textwrap.wrap(prediction.query, 90)), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
