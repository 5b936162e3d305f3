"""`r2 train` (wraps `r2.train.train`) and `r2 convert` commands.

The typer functions only declare options; checking them (`train_options`) and the work
(`r2.train.train`, `r2.train.convert.convert_checkpoint`) are separate functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from r2.errors import UsageError

PRELOAD_CHOICES = ("none", "ram", "gpu", "auto")
AMP_CHOICES = ("auto", "off", "fp16", "bf16")
PRESET_HELP = "qvhighlights | charades | tacos | ego4d | youtube | tvsum"
FROM_PRESET = "from --preset"
AMP_HELP = (
    "Mixed precision: auto (fp16 on CUDA as the original, off on CPU) | off (float32) | "
    "fp16 (CUDA) | bf16 (CPU or CUDA). On CPU bf16 runs every matrix product in bfloat16: "
    "a QVHighlights step (B=32) takes 0.62x the float32 time on 1 core, 0.69x on 2; measured "
    "against the float32 step (same weights, batch and dropout draws): loss within 6e-5 "
    "relative (largest loss term 8e-4), gradient cosine 0.998 (benchmarks/train.py). Not "
    "bit-identical to float32 runs."
)

TRAIN_EXAMPLES = """Examples:

  r2 train --cache cache/qv.h5 --train-anno train.jsonl --val-anno val.jsonl --out runs/qv
  r2 train --cache cache/qv.h5 --train-anno train.jsonl --out runs/qv --resume
  r2 train --cache c.h5 --train-anno t.jsonl --val-anno v.jsonl --out runs/small \\
      --epochs 5 --config dims=128 --config padding_invariant=true
  r2 train --cache cache/tvsum.h5 --train-anno tvsum_train.jsonl --val-anno tvsum_val.jsonl \\
      --preset tvsum --domain all --out runs/tvsum
"""
CONVERT_EXAMPLES = """Examples:

  r2 convert qvhighlights_r2.pth runs/official/best.safetensors
  r2 convert charades.pth models/charades.safetensors --preset charades
"""

Cache = Annotated[Path, typer.Option("--cache", help="Feature cache (.h5) from r2 extract.")]
TrainAnno = Annotated[Path, typer.Option("--train-anno", help="Training jsonl.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder, e.g. runs/NAME.")]
ValAnno = Annotated[Path | None, typer.Option(
    "--val-anno", help="Validation jsonl with ground truth. With --resume: default the run's.",
    show_default="none")]  # fmt: skip
Preset = Annotated[str, typer.Option(help=PRESET_HELP)]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out exactly where it stopped.")]  # fmt: skip
Epochs = Annotated[int | None, typer.Option(min=1, help="Training epochs.",
                                            show_default=FROM_PRESET)]  # fmt: skip
BatchSize = Annotated[int | None, typer.Option(min=1, help="Batch size.", show_default=FROM_PRESET)]
Lr = Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate.",
                                          show_default=FROM_PRESET)]  # fmt: skip
Warmup = Annotated[int | None, typer.Option(min=0, help="Warm-up iterations.",
                                            show_default=FROM_PRESET)]  # fmt: skip
LrDrop = Annotated[int | None, typer.Option(
    min=0, help="Epoch of the x0.1 LR drop; 0 = never.", show_default=FROM_PRESET)]  # fmt: skip
Seed = Annotated[int, typer.Option(help="Seed of init, data order and draws.")]
Workers = Annotated[int | None, typer.Option(
    min=0, help="Loader threads reading features into the batch (0: in the training thread).",
    show_default="4")]  # fmt: skip
Preload = Annotated[str, typer.Option(help=(
    "Keep features in memory: none (read from the file each epoch) | ram (the cache file "
    "mapped and read in once) | gpu | auto."))]  # fmt: skip
K = Annotated[int | None, typer.Option("--k", min=1, help="CLIP layers used (last K of the cache).",
                                       show_default="min(4, the cache's)")]  # fmt: skip
SaveEvery = Annotated[int, typer.Option(
    min=0, help="Also save the resume state every N steps (0: per epoch).")]  # fmt: skip
MaxSteps = Annotated[
    int | None,
    typer.Option(
        min=1, help="Stop after N steps in total (--resume goes on).", show_default="none"
    ),
]
Amp = Annotated[str, typer.Option(help=AMP_HELP)]
SkipMissing = Annotated[bool, typer.Option(
    "--skip-missing", help="Drop queries whose features are not cached.")]  # fmt: skip
StrictAnno = Annotated[bool, typer.Option(
    "--strict-anno", help="Windows needing repairs (start > end, negative, past the end, zero "
    "length) are errors, not counted warnings.")]  # fmt: skip
Domain = Annotated[str | None, typer.Option(
    "--domain", show_default="none (one model)",
    help="YouTube Highlights / TVSum: one model per domain, NAME or all (runs in "
    "OUT/NAME/, the paper's Table 3/4 layout in OUT/table.json; --resume skips finished "
    "domains).")]  # fmt: skip
Splits = Annotated[str, typer.Option(
    "--splits", help="With --domain: lists (the domain_splits.json videos; rows of both files "
    "pooled) | jsonl (the files' own split, rows by their domain field).")]  # fmt: skip
SplitLists = Annotated[Path | None, typer.Option(
    "--split-lists", help="With --domain: a domain_splits.json-style file.",
    show_default="the released lists")]  # fmt: skip
Config = Annotated[list[str] | None, typer.Option(
    "--config", show_default="the preset's model",
    help="Model option KEY=VALUE (an R2Config field; booleans true/false/1/0/yes/no, lists "
    "comma-separated); repeatable.")]  # fmt: skip


def train_command(
    cache: Cache,
    train_anno: TrainAnno,
    out: Out,
    val_anno: ValAnno = None,
    preset: Preset = "qvhighlights",
    device: Device = "auto",
    resume: Resume = False,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    warmup: Warmup = None,
    lr_drop: LrDrop = None,
    seed: Seed = 0,
    workers: Workers = None,
    preload: Preload = "auto",
    k: K = None,
    save_every: SaveEvery = 0,
    max_steps: MaxSteps = None,
    amp: Amp = "auto",
    skip_missing: SkipMissing = False,
    config: Config = None,
    strict_anno: StrictAnno = False,
    domain: Domain = None,
    splits: Splits = "lists",
    split_lists: SplitLists = None,
) -> None:
    """Train R²-Tuning on cached CLIP features; validates every epoch, keeps the best.

    Outputs in --out: best.safetensors/.json (best epoch by the key validation metric:
    MR-full-mAP for QVHighlights, mIoU for Charades-STA/TACoS/Ego4D-NLQ, mAP for YouTube
    Highlights/TVSum; only validated epochs), last.*, resume.safetensors (optimizer, RNG and
    data position for an exact --resume), log.jsonl (one JSON object per log line) and
    train.log. Ctrl-C stops promptly; --resume continues from the last saved state.

    With --domain (YouTube Highlights, TVSum): one such run per domain in OUT/NAME/, then
    the per-domain table (printed, OUT/table.json).

    Several GPUs or machines: `torchrun --nproc_per_node N $(which r2) train ...` (or srun);
    the batch size is the global batch, rank 0 writes the outputs.
    """
    options = dict(locals())
    from r2.errors import cli_errors

    hint = f"the last saved state is in {out} (continue with --resume)"
    with cli_errors(hint):
        per_domain = domain_options(options)
        kwargs = train_options(options)
        if per_domain:
            table = run_train(kwargs, per_domain)
        else:
            summary = run_train(kwargs)
    from r2.train.distributed import from_env

    if (from_env() or (0,))[0] != 0:  # one summary for a distributed run: rank 0's
        return
    if per_domain:
        from r2.evaluate.domains import TABLE_NAME, format_domain_table

        print(format_domain_table(table))
        print(f"per-domain runs in {out}/<domain>/; table: {out / TABLE_NAME}")
    else:
        print(format_summary(summary, out))


def domain_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """Take --domain, --splits, --split-lists out of `options`: None without --domain."""
    domain, splits, lists = (options.pop(k) for k in ("domain", "splits", "split_lists"))
    if domain is None:
        if splits != "lists" or lists is not None:
            raise UsageError("--splits and --split-lists: only with --domain")
        return None
    return {"domain": domain, "splits": splits, "split_lists": lists}


def train_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check the command-line options; returns the keyword arguments of `r2.train.train`.

    Raises:
        UsageError: naming the option (several bad --config values are reported together).
    """
    from r2.device import resolve_device
    from r2.fields import parse_assignments
    from r2.train.config import ConfigError, R2Config

    for name, choices in (("preload", PRELOAD_CHOICES), ("amp", AMP_CHOICES)):
        if options[name] not in choices:
            raise UsageError(f"--{name} {options[name]}: must be one of {', '.join(choices)}")
    resolve_device(options["device"])
    try:
        options["config"] = parse_assignments(R2Config, options["config"] or [])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return options


def run_train(kwargs: dict[str, Any], per_domain: dict[str, Any] | None = None) -> dict[str, Any]:
    """`r2.train.train` (or, with `per_domain`, `r2.train.train_domains`: returns the table)
    with console logging and progress bars that do not garble it."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from r2.train import train, train_domains

    with logging_redirect_tqdm():
        if per_domain:
            return train_domains(**kwargs, **per_domain)
        return train(**kwargs)


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """The last line of `r2 train`: where it stopped and the best checkpoint ON DISK."""
    best = summary.get("best")
    if summary.get("best_checkpoint") is None:
        shown = "none (no validated epoch; use last.safetensors)"
    else:
        shown = f"{best:.2f} (epoch {summary['best_epoch']})"
    return (
        f"{'finished' if summary['finished'] else 'stopped'} at epoch {summary['epoch']}, "
        f"step {summary['step']} in {summary.get('seconds', 0.0):.1f} s; "
        f"best {summary['key_metric']}: {shown}; "
        f"checkpoints in {out}"
    )


def convert_command(
    src: Annotated[Path, typer.Argument(help="Original R2-Tuning checkpoint (.pth/.safetensors).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors in r2's layout.")],
    preset: Annotated[
        str, typer.Option(help=f"Dataset the weights were trained on: {PRESET_HELP}.")
    ] = "qvhighlights",
) -> None:
    """Import an official R2-Tuning checkpoint (original key layout) as r2 weights.

    Unknown, missing or mis-shaped keys are refused with the full list, and so are weights
    holding NaN or infinity. Torch files are read weights-only (nothing is unpickled). The
    model configuration is read from the tensor shapes and stored in the output's metadata.
    """
    from r2.errors import cli_errors
    from r2.train.convert import convert_checkpoint

    with cli_errors():
        model = convert_checkpoint(src, dst, preset=preset)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {src} -> {dst} ({n:,} parameters)")
