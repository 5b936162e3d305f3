"""The `r2` command line: a thin typer wrapper over each stage's public function.

Each stage owns its command in `<stage>/cli.py`; this module only registers them.
"""

import typer

from r2.evaluate.cli import eval_command
from r2.extract.cli import extract_command
from r2.train.cli import convert_command, train_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="R²-Tuning: extract CLIP features, train, evaluate and predict moments in videos.",
)
app.command("extract")(extract_command)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("convert")(convert_command)


def main() -> None:  # pragma: no cover - entry point
    app()
