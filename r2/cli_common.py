"""Checks and loading shared by the commands that run a checkpoint on videos
(`predict`, `summarize`, `app`): one-line errors before any long work."""

from __future__ import annotations

import os
from pathlib import Path

from r2.errors import UsageError

DEFAULT_CHECKPOINT = "demo_out/run"
CHECKPOINT_HELP = "Run folder, .safetensors checkpoint, or official:NAME (see `r2 models`)."
PARTIAL_HINT = "(--allow-partial uses the part of a damaged video that decodes)"
CLIP_DTYPES = ("fp32", "bf16", "fp16")
CLIP_DTYPE_HELP = (
    "CLIP compute dtype for encoding videos: fp32 | bf16 | fp16. Default: the dtype the "
    "checkpoint's training features were extracted with (fp32 on CPU: the released "
    "features' numbers, float16 storage). bf16 encodes 2.9x faster on CPUs with bfloat16 "
    "instructions (ViT-B/32, 2 cores: 63 vs 22 frames/s); measured cost "
    "(benchmarks/clip_precision.py, ViT-B/32 with random weights, real frames and queries): "
    "features differ from fp32 by 0.8-1.0% (relative L2; worst token cosine 0.99993; "
    "float16 storage alone changes 0.02%); a model trained on fp32 features kept its top-1 "
    "window for 38 of 39 queries, saliency within 0.008, R1@0.7 -2.6 (that one query), "
    "mAP -0.8."
)


def check_video_file(path: str | os.PathLike, what: str = "video") -> Path:
    """A video file that exists (UsageError "not found" / "is a folder" otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give a {what} file")
    if not path.exists():
        raise UsageError(f"{path}: {what} file not found")
    return path


def check_clip_option(clip: str | None) -> str | None:
    """`--clip`: a local folder must exist; a hub id (org/name) is left to the loader."""
    if clip is None:
        return None
    path = Path(clip).expanduser()
    looks_local = path.is_absolute() or clip.startswith((".", "~")) or clip.count("/") != 1
    if path.is_file():
        raise UsageError(f"{clip}: is a file; --clip takes a CLIP model folder or hub id")
    if looks_local and not path.is_dir():
        raise UsageError(f"{clip}: CLIP model folder not found")
    return str(path) if path.is_dir() else clip


def check_clip_dtype(dtype: str | None) -> str | None:
    """`--clip-dtype`: one of CLIP_DTYPES, or None (the checkpoint's extraction dtype)."""
    if dtype is not None and dtype not in CLIP_DTYPES:
        raise UsageError(f"--clip-dtype must be one of {', '.join(CLIP_DTYPES)}, got {dtype!r}")
    return dtype


def load_predictor(checkpoint: str, device: str, clip: str | None, clip_dtype: str | None = None):
    """`R2Predictor.from_pretrained` with the command line's error conventions."""
    from r2.api import R2Predictor

    try:
        return R2Predictor.from_pretrained(
            checkpoint, device=device, clip_model=clip, clip_dtype=check_clip_dtype(clip_dtype)
        )
    except ValueError as err:  # CLIP does not match the checkpoint's features
        raise UsageError(str(err)) from None


def video_error_hint(message: str, allow_partial: bool) -> str | None:
    """The --allow-partial hint, only for files that failed midway (where it helps)."""
    if allow_partial:
        return None
    helps = "cannot read the file:" in message or (
        "decoding failed after" in message and "decoding failed after 0 of" not in message
    )
    return PARTIAL_HINT if helps else None
