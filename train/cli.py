"""`r2 train` (wraps `r2.train.train`) and `r2 convert` commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

PRELOAD_CHOICES = ("none", "ram", "gpu", "auto")
AMP_CHOICES = ("auto", "off", "fp16", "bf16")


def _parse_config(items: list[str] | None) -> dict[str, Any]:
    """`--config dims=64 --config padding_invariant=true` -> {"dims": 64, ...} (JSON values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value  # a bare string such as fusion=mean
    return out


def train_command(
    cache: Annotated[Path, typer.Option("--cache", help="Feature cache (.h5) from r2 extract.")],
    train_anno: Annotated[Path, typer.Option("--train-anno", help="Training jsonl.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder, e.g. runs/NAME.")],
    val_anno: Annotated[
        Path | None, typer.Option("--val-anno", help="Validation jsonl with ground truth.")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="qvhighlights | charades | tacos | ego4d | youtube | tvsum")
    ] = "qvhighlights",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the preset.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Override the preset.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Override the preset.")] = None,
    warmup: Annotated[
        int | None, typer.Option(min=0, help="Warm-up iterations (override the preset).")
    ] = None,
    lr_drop: Annotated[
        int | None, typer.Option(min=0, help="Epoch of the x0.1 LR drop; 0 = never (override).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of init, data order and draws.")] = 0,
    workers: Annotated[int, typer.Option(min=0, help="Data-loader processes.")] = 4,
    preload: Annotated[
        str, typer.Option(help="Keep features in memory: none | ram | gpu | auto.")
    ] = "auto",
    k: Annotated[
        int | None, typer.Option("--k", min=1, help="CLIP layers used (last K of the cache).")
    ] = None,
    save_every: Annotated[
        int, typer.Option(min=0, help="Also save the resume state every N steps (0: per epoch).")
    ] = 0,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after N steps in total (--resume goes on).")
    ] = None,
    amp: Annotated[str, typer.Option(help="auto (fp16 on CUDA) | off | fp16 | bf16.")] = "auto",
    skip_missing: Annotated[
        bool, typer.Option("--skip-missing", help="Drop queries whose features are not cached.")
    ] = False,
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Model option KEY=VALUE (R2Config field); repeatable."),
    ] = None,
    strict_anno: Annotated[
        bool,
        typer.Option(
            "--strict-anno",
            help="Windows needing repairs (start > end, negative, "
            "past the end, zero length) are errors, not counted warnings.",
        ),
    ] = False,
) -> None:
    """Train R²-Tuning on cached CLIP features; validates every epoch, keeps the best.

    Outputs in --out: best.safetensors/.json (best epoch by the key validation metric:
    MR-full-mAP for QVHighlights, mIoU for Charades-STA/TACoS/Ego4D-NLQ, mAP for YouTube
    Highlights/TVSum), last.*, resume.safetensors (optimizer, RNG and data position for an
    exact --resume), log.jsonl (one JSON object per log line) and train.log.
    """
    for value, choices, name in (
        (preload, PRELOAD_CHOICES, "--preload"),
        (amp, AMP_CHOICES, "--amp"),
    ):
        if value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}", param_hint=name)
    overrides = _parse_config(config)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from r2.errors import cli_errors
    from r2.train import train

    hint = f"the last saved state is in {out} (continue with --resume)"
    with cli_errors(hint, (ValueError, KeyError)), logging_redirect_tqdm():
        summary = train(
            cache,
            train_anno,
            out,
            val_anno=val_anno,
            preset=preset,
            device=device,
            resume=resume,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            lr_drop=lr_drop,
            seed=seed,
            workers=workers,
            preload=preload,
            k=k,
            save_every=save_every,
            max_steps=max_steps,
            amp=amp,
            skip_missing=skip_missing,
            config=overrides,
            strict_anno=strict_anno,
        )
    best = summary.get("best")
    shown = "n/a" if best is None else f"{best:.2f} (epoch {summary['best_epoch']})"
    print(
        f"{'finished' if summary['finished'] else 'stopped'} at epoch {summary['epoch']}, "
        f"step {summary['step']}; best {summary['key_metric']}: {shown}; "
        f"checkpoints in {out}"
    )


def convert_command(
    src: Annotated[Path, typer.Argument(help="Original R2-Tuning checkpoint (.pth/.safetensors).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors in r2's layout.")],
    preset: Annotated[
        str, typer.Option(help="Dataset the weights were trained on (post-processing).")
    ] = "qvhighlights",
) -> None:
    """Import an official R2-Tuning checkpoint (original key layout) as r2 weights.

    Unknown, missing or mis-shaped keys are refused with the full list. The model
    configuration is read from the tensor shapes and stored in the output's metadata.
    """
    from r2.errors import cli_errors
    from r2.train.convert import convert_checkpoint

    with cli_errors(usage=(ValueError, KeyError)):
        model = convert_checkpoint(src, dst, preset=preset)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {src} -> {dst} ({n:,} parameters)")
