"""`r2 extract`: videos and annotation queries into a CLIP feature cache (wraps `extract`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from r2.extract.defaults import (
    DEFAULT_FPS,
    DEFAULT_FRAME_AT,
    DEFAULT_K,
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    FRAME_AT_CHOICES,
)

log = logging.getLogger("r2.extract")


def _choice(value: str | None, choices: tuple[str, ...], name: str) -> str | None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"must be one of {', '.join(choices)}", param_hint=name)
    return value


def extract_command(
    videos: Annotated[
        list[Path] | None,
        typer.Argument(help="Video files and/or folders (searched recursively). Id = file stem."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Cache file. Default: cache/<first input's name>.h5"),
    ] = None,
    anno: Annotated[
        list[Path] | None,
        typer.Option(
            "--anno",
            help="QVHighlights-schema jsonl (qid, query; optional vid + fps: that video's "
            "clips per second); repeatable.",
        ),
    ] = None,
    clip: Annotated[
        str,
        typer.Option(
            "--clip",
            "--model",
            help="HuggingFace CLIP id or local folder (--model is an alias of --clip).",
        ),
    ] = DEFAULT_MODEL,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Last CLIP blocks kept.")] = DEFAULT_K,
    fps: Annotated[
        float, typer.Option(min=0.0, help="Clips (frames) per second (unless --anno gives one).")
    ] = DEFAULT_FPS,
    frame_at: Annotated[
        str, typer.Option("--frame-at", help="Frame of each clip: middle (original) | start.")
    ] = DEFAULT_FRAME_AT,
    dtype: Annotated[
        str | None, typer.Option(help="Compute dtype fp32 | fp16 | bf16 (default fp32 on CPU).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    workers: Annotated[
        int | None, typer.Option(min=0, help="Decode processes (0: decode in this process).")
    ] = None,
    batch_frames: Annotated[
        int | None, typer.Option(min=1, help="Frames per forward pass (default 32 CPU, 256 GPU).")
    ] = None,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Keep the decodable part of damaged videos.")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first video that can't be used.")
    ] = False,
) -> None:
    """Extract multi-layer CLIP features of videos and queries into one cache file.

    Incremental: what is already cached is skipped, changed videos are re-extracted.
    Unreadable videos are skipped with a reason; the exit code is 1 only if no given
    video ends up usable (or on any skip with --strict, or on an error).
    """
    _choice(frame_at, FRAME_AT_CHOICES, "--frame-at")
    _choice(dtype, DTYPE_CHOICES, "--dtype")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from r2.errors import cli_errors
    from r2.extract import extract

    hint = "what was committed stays in the cache; re-run to finish"
    with cli_errors(hint, (ValueError,)), logging_redirect_tqdm():
        summary = extract(
            videos or [],
            out,
            anno or [],
            model=clip,
            revision=revision,
            k=k,
            fps=fps,
            frame_at=frame_at,
            dtype=dtype,
            device=device,
            workers=workers,
            batch_frames=batch_frames,
            allow_partial=allow_partial,
            strict=strict,
        )
    if not summary.usable:
        print("error: nothing usable was extracted (see the skipped files above)", file=sys.stderr)
        raise typer.Exit(1)
