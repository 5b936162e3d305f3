"""`r2 app` command (wraps r2.app.run_app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r2.cli_common import CHECKPOINT_HELP, DEFAULT_CHECKPOINT


def app_command(
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP)
    ] = DEFAULT_CHECKPOINT,
    videos: Annotated[
        Path | None, typer.Option("--videos", help="A folder of videos to pick from.")
    ] = None,
    anno: Annotated[
        list[Path] | None,
        typer.Option("--anno", help="Annotations (jsonl): ground truth drawn when known."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to serve on (loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 7860,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest upload, MB.")] = 2048,
    cache_mb: Annotated[
        int, typer.Option(min=1, help="Memory for encoded videos, MB (least recent out).")
    ] = 2048,
    clip_model: Annotated[
        str | None, typer.Option("--clip", help="Load CLIP from here instead of the recorded id.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Use the decodable part of damaged videos.")
    ] = False,
) -> None:
    """Serve a local web page: upload or pick a video, type queries, jump to the moments.

    Private by default: listens on 127.0.0.1 only, no telemetry, nothing fetched from the
    internet. Needs the app extra: pip install "r2-tuning[app]".

    Example: r2 app --checkpoint demo_out/run --videos demo_out/data/videos
    """
    from r2.cli_common import check_clip_option, load_predictor
    from r2.errors import UsageError, cli_errors

    with cli_errors():
        if videos is not None and not videos.is_dir():
            raise UsageError(f"{videos}: --videos folder not found")
        from r2.app import run_app
        from r2.truth import TruthIndex

        truth = TruthIndex(anno) if anno else None
        predictor = load_predictor(checkpoint, device, check_clip_option(clip_model))
        run_app(
            predictor,
            videos_dir=videos,
            truth=truth,
            host=host,
            port=port,
            max_upload_mb=max_upload_mb,
            cache_mb=cache_mb,
            allow_partial=allow_partial,
        )
