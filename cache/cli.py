"""`r2 cache ...`: inspect, check, compact, repair and merge feature caches (typer sub-app)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from r2.errors import EXIT_USAGE, cli_errors, help_epilog

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Inspect and maintain feature caches (the .h5 files of `r2 extract`).",
)

EXAMPLES = {
    "info": "r2 cache info cache/qv.h5",
    "check": "r2 cache check cache/qv.h5",
    "compact": "r2 cache compact cache/qv.h5",
    "repair": "r2 cache repair cache/qv.h5",
    "merge": "r2 cache merge shard-0.h5 shard-1.h5 --out all.h5",
}


def _epilog(command: str) -> str:
    """Examples and exit codes at the end of a command's --help."""
    return help_epilog(f"Examples:\n\n  {EXAMPLES[command]}\n")


CacheFile = Annotated[Path, typer.Argument(help="A feature cache (.h5).", dir_okay=False)]


@app.command("info", epilog=_epilog("info"))
def info_command(path: CacheFile) -> None:
    """Settings, counts, size, and the space superseded entries waste.

    Example: r2 cache info cache/qvh.h5
    """
    from .tools import describe

    with cli_errors():
        typer.echo(describe(path))


@app.command("check", epilog=_epilog("check"))
def check_command(path: CacheFile) -> None:
    """Read every committed item and verify its checksum; list every problem.

    Exit code 0 when the cache is sound, 2 when a problem was found (each printed on its
    own line, naming the item).

    Example: r2 cache check cache/qvh.h5
    """
    from .tools import check

    with cli_errors("nothing was changed"):
        report = check(path)
    for note in report.notes:
        typer.echo(f"note: {note}")
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.ok:
        typer.echo(f"{path}: ok ({report.videos} videos, {report.queries} queries read)")
        return
    print(f"error: {path}: {len(report.problems)} problem(s) found", file=sys.stderr)
    raise typer.Exit(EXIT_USAGE)


@app.command("compact", epilog=_epilog("compact"))
def compact_command(path: CacheFile) -> None:
    """Rewrite the cache without superseded entries (and in the current format version).

    Crash-safe: the new file is built beside the cache and replaces it atomically, under the
    writer lock; a kill leaves the original as it was.

    Example: r2 cache compact cache/qvh.h5
    """
    from .rebuild import compact

    with cli_errors("the cache was left as it was"):
        report = compact(path)
    before, after = report.bytes_before / 1e6, report.bytes_after / 1e6
    typer.echo(f"{path}: {report.videos} videos, {report.queries} queries; "
               f"{before:.1f} MB -> {after:.1f} MB")  # fmt: skip


@app.command("repair", epilog=_epilog("repair"))
def repair_command(path: CacheFile) -> None:
    """After an interrupted writer: make the file open with plain h5py / HDF5 tools again.

    Any r2 command that opens the cache does this too when it can; `repair` is for a file
    that only other tools touched since the interruption.

    Example: r2 cache repair cache/qvh.h5
    """
    from .tools import repair

    with cli_errors():
        typer.echo(repair(path))


@app.command("merge", epilog=_epilog("merge"))
def merge_command(
    inputs: Annotated[list[Path], typer.Argument(help="Two or more caches (e.g. shards).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged cache (a new file).")],
    on_duplicate: Annotated[
        str,
        typer.Option(
            "--on-duplicate",
            help="An id in several inputs with different features: error (default) | first "
            "(keep the earliest input's) | last (keep the latest input's). Identical "
            "duplicates are always kept once.",
        ),
    ] = "error",
) -> None:
    """Merge caches made with the same settings into one new cache.

    Refuses inputs whose settings differ (listing every difference). Crash-safe: the result
    is built under a temporary name and linked into place at the end.

    Example: r2 cache merge shard-0.h5 shard-1.h5 --out all.h5
    """
    from .rebuild import merge

    with cli_errors("no output was written"):
        report = merge(inputs, out, on_duplicate)
    for dup in report.duplicates:
        typer.echo(f"duplicate ({on_duplicate} kept): {dup}")
    typer.echo(f"{out}: {report.videos} videos, {report.queries} queries from {len(inputs)} "
               f"caches ({report.identical} identical duplicates kept once, "
               f"{len(report.duplicates)} resolved by --on-duplicate); "
               f"{report.bytes_after / 1e6:.1f} MB")  # fmt: skip
