"""`r2 eval`: score predictions against ground truth, print a table, write JSON.

Two modes:
    r2 eval --pred PRED.jsonl --gt GT.jsonl [--dataset D] [--out metrics.json]
    r2 eval --checkpoint runs/NAME --cache cache/x.h5 --anno SPLIT.jsonl [--out DIR]
The second runs inference first, writes DIR/predictions.jsonl (QVHighlights submission
format) and, when the split has ground truth, DIR/metrics.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON; atomic (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def eval_command(
    pred: Annotated[
        Path | None,
        typer.Option(
            "--pred",
            help="Predictions, JSON Lines (QVHighlights submission format).",
            dir_okay=False,
        ),
    ] = None,
    gt: Annotated[
        Path | None,
        typer.Option("--gt", help="Ground-truth annotations, JSON Lines.", dir_okay=False),
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", "-d", help="qvhighlights | charades | tacos | ego4d | youtube | tvsum."
        ),
    ] = "qvhighlights",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Also write the metrics here as JSON.", dir_okay=False),
    ] = None,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="Score only the queries present in both files."),
    ] = False,
    by_query_length: Annotated[
        bool,
        typer.Option(
            "--by-query-length", help="QVHighlights: add MR mAP by query length (Table 6)."
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Run folder or .safetensors: predict, then score."),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Feature cache of the split (with --checkpoint).")
    ] = None,
    anno: Annotated[
        Path | None,
        typer.Option(
            "--anno", help="Split annotations, JSON Lines (with --checkpoint).", dir_okay=False
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="With --checkpoint: auto | cpu | cuda.")] = "auto",
) -> None:
    """Score predictions against ground truth with the benchmark's official metrics."""
    from r2.errors import cli_errors
    from r2.evaluate import DATASETS, evaluate
    from r2.evaluate.paper import split_of
    from r2.evaluate.report import format_metrics

    if checkpoint is not None:
        _checkpoint_mode(checkpoint, cache, anno, out, device)
        return
    if dataset not in DATASETS:
        raise typer.BadParameter(f"choose one of {', '.join(DATASETS)}", param_hint="--dataset")
    if pred is None:
        raise typer.BadParameter("a prediction file is required", param_hint="--pred")
    if gt is None:
        raise typer.BadParameter("a ground-truth file is required", param_hint="--gt")
    if by_query_length and dataset != "qvhighlights":
        raise typer.BadParameter("only for --dataset qvhighlights", param_hint="--by-query-length")
    with cli_errors():
        metrics = evaluate(
            pred, gt, dataset, allow_partial=allow_partial, by_query_length=by_query_length
        )
    typer.echo(format_metrics(metrics, dataset, split_of(gt)))
    if out is not None:
        _write_json(out, metrics)
        typer.echo(f"metrics written to {out}")


def _checkpoint_mode(
    checkpoint: Path, cache: Path | None, anno: Path | None, out: Path | None, device: str
) -> None:
    """`r2 eval --checkpoint`: inference over a split, submission file, metrics if labelled."""
    from r2.errors import cli_errors
    from r2.evaluate.paper import split_of
    from r2.evaluate.report import format_metrics
    from r2.evaluate.split import evaluate_checkpoint

    if cache is None:
        raise typer.BadParameter("the split's feature cache is required", param_hint="--cache")
    if anno is None:
        raise typer.BadParameter("the split's annotations are required", param_hint="--anno")
    out_dir = (
        out
        if out is not None
        else Path(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent)
        / f"eval_{anno.stem}"
    )
    with cli_errors(usage=(ValueError,)):
        result = evaluate_checkpoint(checkpoint, cache, anno, out_dir, device=device)
    if result.metrics is None:
        typer.echo(f"{anno} has no ground truth: submission written, no metrics")
    else:
        typer.echo(format_metrics(result.metrics, result.dataset, split_of(anno)))
    typer.echo(f"predictions: {result.predictions_path}")
    if result.metrics_path:
        typer.echo(f"metrics: {result.metrics_path}")
