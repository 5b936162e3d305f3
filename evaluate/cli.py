"""`r2 eval`: score predictions against ground truth, print a table, write JSON.

Two modes; in both `--out` is an output FOLDER:
    r2 eval --pred PRED.jsonl --gt GT.jsonl [--dataset D] [--out DIR]
        writes DIR/metrics.json (an --out ending in ".json" is still taken as the metrics
        file itself, the form of r2 0.1.0)
    r2 eval --checkpoint runs/NAME --cache cache/x.h5 --anno SPLIT.jsonl [--out DIR]
        runs inference first and writes DIR/predictions.jsonl (QVHighlights submission
        format) and, when the split has ground truth, DIR/metrics.json; default DIR:
        eval_<split> beside the checkpoint. A per-domain run folder (`r2 train --domain`,
        YouTube Highlights / TVSum) is scored domain by domain, each with its own model, on
        its own validation rows unless --anno is given, and the paper's per-domain table
        (Table 3 / 4) is printed and written as DIR/table.json.
Outputs are written atomically with the usual permissions (umask); the output folder is
checked for writability before any work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from r2.errors import UsageError

METRICS_NAME = "metrics.json"
EVAL_EXAMPLES = """Examples:

  r2 eval --pred predictions.jsonl --gt val.jsonl --dataset qvhighlights --out eval/
  r2 eval --checkpoint runs/qv --cache cache/qv.h5 --anno val.jsonl --out runs/qv/eval_val
  r2 eval --pred preds.jsonl --gt test.jsonl -d charades --allow-partial
  r2 eval --checkpoint runs/tvsum --cache cache/tvsum.h5   # a per-domain run (r2 train --domain)
"""

Pred = Annotated[Path | None, typer.Option(
    "--pred", help="Predictions, JSON Lines (QVHighlights submission format).",
    dir_okay=False, show_default="none")]  # fmt: skip
Gt = Annotated[Path | None, typer.Option("--gt", help="Ground-truth annotations, JSON Lines.",
                                         dir_okay=False, show_default="none")]  # fmt: skip
Dataset = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", help="qvhighlights | charades | tacos | ego4d | youtube | tvsum."
    ),
]
Out = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        show_default="none (--pred), eval_<split> beside the checkpoint",
        help="Output folder: metrics.json (and predictions.jsonl with --checkpoint).",
    ),
]
AllowPartial = Annotated[bool, typer.Option(
    "--allow-partial", help="Score only the queries present in both files.")]  # fmt: skip
ByQueryLength = Annotated[
    bool,
    typer.Option("--by-query-length", help="QVHighlights: add MR mAP by query length (Table 6)."),
]
Checkpoint = Annotated[Path | None, typer.Option(
    "--checkpoint", help="Run folder (or per-domain run folder) or .safetensors: predict, "
    "then score.",
    show_default="none")]  # fmt: skip
Cache = Annotated[
    Path | None,
    typer.Option(
        "--cache", help="Feature cache of the split (with --checkpoint).", show_default="none"
    ),
]
Anno = Annotated[Path | None, typer.Option(
    "--anno", help="Split annotations, JSON Lines (with --checkpoint; a per-domain run: "
    "default each domain's validation rows).", dir_okay=False,
    show_default="none")]  # fmt: skip
Device = Annotated[str, typer.Option(help="With --checkpoint: auto | cpu | cuda | cuda:N.")]


def eval_command(
    pred: Pred = None,
    gt: Gt = None,
    dataset: Dataset = "qvhighlights",
    out: Out = None,
    allow_partial: AllowPartial = False,
    by_query_length: ByQueryLength = False,
    checkpoint: Checkpoint = None,
    cache: Cache = None,
    anno: Anno = None,
    device: Device = "auto",
) -> None:
    """Score predictions against ground truth with the benchmark's official metrics."""
    options = dict(locals())
    from r2.errors import cli_errors

    with cli_errors():
        if checkpoint is not None and _is_domain_run(checkpoint):
            _domains_mode(**_domains_options(options))
        elif checkpoint is not None:
            _checkpoint_mode(**_checkpoint_options(options))
        else:
            _file_mode(**_file_options(options))


def _file_options(o: dict[str, Any]) -> dict[str, Any]:
    """Check the options of `r2 eval --pred --gt`; the output path is checked writable."""
    from r2.evaluate import DATASETS
    from r2.files import ensure_writable

    if o["dataset"] not in DATASETS:
        raise UsageError(f"--dataset {o['dataset']}: choose one of {', '.join(DATASETS)}")
    for name in ("pred", "gt"):
        if o[name] is None:
            raise UsageError(f"--{name} is required (or use --checkpoint)")
    if o["by_query_length"] and o["dataset"] != "qvhighlights":
        raise UsageError("--by-query-length: only for --dataset qvhighlights")
    metrics_path = None
    if o["out"] is not None:
        metrics_path = metrics_file(o["out"])
        ensure_writable(metrics_path, "metrics file")
    keep = ("pred", "gt", "dataset", "allow_partial", "by_query_length")
    return {**{k: o[k] for k in keep}, "metrics_path": metrics_path}


def metrics_file(out: Path) -> Path:
    """Where `--pred` mode writes the metrics: OUT/metrics.json, or OUT itself if it ends
    in ".json" and is not a folder (the r2 0.1.0 form, still accepted)."""
    if out.suffix.lower() == ".json" and not out.is_dir():
        return out
    return out / METRICS_NAME


def _file_mode(pred: Path, gt: Path, dataset: str, allow_partial: bool, by_query_length: bool,
               metrics_path: Path | None) -> None:  # fmt: skip
    from r2.evaluate import evaluate
    from r2.evaluate.paper import split_of
    from r2.evaluate.report import format_metrics
    from r2.files import write_text_atomic

    metrics = evaluate(
        pred, gt, dataset, allow_partial=allow_partial, by_query_length=by_query_length
    )
    typer.echo(format_metrics(metrics, dataset, split_of(gt)))
    if metrics_path is not None:
        write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
        typer.echo(f"metrics written to {metrics_path}")


def _checkpoint_options(o: dict[str, Any]) -> dict[str, Any]:
    """Check the options of `r2 eval --checkpoint`; the output folder is checked writable."""
    from r2.device import resolve_device
    from r2.files import ensure_writable_dir

    for name, what in (("cache", "the split's feature cache"), ("anno", "the split's annotations")):
        if o[name] is None:
            raise UsageError(f"--{name} is required with --checkpoint ({what})")
    for name in ("pred", "gt"):
        if o[name] is not None:
            raise UsageError(f"--{name} and --checkpoint are two different modes: give one")
    resolve_device(o["device"])
    checkpoint, anno = Path(o["checkpoint"]), Path(o["anno"])
    out = o["out"]
    if out is None:
        out = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / f"eval_{anno.stem}"
    elif out.suffix.lower() == ".json" and not out.is_dir():
        raise UsageError(f"--out {out}: with --checkpoint, --out is a folder (it receives "
                         f"predictions.jsonl and {METRICS_NAME})")  # fmt: skip
    ensure_writable_dir(out, "output folder (--out)")
    return {"checkpoint": checkpoint, "cache": o["cache"], "anno": anno, "out": out,
            "device": o["device"]}  # fmt: skip


def _checkpoint_mode(checkpoint: Path, cache: Path, anno: Path, out: Path, device: str) -> None:
    """`r2 eval --checkpoint`: inference over a split, submission file, metrics if labelled."""
    from r2.evaluate.paper import split_of
    from r2.evaluate.report import format_metrics
    from r2.evaluate.split import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, cache, anno, out, device=device)
    if result.metrics is None:
        typer.echo(f"{anno} has no ground truth: submission written, no metrics")
    else:
        typer.echo(format_metrics(result.metrics, result.dataset, split_of(anno)))
    typer.echo(f"predictions: {result.predictions_path}")
    if result.metrics_path:
        typer.echo(f"metrics: {result.metrics_path}")


def _is_domain_run(checkpoint: Path) -> bool:
    from r2.evaluate.domains import is_domain_run

    return is_domain_run(checkpoint)


def _domains_options(o: dict[str, Any]) -> dict[str, Any]:
    """Check the options of `r2 eval --checkpoint PER_DOMAIN_RUN`."""
    from r2.device import resolve_device
    from r2.files import ensure_writable_dir

    if o["cache"] is None:
        raise UsageError("--cache is required with --checkpoint (the rows' feature cache)")
    for name in ("pred", "gt"):
        if o[name] is not None:
            raise UsageError(f"--{name} and --checkpoint are two different modes: give one")
    resolve_device(o["device"])
    run, anno = Path(o["checkpoint"]), o["anno"]
    out = o["out"] or run / f"eval_{Path(anno).stem if anno else 'val'}"
    ensure_writable_dir(out, "output folder (--out)")
    return {"run": run, "cache": o["cache"], "anno": anno, "out": out, "device": o["device"]}


def _domains_mode(run: Path, cache: Path, anno: Path | None, out: Path, device: str) -> None:
    """A per-domain run: every domain with its own model, then the paper's table."""
    from r2.evaluate.domains import TABLE_NAME, evaluate_domains, format_domain_table

    result = evaluate_domains(run, cache, anno, out, device=device)
    typer.echo(format_domain_table(result.table))
    typer.echo(f"per-domain predictions and metrics in {result.out_dir}/<domain>/; table: "
               f"{result.out_dir / TABLE_NAME}")  # fmt: skip
