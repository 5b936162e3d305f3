"""Per-domain runs (YouTube Highlights, TVSum): their table and their evaluation.

A per-domain run folder (`r2 train --preset youtube|tvsum --domain NAME|all --out OUT`,
r2.train.domains) holds `OUT/domains.json` (the manifest: dataset, domains, split rule) and
one ordinary run folder per domain, `OUT/NAME/` (with the rows it was trained and validated
on, `train.jsonl` / `val.jsonl`). `domain_table` lays the per-domain values out like the
paper's Table 3 (YouTube Highlights mAP) and Table 4 (TVSum top-5 mAP): every domain, the
mean over domains, the published numbers beside them; `evaluate_domains` (`r2 eval
--checkpoint OUT`) scores each domain with its own model on its own rows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r2.errors import UsageError

log = logging.getLogger(__name__)

MANIFEST = "domains.json"  # OUT/domains.json marks a per-domain run folder
MANIFEST_FORMAT = "r2-domain-runs"
TABLE_NAME = "table.json"  # the per-domain table, written as JSON
METRIC_NAMES = {"youtube": "mAP", "tvsum": "top-5 mAP"}
KEY = "mAP"  # the key metric of both datasets in r2's metric names


def is_domain_run(path: str | os.PathLike) -> bool:
    """True when `path` is the folder of a per-domain run."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(run: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a per-domain run folder (UsageError when it is not one)."""
    path = Path(run) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable per-domain run manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise UsageError(f"{path}: not a per-domain run manifest of r2")
    return data


def domain_order(dataset: str, domains) -> list[str]:
    """The paper's column order (Tables 3 and 4), unknown domains after, sorted."""
    from r2.evaluate.highlights import TVSUM_DOMAINS, YOUTUBE_DOMAINS

    known = YOUTUBE_DOMAINS if dataset == "youtube" else TVSUM_DOMAINS
    domains = set(domains)
    return [d for d in known if d in domains] + sorted(domains - set(known))


def domain_table(dataset: str, results: dict[str, dict[str, Any]], split: str = "val") -> dict:
    """The table of per-domain results as JSON-ready data.

    Args:
        dataset: "youtube" or "tvsum".
        results: domain -> {"mAP": value or None, ...any other facts (epochs, counts)}.
        split: the split the values were measured on (the paper reports val).

    Returns:
        {"dataset", "split", "metric", "domains" (ordered: value, paper, difference and the
        given facts), "mean" (over the domains with a value), "complete" (every domain of
        the paper has a value), "paper_mean"}.
    """
    from r2.evaluate.paper import published

    found = published(dataset, split)
    paper = found[1] if found else {}
    rows = {}
    for d in domain_order(dataset, results):
        value, ref = results[d].get(KEY), paper.get(f"mAP-{d}")
        diff = None if value is None or ref is None else round(value - ref, 2)
        rows[d] = {**results[d], KEY: value, "paper": ref, "difference": diff}
    values = [r[KEY] for r in rows.values() if r[KEY] is not None]
    expected = [k.removeprefix("mAP-") for k in paper if k.startswith("mAP-")]
    complete = bool(expected) and all(rows.get(d, {}).get(KEY) is not None for d in expected)
    return {
        "dataset": dataset,
        "split": split,
        "metric": METRIC_NAMES.get(dataset, KEY),
        "table": found[0] if found else None,
        "domains": rows,
        "mean": round(sum(values) / len(values), 2) if values else None,
        "complete": complete,
        "paper_mean": paper.get(KEY),
    }


def format_domain_table(table: dict) -> str:
    """`domain_table` as text in the paper's layout: the published row, this run's, the
    difference; every domain column, then Avg. (only when every domain has a value)."""
    from r2.evaluate.report import TITLES, _table

    rows = table["domains"]
    columns = domain_order(table["dataset"], set(rows) | _paper_domains(table["dataset"]))
    ours = [rows[d][KEY] if d in rows else None for d in columns]
    paper = [rows[d]["paper"] if d in rows else _paper_value(table, d) for d in columns]
    mean = table["mean"] if table["complete"] else None
    ours.append(mean)
    paper.append(table["paper_mean"])
    diff = [None if a is None or b is None else a - b for a, b in zip(ours, paper, strict=True)]
    where = f", paper {table['table']} layout" if table["table"] else ""
    lines = [f"{TITLES.get(table['dataset'], table['dataset'])} {table['split']} "
             f"({table['metric']}, one model per domain{where}; R²-Tuning, CLIP B/32)"]  # fmt: skip
    lines += _table([*columns, "Avg."], [("R²-Tuning (paper)", paper), ("this run", ours),
                                         ("difference", diff)])  # fmt: skip
    if not table["complete"] and table["mean"] is not None:
        lines.append(f"note: mean over the {len([v for v in ours[:-1] if v is not None])} "
                     f"domain(s) with a result: {table['mean']:.2f} (Avg. needs every domain of "
                     "the paper)")  # fmt: skip
    unfinished = [d for d, r in rows.items() if r.get("finished") is False]
    if unfinished:
        lines.append(f"note: not finished (best so far): {', '.join(unfinished)}")
    return "\n".join(lines)


def _paper_domains(dataset: str) -> set[str]:
    from r2.evaluate.paper import published

    found = published(dataset, "val")
    return {k.removeprefix("mAP-") for k in (found[1] if found else {}) if k.startswith("mAP-")}


def _paper_value(table: dict, domain: str) -> float | None:
    from r2.evaluate.paper import published

    found = published(table["dataset"], table["split"])
    return found[1].get(f"mAP-{domain}") if found else None


def write_table(path: Path, table: dict) -> Path:
    """Write the table JSON atomically."""
    from r2.files import write_text_atomic

    return write_text_atomic(path, json.dumps(table, indent=1) + "\n")


@dataclass
class DomainEvalResult:
    """`evaluate_domains`: the table and each domain's outputs."""

    table: dict
    out_dir: Path
    per_domain: dict[str, Any]  # domain -> SplitResult


def _rows_of_domain(anno: Path, domain: str) -> list[str]:
    from r2.data.check import read_annotations

    report = read_annotations(anno, what="evaluation annotations")
    return [json.dumps(r.data) for r in report.rows if r.data.get("domain") == domain]


def evaluate_domains(
    run: str | os.PathLike,
    cache: str | os.PathLike,
    anno: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    device: str = "auto",
) -> DomainEvalResult:
    """Evaluate every domain of a per-domain run with its own model (`r2 eval --checkpoint`).

    Args:
        run: the per-domain run folder (OUT of `r2 train --domain`).
        cache: the feature cache of the rows.
        anno: rows to score, split by their `domain` field; None: each domain's own
            validation rows (`OUT/NAME/val.jsonl`).
        out_dir: where each domain's predictions/metrics and `table.json` go (default
            `OUT/eval_<anno stem or val>`).
        device: "auto", "cpu" or "cuda".

    Raises:
        UsageError: not a per-domain run, or no domain with a checkpoint and rows.
    """
    from r2.evaluate.split import evaluate_checkpoint
    from r2.files import write_text_atomic

    run = Path(run)
    manifest = read_manifest(run)
    out = Path(out_dir) if out_dir else run / f"eval_{Path(anno).stem if anno else 'val'}"
    results, per_domain = {}, {}
    for domain in manifest["domains"]:
        ckpt = run / domain / "best.safetensors"
        if not ckpt.is_file():
            log.warning("%s: no checkpoint yet (%s): not evaluated", domain, ckpt)
            continue
        rows = run / domain / "val.jsonl"
        if anno is not None:
            lines = _rows_of_domain(Path(anno), domain)
            if not lines:
                log.warning("%s: no row of %s has domain %r: not evaluated", domain, anno, domain)
                continue
            rows = write_text_atomic(out / domain / "anno.jsonl", "\n".join(lines) + "\n")
        result = evaluate_checkpoint(ckpt, cache, rows, out / domain, device=device)
        per_domain[domain] = result
        value = None if result.metrics is None else result.metrics.get(KEY)
        results[domain] = {KEY: value, "n_val": len(result.predictions), "run": str(run / domain)}
    if not results:
        raise UsageError(f"{run}: no domain could be evaluated (see the messages above)")
    table = domain_table(manifest["dataset"], results)
    write_table(out / TABLE_NAME, table)
    return DomainEvalResult(table, out, per_domain)
