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

from r2 import __version__
from r2.app_cli import app_command
from r2.cache.cli import app as cache_app
from r2.data.cli import data_app
from r2.errors import EXIT_CODES_EPILOG, help_epilog
from r2.evaluate.cli import EVAL_EXAMPLES, eval_command
from r2.extract.cli import EXTRACT_EXAMPLES, extract_command
from r2.models_cli import models_command
from r2.predict_cli import predict_command
from r2.summarize_cli import summarize_command
from r2.train.cli import CONVERT_EXAMPLES, TRAIN_EXAMPLES, convert_command, train_command

DEMO_EXAMPLES = """Examples:

  r2 demo
  r2 demo --out /tmp/r2demo --seed 1 --device cpu
  r2 demo --clip ~/models/clip-vit-base-patch32
"""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="R²-Tuning: extract CLIP features, train, evaluate and predict moments in videos.",
)
app.command("extract", epilog=help_epilog(EXTRACT_EXAMPLES))(extract_command)
app.command("train", epilog=help_epilog(TRAIN_EXAMPLES))(train_command)
app.command("eval", epilog=help_epilog(EVAL_EXAMPLES))(eval_command)
app.command("convert", epilog=help_epilog(CONVERT_EXAMPLES))(convert_command)
app.add_typer(cache_app, name="cache")
app.add_typer(data_app, name="data")
app.command("models", epilog=EXIT_CODES_EPILOG)(models_command)
app.command("predict", epilog=EXIT_CODES_EPILOG)(predict_command)
app.command("app", epilog=EXIT_CODES_EPILOG)(app_command)
app.command("summarize", epilog=EXIT_CODES_EPILOG)(summarize_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"r2 {__version__}")
        raise typer.Exit()


Version = Annotated[bool, typer.Option(
    "--version", help="Print the version and exit.", callback=_print_version,
    is_eager=True)]  # fmt: skip


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False,
    version: Version = False,
):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command("demo", epilog=help_epilog(DEMO_EXAMPLES))
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_out"),
    clip_model: Annotated[
        str | None,
        typer.Option(
            "--clip",
            help="CLIP id or folder.",
            show_default="the pretrained default if cached, else a random tiny CLIP",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the dataset and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """Generate a procedural dataset, then extract -> train -> eval -> predict on it.

    The metrics table compares the trained model with trivial baselines on the held-out
    TEST videos (the validation videos only choose the epoch).
    """
    from r2.demo import run_demo
    from r2.device import resolve_device
    from r2.errors import cli_errors

    with cli_errors("the demo's finished steps are reused by the next run"):
        resolve_device(device)  # before minutes of work
        run_demo(out, seed=seed, clip=clip_model, device=device)


def main() -> None:  # pragma: no cover - entry point
    app()
