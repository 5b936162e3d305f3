"""The `r2` command line: a thin typer wrapper over each stage's public function.

Each stage owns its command in `<stage>/cli.py`; this module registers them and adds the
`demo` command; the commands for people with videos (`predict`, `summarize`, `app`,
`models`) live in their own modules.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from r2.app_cli import app_command
from r2.cache.cli import app as cache_app
from r2.data.cli import data_app
from r2.errors import EXIT_CODES_EPILOG
from r2.evaluate.cli import eval_command
from r2.extract.cli import extract_command
from r2.models_cli import models_command
from r2.predict_cli import predict_command
from r2.summarize_cli import summarize_command
from r2.train.cli import convert_command, train_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="R²-Tuning: extract CLIP features, train, evaluate and predict moments in videos.",
)
app.command("extract", epilog=EXIT_CODES_EPILOG)(extract_command)
app.command("train", epilog=EXIT_CODES_EPILOG)(train_command)
app.command("eval", epilog=EXIT_CODES_EPILOG)(eval_command)
app.command("convert", epilog=EXIT_CODES_EPILOG)(convert_command)
app.add_typer(cache_app, name="cache")
app.add_typer(data_app, name="data")
app.command("models", epilog=EXIT_CODES_EPILOG)(models_command)
app.command("predict", epilog=EXIT_CODES_EPILOG)(predict_command)
app.command("app", epilog=EXIT_CODES_EPILOG)(app_command)
app.command("summarize", epilog=EXIT_CODES_EPILOG)(summarize_command)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command("demo", epilog=EXIT_CODES_EPILOG)
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_out"),
    clip_model: Annotated[
        str | None, typer.Option("--clip", help="CLIP id/folder (default: pretrained if cached).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the dataset and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Generate a procedural dataset, then extract -> train -> eval -> predict on it."""
    from r2.demo import run_demo

    run_demo(out, seed=seed, clip=clip_model, device=device)


def main() -> None:  # pragma: no cover - entry point
    app()
