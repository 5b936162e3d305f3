"""Checks and loading shared by the commands that run a checkpoint on videos
(`predict`, `summarize`, `app`): one-line errors before any long work."""

from __future__ import annotations

import os
from pathlib import Path

from r2.errors import UsageError

DEFAULT_CHECKPOINT = "demo_out/run"
CHECKPOINT_HELP = "Run folder, .safetensors checkpoint, or official:NAME (see `r2 models`)."
PARTIAL_HINT = "(--allow-partial uses the part of a damaged video that decodes)"


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


def load_predictor(checkpoint: str, device: str, clip: str | None):
    """`R2Predictor.from_pretrained` with the command line's error conventions."""
    from r2.api import R2Predictor

    try:
        return R2Predictor.from_pretrained(checkpoint, device=device, clip_model=clip)
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
