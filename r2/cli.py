"""The `r2` command line: a thin typer wrapper over each stage's public function.

Each stage owns its command in `<stage>/cli.py`; this module registers them and adds the
end-to-end commands `predict` (one video, one or more questions) and `demo`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from r2.data.cli import data_app
from r2.errors import EXIT_CODES_EPILOG
from r2.evaluate.cli import eval_command
from r2.extract.cli import extract_command
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
app.add_typer(data_app, name="data")


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command("predict", epilog=EXIT_CODES_EPILOG)
def predict_command(
    video: Annotated[Path, typer.Argument(help="Video file.", exists=True, dir_okay=False)],
    queries: Annotated[list[str], typer.Argument(help="One or more questions (quoted).")],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="Run folder or .safetensors checkpoint.")
    ] = Path("demo_out/run"),
    top: Annotated[int, typer.Option(min=1, help="Moments to print per query.")] = 5,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="PNG path (several queries: NAME-1.png, ...).")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Write results as JSON: per query, moments [start_s, end_s, score] and the "
            "saliency of each clip i (seconds i/fps to (i+1)/fps), in [0, 1].",
        ),
    ] = None,
    clip_model: Annotated[
        str | None, typer.Option("--clip", help="Load CLIP from here instead of the recorded id.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Use the decodable part of a damaged video.")
    ] = False,
) -> None:
    """Find the moments of VIDEO that match each query; the video is encoded once."""
    from r2.api import R2Predictor
    from r2.extract.decode import VideoError
    from r2.extract.encode import ModelLoadError
    from r2.plot import plot_prediction
    from r2.train.checkpoint import CheckpointError

    try:
        predictor = R2Predictor.from_pretrained(checkpoint, device=device, clip_model=clip_model)
        features = predictor.encode_video(video, allow_partial=allow_partial)
    except (VideoError, ModelLoadError, CheckpointError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        if isinstance(err, VideoError) and not allow_partial:
            typer.echo("(--allow-partial uses the part of a damaged video that decodes)", err=True)
        raise typer.Exit(2) from None
    if features.partial:
        typer.echo(f"warning: {video} is damaged; using its first {features.duration:.1f} s",
                   err=True)  # fmt: skip
    results = []
    for i, (query, pred) in enumerate(
        zip(queries, predictor.predict_many(features, queries, top=top), strict=True)
    ):
        typer.echo(f"\n{query!r}  ({video.name}, {pred.duration:.1f} s)")
        typer.echo(f"  {'rank':>4} {'start':>8} {'end':>8} {'score':>6}")
        for rank, m in enumerate(pred.moments, 1):
            typer.echo(f"  {rank:>4} {m.start:>8.1f} {m.end:>8.1f} {m.score:>6.3f}")
        if plot is not None:
            path = (
                plot if len(queries) == 1 else plot.with_name(f"{plot.stem}-{i + 1}{plot.suffix}")
            )
            typer.echo(f"  plot: {plot_prediction(pred, path, top=top)}")
        results.append({
            "query": query, "video": str(video), "duration": pred.duration, "fps": pred.fps,
            "moments": [[m.start, m.end, m.score] for m in pred.moments],
            "saliency": [round(float(s), 6) for s in pred.saliency],
        })  # fmt: skip
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=1) + "\n")
        typer.echo(f"results written to {json_out}")


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
