"""What `r2 predict` writes: the JSON result file, WebVTT chapters and batch result rows.

JSON (`r2 predict VIDEO Q... --json out.json`): a list with one object per query, in the
order given::

    {"query": str,            # as typed
     "video": str,            # the path given
     "duration": float,       # seconds the prediction covers (ms precision)
     "fps": float,            # clips per second; clip i covers [i/fps, (i+1)/fps) seconds
     "moments": [[start_s, end_s, score], ...],   # best first; seconds (ms), score in [0, 1]
     "saliency": [float, ...],                    # one per clip, in [0, 1] (4 decimals)
     "truncated": bool}       # the query was cut to CLIP's 77-token context

Times are rounded to milliseconds, scores to 4 decimals. Batch rows (`--queries FILE --out
results.jsonl`) use the QVHighlights submission keys (`qid`, `query`, `vid`,
`pred_relevant_windows` = moments, `pred_saliency_scores` = saliency) plus `duration`,
`fps`, `truncated` and `timing` (seconds: `encode` = the video's share of the CLIP
forward passes, `predict` = this query's share of the R² forward pass and post-processing).

WebVTT (`--chapters out.vtt`): one cue per top moment, in time order (as players require),
labelled "#rank query (score)"; players load it as a chapters or captions track.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

TIME_DECIMALS = 3  # milliseconds
SCORE_DECIMALS = 4


def ms(seconds: float) -> float:
    """Seconds rounded to milliseconds."""
    return round(float(seconds), TIME_DECIMALS)


def moments_list(prediction) -> list[list[float]]:
    """[[start_s, end_s, score], ...] rounded (ms, 4 decimals)."""
    return [
        [ms(m.start), ms(m.end), round(float(m.score), SCORE_DECIMALS)] for m in prediction.moments
    ]


def saliency_list(prediction) -> list[float]:
    return [round(float(s), SCORE_DECIMALS) for s in prediction.saliency]


def prediction_dict(prediction, video: str) -> dict:
    """One query's JSON object (schema in the module docstring)."""
    return {
        "query": prediction.query,
        "video": str(video),
        "duration": ms(prediction.duration),
        "fps": float(prediction.fps),
        "moments": moments_list(prediction),
        "saliency": saliency_list(prediction),
        "truncated": bool(getattr(prediction, "truncated", False)),
    }


def predictions_json(predictions: Sequence, video: str) -> str:
    """The `--json` file's text."""
    return json.dumps([prediction_dict(p, video) for p in predictions], indent=1) + "\n"


def batch_row(prediction, qid, vid: str, encode_s: float, predict_s: float) -> dict:
    """One results.jsonl row: submission keys + duration, fps, truncated, timing."""
    return {
        "qid": qid,
        "query": prediction.query,
        "vid": vid,
        "pred_relevant_windows": moments_list(prediction),
        "pred_saliency_scores": saliency_list(prediction),
        "duration": ms(prediction.duration),
        "fps": float(prediction.fps),
        "truncated": bool(getattr(prediction, "truncated", False)),
        "timing": {"encode": round(encode_s, 4), "predict": round(predict_s, 4)},
    }


def vtt_time(seconds: float) -> str:
    """WebVTT timestamp HH:MM:SS.mmm."""
    total = max(0, round(float(seconds) * 1000))
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _cue_text(text: str) -> str:
    """Cue payload: one line, no "-->", WebVTT's special characters escaped."""
    text = " ".join(text.split()).replace("-->", "->")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webvtt_chapters(predictions: Sequence, top: int) -> str:
    """WebVTT with one cue per top moment of each prediction, sorted by start time."""
    cues = []
    for p in predictions:
        for rank, m in enumerate(p.moments[:top], 1):
            label = f"#{rank} {p.query} ({m.score:.2f})"
            cues.append((ms(m.start), ms(m.end), label))
    cues.sort(key=lambda c: (c[0], c[1]))
    lines = ["WEBVTT", ""]
    for i, (start, end, label) in enumerate(cues, 1):
        if end <= start:
            continue
        lines += [str(i), f"{vtt_time(start)} --> {vtt_time(end)}", _cue_text(label), ""]
    return "\n".join(lines)
