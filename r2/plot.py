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

    moments = prediction.moments[:top]
    fig, (ax, lanes) = plt.subplots(
        2, 1, figsize=FIGURE_SIZE_IN, dpi=DPI, sharex=True,
        gridspec_kw={"height_ratios": [3, 1 + 0.25 * len(moments)]},
    )  # fmt: skip
    if moments:  # the best moment shaded behind the curve
        ax.axvspan(moments[0].start, moments[0].end, color="tab:orange", alpha=0.25, lw=0,
                   label=f"best moment ({moments[0].score:.2f})")  # fmt: skip
    ax.plot(centres, saliency, color="tab:blue", lw=1.6, marker="o", ms=2.5, label="saliency")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("saliency")
    ax.set_title("\n".join(textwrap.wrap(prediction.query, 90)), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    for rank, m in enumerate(moments):  # one lane per moment, best on top
        y = len(moments) - rank
        lanes.barh(y, m.end - m.start, left=m.start, height=0.7, color="tab:orange",
                   alpha=0.3 + 0.7 * m.score / max(moments[0].score, 1e-9))  # fmt: skip
        lanes.text(m.end, y, f" #{rank + 1}  {m.score:.2f}", va="center", fontsize=7)
    lanes.set_yticks([])
    lanes.set_ylim(0.4, len(moments) + 0.6)
    lanes.set_ylabel("top moments", fontsize=8)
    lanes.set_xlim(0, max(prediction.duration, clip_s))
    lanes.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
