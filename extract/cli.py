"""`r2 extract`: videos and annotation queries into a CLIP feature cache (wraps `extract`)."""

from __future__ import annotations

import logging
import signal
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


EXTRACT_EXAMPLES = """Examples:

  r2 extract videos/ --anno train.jsonl --anno val.jsonl --out cache/qv.h5
  r2 extract clip1.mp4 clip2.mkv --anno queries.jsonl --out cache/mine.h5 --fps 1
  r2 extract videos/ --anno val.jsonl --clip ~/models/clip-vit-b32 --device cpu --workers 2
  for i in 0 1 2 3; do r2 extract videos/ --anno a.jsonl --out cache/qv.h5 --shard $i/4 & done; wait
  r2 cache merge cache/qv.shard-*-of-4.h5 --out cache/qv.h5
"""

Videos = Annotated[list[Path] | None, typer.Argument(
    help="Video files and/or folders (searched recursively). Id = file stem.",
    show_default=False)]  # fmt: skip
Out = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Cache file.", show_default="cache/<first input's name>.h5"),
]
Anno = Annotated[list[Path] | None, typer.Option(
    "--anno", help="QVHighlights-schema jsonl (qid, query; optional vid + fps: that video's "
    "clips per second); repeatable.", show_default="none")]  # fmt: skip
Clip = Annotated[str, typer.Option(
    "--clip", "--model",
    help="HuggingFace CLIP id or local folder (--model is an alias of --clip).")]  # fmt: skip
Revision = Annotated[str | None, typer.Option(help="Hub branch, tag or commit.",
                                              show_default="the latest")]  # fmt: skip
K = Annotated[int, typer.Option("--k", min=1, help="Last CLIP blocks kept.")]
Fps = Annotated[float, typer.Option(
    min=0.0, help="Clips (frames) per second (unless --anno gives one).")]  # fmt: skip
FrameAt = Annotated[str, typer.Option(
    "--frame-at", help="Frame of each clip: middle (original) | start.")]  # fmt: skip
Dtype = Annotated[str | None, typer.Option(help="Compute dtype fp32 | fp16 | bf16.",
                                           show_default="fp16 on CUDA, else fp32")]  # fmt: skip
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Workers = Annotated[int | None, typer.Option(
    min=0, help="Decode processes (0: decode in this process), each with cores/workers decoder "
    "threads, at a lower priority (nice +10) than the forward pass: they fill the gaps it "
    "leaves. Measured on 2 cores (benchmarks/extract.py): 1.03-1.05x the best possible "
    "time, (decode + forward CPU time) / cores; cores - 1 workers: 1.06-1.16x.",
    show_default="one per core, at most 8")]  # fmt: skip
Threads = Annotated[int | None, typer.Option(
    min=1, help="Torch threads of the CPU forward pass (every core: decoding only takes what "
    "the forward pass leaves idle).", show_default="one per core")]  # fmt: skip
Shard = Annotated[str | None, typer.Option(
    help="Extract shard I of N (0-based, e.g. 2/8): 1/N of the videos balanced by duration "
    "and their queries, into <out stem>.shard-I-of-N.h5; then `r2 cache merge` the shards.",
    show_default="from torchrun (RANK/WORLD_SIZE) or a slurm array, else none")]  # fmt: skip
BatchFrames = Annotated[
    int | None,
    typer.Option(min=1, help="Frames per forward pass.", show_default="32 on CPU, 256 on GPU"),
]
AllowPartial = Annotated[bool, typer.Option(
    "--allow-partial", help="Keep the decodable beginning of damaged videos (recorded as "
    "partial, with the length kept).")]  # fmt: skip
Strict = Annotated[bool, typer.Option(
    "--strict", help="Stop at the first video that can't be used.")]  # fmt: skip


def extract_command(
    videos: Videos = None,
    out: Out = None,
    anno: Anno = None,
    clip: Clip = DEFAULT_MODEL,
    revision: Revision = None,
    k: K = DEFAULT_K,
    fps: Fps = DEFAULT_FPS,
    frame_at: FrameAt = DEFAULT_FRAME_AT,
    dtype: Dtype = None,
    device: Device = "auto",
    workers: Workers = None,
    threads: Threads = None,
    batch_frames: BatchFrames = None,
    shard: Shard = None,
    allow_partial: AllowPartial = False,
    strict: Strict = False,
) -> None:
    """Extract multi-layer CLIP features of videos and queries into one cache file.

    Incremental: what is already cached is skipped, changed videos are re-extracted.
    Unreadable or damaged videos are skipped with a reason; the exit code is 1 only if no
    given video ends up usable (or on any skip with --strict, or on an error). Ctrl-C (or
    SIGTERM, e.g. a slurm time limit) stops at once; what was committed stays in the cache.
    """
    options = dict(locals())
    from r2.errors import EXIT_INTERRUPTED, cli_errors

    hint = "what was committed stays in the cache; re-run to finish"
    try:
        with cli_errors(hint):
            summary = run_extract(extract_options(options))
    except typer.Exit as stop:
        if stop.exit_code == EXIT_INTERRUPTED:
            _exit_now(stop.exit_code)
        raise
    if not summary.usable:
        print("error: nothing usable was extracted (see the skipped files above)", file=sys.stderr)
        raise typer.Exit(1)


def _exit_now(code: int) -> None:
    """Leave at once after Ctrl-C: the cache is closed and the decode workers are stopped by
    now, but the interpreter's teardown joins concurrent.futures' manager thread of the
    killed pool, which can wait on its dead workers' queues; under heavy load that took
    over 30 s once (tests/test_extract_failures.py). Logs and streams are flushed first."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def extract_options(o: dict) -> dict:
    """Check the command-line options; returns the keyword arguments of `r2.extract.extract`."""
    from r2.device import resolve_device
    from r2.errors import UsageError

    for name, choices in (("frame_at", FRAME_AT_CHOICES), ("dtype", DTYPE_CHOICES)):
        if o[name] is not None and o[name] not in choices:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {o[name]}: must be one of {', '.join(choices)}")
    resolve_device(o["device"])
    o = {**o, "videos": o["videos"] or [], "anno": o["anno"] or []}
    o["model"] = o.pop("clip")
    return o


def run_extract(o: dict):
    """`r2.extract.extract` with console logging and progress bars that do not garble it."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from r2.extract import extract

    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        with logging_redirect_tqdm():
            return extract(o.pop("videos"), o.pop("out"), o.pop("anno"), **o)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (a slurm time limit or preemption, `kill`) stops the run like Ctrl-C."""
    raise KeyboardInterrupt
