"""HTML of the web app's results: moment buttons, an inline SVG saliency curve, a frame strip.

Everything is self-contained (inline SVG, thumbnails as data: URLs): the page loads nothing
from anywhere but the app itself. Every element carrying `data-seek="SECONDS"` seeks the
video player there when clicked (the page script in r2.app). User text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

SVG_W, SVG_H = 760, 170  # pixels
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 40, 10, 10, 24  # pixels
TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
MAX_TICKS = 10
JPEG_QUALITY = 80

CSS = """
.r2-result { margin: 0 0 18px 0; padding: 10px 12px; border: 1px solid #ddd; border-radius: 8px; }
.r2-result h3 { margin: 0 0 6px 0; font-size: 1.05em; }
.r2-meta { color: #666; font-size: 0.85em; margin-bottom: 6px; }
.r2-moments { display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0; }
.r2-seek { cursor: pointer; border: 1px solid #e08a2c; background: #fff4e8; border-radius: 6px;
  padding: 4px 8px; font-size: 0.9em; }
.r2-seek:hover { background: #ffe2c2; }
.r2-curve { width: 100%; height: auto; max-width: 760px; display: block; }
.r2-curve .r2-moment-area { cursor: pointer; }
.r2-frames { display: flex; gap: 8px; overflow-x: auto; margin-top: 6px; }
.r2-frame { margin: 0; cursor: pointer; text-align: center; font-size: 0.8em; color: #444; }
.r2-frame img { height: 90px; border-radius: 4px; display: block; }
.r2-error { color: #b00020; font-weight: 600; }
.r2-ok { color: #1b5e20; }
"""


def clock(seconds: float) -> str:
    """75.5 -> "1:15.5"; 3725 -> "1:02:05"."""
    whole, tenths = divmod(round(float(seconds) * 10), 10)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return text + (f".{tenths}" if tenths and not hours else "")


def jpeg_data_url(image: np.ndarray) -> str:
    """An RGB array as a data: URL (JPEG)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _y_range(series: list[np.ndarray]) -> tuple[float, float]:
    """The y-axis range: the data's, with a margin."""
    data = np.concatenate(series) if sum(len(v) for v in series) else np.zeros(1)
    lo, hi = float(data.min()), float(data.max())
    pad = max(hi - lo, 0.05) * 0.08
    return lo - pad, hi + pad


def _tick_step(duration: float) -> float:
    return next((s for s in TICK_STEPS_S if duration / s <= MAX_TICKS), TICK_STEPS_S[-1])


def curve_svg(pred, truth, uid: str, top: int) -> str:
    """Saliency curve (y scaled to the data), top moments shaded, ground truth hatched."""
    sal = np.asarray(pred.saliency, dtype=np.float64)
    duration = max(float(pred.duration), 1e-6)
    width, height = SVG_W - MARGIN_L - MARGIN_R, SVG_H - MARGIN_T - MARGIN_B
    lo, hi = _y_range([sal])
    gt_sal = None  # annotated scores in [0, 1], drawn over the prediction's range
    if truth is not None and truth.clip_saliency:
        labels = np.array([truth.clip_saliency.get(i, 0.0) for i in range(len(sal))])
        gt_sal = lo + labels * (hi - lo)

    def x(t: float) -> float:
        return MARGIN_L + min(max(t / duration, 0.0), 1.0) * width

    def y(v: float) -> float:
        return MARGIN_T + (1 - (v - lo) / (hi - lo)) * height

    parts = [
        f'<svg class="r2-curve" id="r2-curve-{uid}" viewBox="0 0 {SVG_W} {SVG_H}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="saliency curve">',
        f'<defs><pattern id="r2-hatch-{uid}" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#2e7d32" '
        'stroke-width="2"/></pattern></defs>',
        f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{width}" height="{height}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for s, e in truth.windows if truth is not None else []:
        parts.append(
            f'<rect class="r2-truth" x="{x(s):.1f}" y="{MARGIN_T}" width="{x(e) - x(s):.1f}" '
            f'height="{height}" fill="url(#r2-hatch-{uid})" opacity="0.5">'
            f"<title>ground truth {clock(s)}–{clock(e)}</title></rect>"
        )
    for rank, m in reversed(list(enumerate(pred.moments[:top], 1))):
        opacity = 0.38 if rank == 1 else 0.14
        parts.append(
            f'<rect class="r2-moment-area" data-seek="{m.start:.3f}" x="{x(m.start):.1f}" '
            f'y="{MARGIN_T}" width="{max(x(m.end) - x(m.start), 1):.1f}" height="{height}" '
            f'fill="#f28e2b" opacity="{opacity}"><title>#{rank} {clock(m.start)}–'
            f"{clock(m.end)} ({m.score:.2f})</title></rect>"
        )
    step = 1.0 / pred.fps
    if gt_sal is not None:
        pts = " ".join(
            f"{x(i * step):.1f},{y(v):.1f} {x((i + 1) * step):.1f},{y(v):.1f}"
            for i, v in enumerate(gt_sal)
        )
        parts.append(
            f'<polyline class="r2-truth-saliency" points="{pts}" fill="none" '
            'stroke="#888" stroke-width="1.2"/>'
        )
    pts = " ".join(f"{x((i + 0.5) * step):.1f},{y(v):.1f}" for i, v in enumerate(sal))
    parts.append(
        f'<polyline class="r2-saliency" points="{pts}" fill="none" stroke="#1f77b4" '
        'stroke-width="2"/>'
    )
    parts += _axes(duration, lo, hi, x, y)
    parts.append("</svg>")
    return "".join(parts)


def _axes(duration, lo, hi, x, y) -> list[str]:
    base = SVG_H - MARGIN_B
    out = []
    step = _tick_step(duration)
    for i in range(int(duration // step) + 1):
        t = i * step
        out.append(
            f'<line x1="{x(t):.1f}" y1="{base}" x2="{x(t):.1f}" y2="{base + 4}" stroke="#555"/>'
        )
        out.append(
            f'<text x="{x(t):.1f}" y="{base + 16}" font-size="11" text-anchor="middle" '
            f'fill="#333">{clock(t)}</text>'
        )
    for v in (lo, (lo + hi) / 2, hi):
        out.append(
            f'<text x="{MARGIN_L - 4}" y="{y(v) + 4:.1f}" font-size="10" '
            f'text-anchor="end" fill="#333">{v:.2f}</text>'
        )
    return out


def moment_buttons(pred, top: int) -> str:
    buttons = [
        f'<button class="r2-seek" data-seek="{m.start:.3f}" title="play from {clock(m.start)}">'
        f"#{rank} {clock(m.start)}–{clock(m.end)} · {m.score:.2f}</button>"
        for rank, m in enumerate(pred.moments[:top], 1)
    ]
    return f'<div class="r2-moments">{"".join(buttons) or "no moment found"}</div>'


def frame_strip(pred, thumbs, top: int) -> str:
    figures = []
    for rank, (m, image) in enumerate(zip(pred.moments[:top], thumbs, strict=False), 1):
        if image is None:
            continue
        figures.append(
            f'<figure class="r2-frame" data-seek="{m.start:.3f}"><img alt="moment {rank}" '
            f'src="{jpeg_data_url(image)}"><figcaption>#{rank} {clock(m.start)}</figcaption>'
            "</figure>"
        )
    return f'<div class="r2-frames">{"".join(figures)}</div>'


def answer_html(answer, top: int) -> str:
    """All queries' results of one request."""
    sections = []
    for i, (pred, truth, thumbs) in enumerate(
        zip(answer.predictions, answer.truths, answer.thumbnails, strict=True), 1
    ):
        notes = [f"{answer.video.name}, {clock(pred.duration)}"]
        if truth is not None:
            notes.append(f"ground truth from {html.escape(truth.where)}")
        if pred.truncated:
            notes.append("query cut to CLIP's 77 tokens")
        sections.append(
            f'<section class="r2-result" data-query="{html.escape(pred.query, quote=True)}">'
            f"<h3>{html.escape(pred.query)}</h3>"
            f'<div class="r2-meta">{" · ".join(notes)}</div>'
            f"{moment_buttons(pred, top)}{curve_svg(pred, truth, f'{i}', top)}"
            f"{frame_strip(pred, thumbs, top)}</section>"
        )
    return "".join(sections)


def status_html(message: str, error: bool = False) -> str:
    cls = "r2-error" if error else "r2-ok"
    return f'<div class="{cls}" id="r2-message">{html.escape(message)}</div>'
