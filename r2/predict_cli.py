"""`r2 predict`: one video and its queries, or a batch of videos with a queries file.

r2 predict VIDEO "QUERY" ["QUERY" ...] [--plot p.png] [--json r.json] [--chapters c.vtt]
r2 predict DIR_OR_FILES... --queries FILE --out results.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r2.cli_common import CHECKPOINT_HELP, CLIP_DTYPE_HELP, DEFAULT_CHECKPOINT

BATCH_TOP = 10  # moments per row in batch mode unless --top is given


Inputs = Annotated[list[str], typer.Argument(
    help="VIDEO then one or more quoted queries; with --queries: video files and/or "
    "folders (searched recursively).", show_default=False)]  # fmt: skip
QueriesFile = Annotated[Path | None, typer.Option("--queries", help="Batch: text file (one "
    "query per line, for every video) or QVHighlights jsonl (qid, query, vid).")]  # fmt: skip
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Batch: results JSONL (resumable).")]
Checkpoint = Annotated[str, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP)]
Top = Annotated[int | None, typer.Option(min=1, help="Moments per query (default 5; batch: 10).")]
Plot = Annotated[Path | None, typer.Option(
    "--plot", help="Figure .png/.svg/.pdf/.jpg (several queries: NAME-1.png...).")]  # fmt: skip
JsonOut = Annotated[Path | None, typer.Option("--json", help="Results as JSON (schema in "
    "r2/export.py): per query, moments as (start_s, end_s, score) and per-clip saliency "
    "(clip i = seconds i/fps to (i+1)/fps), times in ms precision.")]  # fmt: skip
Chapters = Annotated[Path | None, typer.Option(
    "--chapters", help="WebVTT chapters: one cue per top moment.")]  # fmt: skip
Anno = Annotated[list[Path] | None, typer.Option(
    "--anno", help="Annotations (jsonl) to draw ground truth in the plot.")]  # fmt: skip
ClipModel = Annotated[str | None, typer.Option(
    "--clip", help="Load CLIP from here instead of the recorded id.")]  # fmt: skip
ClipDtype = Annotated[str | None, typer.Option("--clip-dtype", help=CLIP_DTYPE_HELP)]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
AllowPartial = Annotated[bool, typer.Option(
    "--allow-partial", help="Use the decodable part of a damaged video.")]  # fmt: skip
Workers = Annotated[int | None, typer.Option(
    min=0, help="Batch: decode processes (default: cores - 1).")]  # fmt: skip


def predict_command(
    inputs: Inputs,
    queries_file: QueriesFile = None,
    out: Out = None,
    checkpoint: Checkpoint = DEFAULT_CHECKPOINT,
    top: Top = None,
    plot: Plot = None,
    json_out: JsonOut = None,
    chapters: Chapters = None,
    anno: Anno = None,
    clip_model: ClipModel = None,
    clip_dtype: ClipDtype = None,
    device: Device = "auto",
    allow_partial: AllowPartial = False,
    workers: Workers = None,
) -> None:
    """Find the moments of videos that match queries; each video is encoded once.

    Examples:
      r2 predict kitchen.mp4 "a man opens the fridge" "someone washes dishes" --plot k.png
      r2 predict videos/ --queries queries.txt --out results.jsonl -c official:qvhighlights
    """
    from r2.errors import cli_errors

    hint = "re-run the same command to resume" if queries_file is not None else None
    with cli_errors(hint):
        if queries_file is not None:
            _batch(
                inputs,
                queries_file,
                out,
                checkpoint,
                top or BATCH_TOP,
                device,
                clip_model,
                allow_partial,
                workers,
                (plot, json_out, chapters),
                clip_dtype=clip_dtype,
            )
        else:
            _single(
                inputs,
                out,
                checkpoint,
                top or 5,
                plot,
                json_out,
                chapters,
                anno or [],
                clip_model,
                device,
                allow_partial,
                clip_dtype=clip_dtype,
            )


def _batch(
    inputs, queries_file, out, checkpoint, top, device, clip, allow_partial, workers,
    single_outputs, clip_dtype=None,
) -> None:  # fmt: skip
    from r2.batch import predict_batch
    from r2.cli_common import check_clip_option, load_predictor
    from r2.errors import RunFailureError, UsageError
    from r2.files import ensure_writable
    from r2.zoo import sha256_file

    if out is None:
        raise UsageError("--queries needs --out results.jsonl")
    if any(o is not None for o in single_outputs):
        raise UsageError(
            "--plot, --json and --chapters are for one video; batch results go to --out"
        )
    ensure_writable(out, "results file")
    clip = check_clip_option(clip)
    predictor = load_predictor(checkpoint, device, clip, clip_dtype)
    identity = {
        "checkpoint_sha256": sha256_file(predictor.checkpoint),
        "clip_dtype": predictor.encoder.settings.dtype,  # bf16 results differ slightly
    }
    summary = predict_batch(
        predictor,
        inputs,
        queries_file,
        out,
        top=top,
        workers=workers,
        allow_partial=allow_partial,
        identity=identity,
    )
    typer.echo(summary.report())
    if summary.skipped and not summary.videos_done and not summary.rows_existing:
        raise RunFailureError("no video could be used")


def _check_outputs(plot, json_out, chapters, n_queries: int) -> list[Path | None]:
    """Refuse unwritable destinations and plot formats before decoding anything."""
    from r2.files import ensure_writable
    from r2.plot import check_plot_path

    plots: list[Path | None] = [None] * n_queries
    if plot is not None:
        check_plot_path(plot)
        plots = [
            plot if n_queries == 1 else plot.with_name(f"{plot.stem}-{i}{plot.suffix}")
            for i in range(1, n_queries + 1)
        ]
        for p in plots:
            ensure_writable(p, "plot")
    if json_out is not None:
        ensure_writable(json_out, "JSON output")
    if chapters is not None:
        ensure_writable(chapters, "chapters file")
    return plots


def _encode(predictor, video: Path, allow_partial: bool):
    from r2.cli_common import video_error_hint
    from r2.extract.decode import VideoError

    try:
        features = predictor.encode_video(video, allow_partial=allow_partial)
    except VideoError as err:
        hint = video_error_hint(str(err), allow_partial)
        if hint:
            raise VideoError(f"{err} {hint}") from None
        raise
    if features.partial:
        typer.echo(
            f"warning: {video} is damaged; using its first {features.duration:.1f} s", err=True
        )
    return features


def _single(
    inputs, out, checkpoint, top, plot, json_out, chapters, anno, clip, device, allow_partial,
    clip_dtype=None,
) -> None:  # fmt: skip
    from r2.api import check_queries
    from r2.cli_common import check_clip_option, check_video_file, load_predictor
    from r2.errors import UsageError
    from r2.truth import TruthIndex

    if out is not None:
        raise UsageError("--out is for batch mode (--queries FILE); use --json for one video")
    if Path(inputs[0]).is_dir():
        raise UsageError(
            f"{inputs[0]}: is a folder; give a video file, or --queries FILE "
            "--out results.jsonl to predict over a folder"
        )
    video = check_video_file(inputs[0])
    if len(inputs) < 2:
        raise UsageError(
            "no query given: put one or more quoted queries after the video "
            "(or give --queries FILE for a batch)"
        )
    try:
        queries = check_queries(inputs[1:])
    except ValueError as err:
        raise UsageError(f"{err} (or give --queries FILE for a batch)") from None
    plots = _check_outputs(plot, json_out, chapters, len(queries))
    truth = TruthIndex(anno) if anno else None
    predictor = load_predictor(checkpoint, device, check_clip_option(clip), clip_dtype)
    features = _encode(predictor, video, allow_partial)
    preds = predictor.predict_many(features, queries, top=top)
    _report(video, preds, plots, truth, top)
    _write_exports(video, preds, json_out, chapters, top)


def _report(video: Path, preds, plots, truth, top: int) -> None:
    from r2.frames import grab_frames
    from r2.plot import plot_prediction

    for i, (pred, path) in enumerate(zip(preds, plots, strict=True), 1):
        typer.echo(f"\n{pred.query!r}  ({video.name}, {pred.duration:.1f} s)")
        if pred.truncated:
            typer.echo(f"  warning: query {i} was cut to CLIP's 77-token context", err=True)
        typer.echo(f"  {'rank':>4} {'start':>8} {'end':>8} {'score':>6}")
        for rank, m in enumerate(pred.moments, 1):
            typer.echo(f"  {rank:>4} {m.start:>8.1f} {m.end:>8.1f} {m.score:>6.3f}")
        if path is not None:
            known = truth.lookup(video.stem, pred.query) if truth else None
            thumbs = grab_frames(video, [(m.start + m.end) / 2 for m in pred.moments[:top]])
            plot_prediction(
                pred, path, top=top, video_name=video.name, truth=known, thumbnails=thumbs
            )
            typer.echo(f"  plot: {path}" + ("  (with ground truth)" if known else ""))


def _write_exports(video: Path, preds, json_out, chapters, top: int) -> None:
    from r2.export import predictions_json, webvtt_chapters
    from r2.files import write_text_atomic

    if json_out is not None:
        write_text_atomic(json_out, predictions_json(preds, str(video)))
        typer.echo(f"results written to {json_out}")
    if chapters is not None:
        write_text_atomic(chapters, webvtt_chapters(preds, top))
        typer.echo(f"chapters written to {chapters}")
