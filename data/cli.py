"""`r2 data ...`: convert the benchmarks' original releases, check annotation files.

r2 data convert charades ../raw/charades_sta --out data/charades
r2 data convert youtube ../raw/youtube_highlights --out data/youtube [--query domain]
r2 data check data/charades/charades_train.jsonl [--cache cache/charades.h5]
r2 data compare data/tvsum/tvsum_val.jsonl lighthouse/tvsum_val_release.jsonl
r2 data import-release release/tvsum --dataset tvsum --out cache/tvsum.h5
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r2.errors import EXIT_FAILURE, EXIT_USAGE, cli_errors, help_epilog

data_app = typer.Typer(
    no_args_is_help=True,
    help="Datasets: convert the benchmarks' original releases, check annotation files.",
)
convert_app = typer.Typer(
    no_args_is_help=True,
    help="Convert a benchmark's original release into QVHighlights-schema jsonl, one per split.",
)
data_app.add_typer(convert_app, name="convert")

Sources = Annotated[list[Path], typer.Argument(help="Release files and/or their folder.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder ({dataset}_{split}.jsonl).")]
Splits = Annotated[
    Path | None,
    typer.Option("--splits", help="domain_splits.json-style lists (default: the released ones)."),
]


EXAMPLES = {
    "charades": "r2 data convert charades ../raw/charades_sta --out data/charades",
    "tacos": "r2 data convert tacos ../raw/tacos --out data/tacos",
    "ego4d": "r2 data convert ego4d ../raw/ego4d/nlq_train.json ../raw/ego4d/nlq_val.json "
    "--out data/ego4d",
    "youtube": "r2 data convert youtube ../raw/youtube_highlights --out data/youtube "
    "--query domain",
    "tvsum": "r2 data convert tvsum ../raw/tvsum/ydata-tvsum50.mat --out data/tvsum",
    "check": "r2 data check data/charades/charades_train.jsonl --cache cache/charades.h5",
    "compare": "r2 data compare data/tvsum/tvsum_val.jsonl lighthouse/tvsum_val_release.jsonl",
    "import-release": "r2 data import-release release/charades --dataset charades "
    "--out cache/charades.h5",
}


def _epilog(command: str) -> str:
    """Examples and exit codes at the end of a command's --help."""
    return help_epilog(f"Examples:\n\n  {EXAMPLES[command]}\n")


def _run(convert, *args, **kwargs) -> None:
    with cli_errors():
        result = convert(*args, **kwargs)
    typer.echo(result.summary())
    typer.echo(f"report: {result.report}")


@convert_app.command("charades", epilog=_epilog("charades"))
def charades_command(sources: Sources, out: Out) -> None:
    """Charades-STA: charades_sta_{train,test}.txt + Charades_v1_{train,test}.csv (durations)."""
    from .charades import convert_charades

    _run(convert_charades, sources, out)


@convert_app.command("tacos", epilog=_epilog("tacos"))
def tacos_command(sources: Sources, out: Out) -> None:
    """TACoS: {train,val,test}.json (timestamps in frames)."""
    from .tacos import convert_tacos

    _run(convert_tacos, sources, out)


@convert_app.command("ego4d", epilog=_epilog("ego4d"))
def ego4d_command(sources: Sources, out: Out) -> None:
    """Ego4D-NLQ: nlq_{train,val}.json (and nlq_test_unannotated.json); one row per query,
    the clip as the video."""
    from .ego4d import convert_ego4d

    _run(convert_ego4d, sources, out)


@convert_app.command("youtube", epilog=_epilog("youtube"))
def youtube_command(
    sources: Sources,
    out: Out,
    query: Annotated[
        str, typer.Option(help="Query text: title (as released) | domain (the unified files).")
    ] = "title",
    videos: Annotated[
        Path | None,
        typer.Option("--videos", help="Folder of the videos: exact durations and per-video fps."),
    ] = None,
    splits: Splits = None,
) -> None:
    """YouTube Highlights: the release folder (six domain folders); per-video fps so that
    there is one clip per label."""
    from .youtube import QUERY_CHOICES, convert_youtube

    if query not in QUERY_CHOICES:
        raise typer.BadParameter(f"must be one of {', '.join(QUERY_CHOICES)}", param_hint="--query")
    _run(convert_youtube, sources, out, query=query, videos=videos, splits=splits)


@convert_app.command("tvsum", epilog=_epilog("tvsum"))
def tvsum_command(sources: Sources, out: Out, splits: Splits = None) -> None:
    """TVSum: ydata-tvsum50.mat; per-2-s-clip scores of the 20 annotators."""
    from .tvsum import convert_tvsum

    _run(convert_tvsum, sources, out, splits=splits)


@data_app.command("check", epilog=_epilog("check"))
def check_command(
    file: Annotated[Path, typer.Argument(help="Annotation file (JSON Lines).")],
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Also check against this feature cache (ids, texts, T)."),
    ] = None,
    summary: Annotated[
        bool, typer.Option("--summary", help="Counts per kind only, not every problem.")
    ] = False,
) -> None:
    """Every problem of an annotation file with file:line:field; exit 2 when there are errors.

    Errors stop `r2 train` and `r2 eval` too; warnings are repairs training applies
    (fatal with `r2 train --strict-anno`) or facts worth knowing.
    """
    from .check import check_annotations

    with cli_errors():
        report = check_annotations(file, cache)
    if not summary:
        for p in report.problems:
            typer.echo(f"{p.severity}: {p}")
    for line in report.summary():
        typer.echo(line)
    against = f" (cache {cache})" if cache else ""
    typer.echo(f"{file}: {len(report.rows):,} rows, {len(report.errors):,} errors, "
               f"{len(report.warnings):,} warnings{against}")  # fmt: skip
    if report.errors:
        raise typer.Exit(EXIT_USAGE)


@data_app.command("compare", epilog=_epilog("compare"))
def compare_command(
    ours: Annotated[Path, typer.Argument(help="A converted file.")],
    reference: Annotated[Path, typer.Argument(help="An independent conversion of the same split.")],
) -> None:
    """Agreement of two annotation files as multisets of (video, query, windows / labels)."""
    from .compare import compare_files

    with cli_errors():
        result = compare_files(ours, reference)
    typer.echo(str(result))
    for side, keys in (("only in the reference", result.only_reference),
                       ("only in ours", result.only_ours)):  # fmt: skip
        for key in keys:
            typer.echo(f"  {side}: vid {key[0]!r}, query {key[1][:60]!r}, windows {key[2][:3]}")


RELEASE_HELP = "Release folder: clip_b32_vid_k4/, clip_b32_txt_k4/ and the annotation files."
DATASET_HELP = "qvhighlights | ego4d | charades | tacos | youtube | tvsum."
CACHE_HELP = "Cache file; {dataset}_{split}.jsonl go next to it."
CLIP_HELP = (
    "A local copy (folder or hub id) of the release's CLIP ViT-B/32: record its "
    "fingerprint instead of the release marker."
)


@data_app.command("import-release", epilog=_epilog("import-release"))
def import_release_command(
    folder: Annotated[Path, typer.Argument(help=RELEASE_HELP)],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help=DATASET_HELP)],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=CACHE_HELP, show_default="cache/DATASET.h5")
    ] = None,
    splits: Splits = None,
    clip: Annotated[str | None, typer.Option("--clip", help=CLIP_HELP, show_default="none")] = None,
) -> None:
    """The R²-Tuning feature release (no videos, no CLIP needed) into one r2 cache + jsonl.

    Resumable: a killed import keeps what it committed; running it again skips the files
    already imported (same size and mtime; queries with the same text).
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .release import get_layout, import_release

    with cli_errors("what was committed stays in the cache; re-run to finish"),  \
            logging_redirect_tqdm():  # fmt: skip
        name = get_layout(dataset).dataset
        result = import_release(folder, name, out or Path("cache") / f"{name}.h5",
                                splits=splits, clip=clip)  # fmt: skip
    for line in result.summary_lines:
        typer.echo(line)
    if not result.usable:
        typer.echo("error: nothing usable was imported (see the refused files above)", err=True)
        raise typer.Exit(EXIT_FAILURE)
