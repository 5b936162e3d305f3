"""`r2 models`: the released checkpoints, whether each is cached, and fetching them ahead."""

from __future__ import annotations

from typing import Annotated

import typer


def models_command(
    fetch: Annotated[
        list[str] | None,
        typer.Option("--fetch", help="Download (if needed) and convert NAME now; repeatable."),
    ] = None,
) -> None:
    """List the official R²-Tuning checkpoints (use them as `--checkpoint official:NAME`).

    Status: "cached" (converted, ready offline), "downloaded" (original file on disk,
    converted on first use) or "not cached" (downloaded from the Hugging Face hub on first
    use). Converted checkpoints live in $R2_CACHE_DIR, else $XDG_CACHE_HOME/r2, else
    ~/.cache/r2.

    Example: r2 models --fetch qvhighlights
    """
    from r2.errors import cli_errors
    from r2.zoo import ZOO, cache_dir, status
    from r2.zoo import fetch as fetch_model

    with cli_errors():
        for name in fetch or []:
            print(f"official:{name.removeprefix('official:')} -> {fetch_model(name)}")
        rows = [(f"official:{e.name}", e.preset, *status(e)) for e in ZOO.values()]
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}}  {'preset':<12}  {'status':<10}  path")
    for name, preset, state, path in rows:
        shown = "cached" if state == "converted" else state
        print(f"{name:<{width}}  {preset:<12}  {shown:<10}  {path or '-'}")
    print(f"converted checkpoints: {cache_dir() / 'official'}")
