"""Readable text tables of a metrics dict (what ``r2 eval`` prints)."""

from __future__ import annotations

from r2.evaluate.highlights import TVSUM_DOMAINS, YOUTUBE_DOMAINS

TITLES = {
    "qvhighlights": "QVHighlights",
    "charades": "Charades-STA",
    "tacos": "TACoS",
    "ego4d": "Ego4D-NLQ",
    "youtube": "YouTube Highlights",
    "tvsum": "TVSum",
}


def _table(columns: list[str], rows: list[tuple[str, list[float | None]]]) -> list[str]:
    """Right-aligned columns; a row label column first; None prints as '-'."""
    label_w = max([len(label) for label, _ in rows] + [0])
    widths = [max(len(c), 6) for c in columns]
    lines = [
        "  " + " " * label_w + "".join(f"  {c:>{w}}" for c, w in zip(columns, widths, strict=True))
    ]
    for label, values in rows:
        cells = [("-" if v is None else f"{v:.2f}") for v in values]
        lines.append(
            "  "
            + f"{label:<{label_w}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return lines


def _qvh(m: dict[str, float]) -> list[str]:
    lines = []
    if "MR-full-mAP" in m:
        lines.append("Moment retrieval (paper summary: full range)")
        cols = ["R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP"]
        lines += _table(cols, [("", [m.get(c) for c in cols])])
        lines.append("Moment retrieval by GT window length")
        cols = ["mAP", "mAP@0.5", "mAP@0.75", "R1@0.5", "R1@0.7"]
        keys = ["mAP", "mAP@0.5", "mAP@0.75", "R1@0.5", "R1@0.7"]
        rows = [
            (r, [m.get(f"MR-{r}-{k}") for k in keys]) for r in ("full", "short", "middle", "long")
        ]
        lines += _table(cols, rows)
        extras = ["R1@0.3", "R5@0.3", "R5@0.5", "R5@0.7", "mIoU"]
        lines.append("Extras")
        lines += _table(extras, [("", [m.get(f"MR-full-{k}") for k in extras])])
    words = [
        k[len("MR-words-") : -len("-mAP")]
        for k in m
        if k.startswith("MR-words-") and k.endswith("-mAP")
    ]
    if words:
        lines.append("MR mAP by query length in words (paper Table 6)")
        lines += _table(words, [("mAP", [m[f"MR-words-{w}-mAP"] for w in words])])
        lines.append("  queries: " + ", ".join(f"{w}: {m[f'MR-words-{w}-n']}" for w in words))
    if "HL-min-VeryGood-mAP" in m:
        lines.append("Highlight detection (paper reports >= VeryGood)")
        levels = ("Fair", "Good", "VeryGood")
        lines += _table(
            ["mAP", "HIT@1"],
            [(lv, [m[f"HL-min-{lv}-mAP"], m[f"HL-min-{lv}-Hit1"]]) for lv in levels],
        )
    return lines


def _grounding(m: dict[str, float]) -> list[str]:
    cols = ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "R5@0.3", "R5@0.5", "R5@0.7"]
    return _table(cols, [("", [m.get(c) for c in cols])])


def _highlights(m: dict[str, float], dataset: str) -> list[str]:
    known = YOUTUBE_DOMAINS if dataset == "youtube" else TVSUM_DOMAINS
    domains = [k[len("mAP-") :] for k in m if k.startswith("mAP-")]
    domains = [d for d in known if d in domains] + [d for d in domains if d not in known]
    label = "top-5 mAP" if dataset == "tvsum" else "mAP"
    return _table([*domains, "Avg"], [(label, [m[f"mAP-{d}"] for d in domains] + [m["mAP"]])])


QVH_TABLE1 = ["R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP", "HD-mAP", "HIT@1"]
GROUNDING_COLUMNS = ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU"]


def _difference(ours: list[float | None], paper: list[float | None]) -> list[float | None]:
    return [None if a is None or b is None else a - b for a, b in zip(ours, paper, strict=True)]


def paper_comparison(metrics: dict[str, float], dataset: str, split: str | None) -> list[str]:
    """This evaluation next to the published R²-Tuning numbers, in the paper's layout
    (Table 1 for QVHighlights test: MR R1@0.5/0.7, mAP@0.5/0.75/Avg, HD >= Very Good mAP and
    HIT@1); empty when the paper reports nothing for this dataset and split."""
    from r2.evaluate.paper import published

    found = published(dataset, split)
    if found is None:
        return []
    table, paper = found
    if dataset == "qvhighlights":
        columns = QVH_TABLE1
    elif dataset in ("youtube", "tvsum"):
        columns = [k for k in paper if k != "mAP"] + ["mAP"]
    else:
        columns = GROUNDING_COLUMNS
    ours = [metrics.get(c) for c in columns]
    published_row = [paper.get(c) for c in columns]
    if dataset == "qvhighlights":  # Table 1: MR (R1, mAP), HD >= Very Good (mAP, HIT@1)
        names = ["MR R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "Avg. mAP", "HD mAP", "HIT@1"]
    else:
        names = [c.removeprefix("mAP-") if c != "mAP" else "Avg." for c in columns]
    title = f"{TITLES.get(dataset, dataset)} {split}: paper {table} layout (R²-Tuning, CLIP B/32)"
    rows = [
        ("R²-Tuning (paper)", published_row),
        ("this evaluation", ours),
        ("difference", _difference(ours, published_row)),
    ]
    return ["", title, *_table(names, rows)]


def format_metrics(metrics: dict[str, float], dataset: str, split: str | None = None) -> str:
    """A multi-line, human-readable report of :func:`r2.evaluate.evaluate`'s result; with
    the split of a benchmark the paper reports, its published numbers beside ours."""
    lines = [f"{TITLES.get(dataset, dataset)}: {metrics.get('n_queries', '?')} queries scored"]
    if dataset == "qvhighlights":
        lines += _qvh(metrics)
    elif dataset in ("youtube", "tvsum"):
        lines += _highlights(metrics, dataset)
    else:
        lines += _grounding(metrics)
    counts = {k: v for k, v in metrics.items() if k.startswith("n_") and k != "n_queries" and v}
    if counts:
        lines.append("Counts: " + ", ".join(f"{k} = {v}" for k, v in counts.items()))
    lines += paper_comparison(metrics, dataset, split)
    return "\n".join(lines)
