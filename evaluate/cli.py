"""`r2 eval`: score a prediction file against ground truth, print a table, write JSON.

Every option is optional at the typer level and checked here, so a later
``--checkpoint/--cache/--anno`` mode (inference, then scoring) can be added beside
``--pred/--gt`` without changing them.
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
        typer.Option("--pred", help="Predictions, JSON Lines (QVHighlights submission format).", dir_okay=False),
    ] = None,
    gt: Annotated[
        Path | None, typer.Option("--gt", help="Ground-truth annotations, JSON Lines.", dir_okay=False)
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", "-d", help="qvhighlights | charades | tacos | ego4d | youtube | tvsum."
        ),
    ] = "qvhighlights",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the metrics here as JSON.", dir_okay=False)
    ] = None,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="Score only the queries present in both files."),
    ] = False,
    by_query_length: Annotated[
        bool,
        typer.Option("--by-query-length", help="QVHighlights: add MR mAP by query length (Table 6)."),
    ] = False,
) -> None:
    """Score predictions against ground truth with the benchmark's official metrics."""
    from r2.evaluate import DATASETS, EvalInputError, evaluate
    from r2.evaluate.report import format_metrics

    if dataset not in DATASETS:
        raise typer.BadParameter(f"choose one of {', '.join(DATASETS)}", param_hint="--dataset")
    if pred is None:
        raise typer.BadParameter("a prediction file is required", param_hint="--pred")
    if gt is None:
        raise typer.BadParameter("a ground-truth file is required", param_hint="--gt")
    if by_query_length and dataset != "qvhighlights":
        raise typer.BadParameter("only for --dataset qvhighlights", param_hint="--by-query-length")
    try:
        metrics = evaluate(
            pred, gt, dataset, allow_partial=allow_partial, by_query_length=by_query_length
        )
    except EvalInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(format_metrics(metrics, dataset))
    if out is not None:
        _write_json(out, metrics)
        typer.echo(f"metrics written to {out}")
