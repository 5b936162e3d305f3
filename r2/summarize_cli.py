"""`r2 summarize`: a summary video of the most salient segments under a length budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from r2.cli_common import CHECKPOINT_HELP, DEFAULT_CHECKPOINT

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")


def summarize_command(
    video: Annotated[Path, typer.Argument(help="Video file.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Summary video (.mp4).")],
    query: Annotated[
        str | None,
        typer.Option(
            "--query",
            "-q",
            help="What the summary is about (default: the "
            "checkpoint's generic query for highlight checkpoints).",
        ),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="Summary length: a share (15%) or seconds (30s).")
    ] = "15%",
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP)
    ] = DEFAULT_CHECKPOINT,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Segments, scores and the choice as JSON.")
    ] = None,
    clip_model: Annotated[
        str | None, typer.Option("--clip", help="Load CLIP from here instead of the recorded id.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Use the decodable part of a damaged video.")
    ] = False,
) -> None:
    """Summarize VIDEO: the most salient segments (TVSum protocol) in time order, with audio.

    Segments come from kernel temporal segmentation of the CLIP features, scored by the
    mean saliency of their clips, chosen by a 0/1 knapsack under the budget (see
    r2/summarize.py). The chosen segments are printed.

    Example: r2 summarize talk.mp4 --query "the speaker shows a chart" --budget 15% --out s.mp4
    """
    from r2.errors import cli_errors

    with cli_errors():
        _summarize(
            video, out, query, budget, checkpoint, json_out, clip_model, device, allow_partial
        )


def _check(video, out, budget, json_out):
    from r2.cli_common import check_video_file
    from r2.errors import UsageError
    from r2.files import ensure_writable
    from r2.summarize import parse_budget

    check_video_file(video)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(
            f"{out}: the summary is an MP4 video; use one of {', '.join(VIDEO_SUFFIXES)}"
        )
    parse_budget(budget, 100.0)  # the syntax, before any decoding
    ensure_writable(out, "summary video")
    if json_out is not None:
        ensure_writable(json_out, "JSON output")


def _summarize(video, out, query, budget, checkpoint, json_out, clip, device, allow_partial):
    from r2.cli_common import check_clip_option, load_predictor
    from r2.cut import write_intervals
    from r2.errors import UsageError
    from r2.extract.decode import probe_video
    from r2.files import write_text_atomic
    from r2.predict_cli import _encode
    from r2.summarize import (
        generic_query,
        merged_intervals,
        parse_budget,
        select_segments,
        summary_dict,
    )

    _check(video, out, budget, json_out)
    predictor = load_predictor(checkpoint, device, check_clip_option(clip))
    query = query or generic_query(predictor.meta, video)
    if query is None:
        raise UsageError(
            "--query is needed: this checkpoint finds moments for a query "
            "(only highlight checkpoints have a generic one)"
        )
    features = _encode(predictor, video, allow_partial)
    pred = predictor.predict(features, query)
    budget_s = parse_budget(budget, pred.duration)
    last_layer_cls = features.features[:, -1, 0, :]  # (T, Dv)
    segments = select_segments(pred.saliency, last_layer_cls, pred.fps, budget_s)
    intervals = merged_intervals(segments, pred.fps, pred.duration)
    rotation = probe_video(video, pred.fps).rotation
    write_intervals(video, intervals, out, rotation=rotation)
    _print(video, query, budget_s, pred, segments, intervals, out)
    if json_out is not None:
        write_text_atomic(
            json_out,
            json.dumps(summary_dict(video, query, budget_s, pred, segments), indent=1) + "\n",
        )
        typer.echo(f"segments written to {json_out}")


def _print(video, query, budget_s, pred, segments, intervals, out) -> None:
    chosen = [s for s in segments if s.selected]
    total = sum(e - s for s, e in intervals)
    typer.echo(
        f"{video.name} ({pred.duration:.1f} s), query {query!r}: {len(segments)} "
        f"segments, {len(chosen)} chosen, {total:.1f} s of a {budget_s:.1f} s budget"
    )
    typer.echo(f"  {'start':>8} {'end':>8} {'score':>6}")
    for seg in chosen:
        start, end = seg.seconds(pred.fps, pred.duration)
        typer.echo(f"  {start:>8.1f} {end:>8.1f} {seg.score:>6.3f}")
    typer.echo(f"summary written to {out}")
