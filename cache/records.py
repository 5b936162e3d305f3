"""Plain data of the cache: settings, per-item records, errors. No file access here."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from r2.errors import RunFailureError, UsageError

FORMAT_NAME = "r2-feature-cache"  # root attribute `format`: marks an HDF5 file as an r2 cache
FORMAT_VERSION = 2  # root attribute `format_version`; bump on any incompatible layout change
READABLE_VERSIONS = (1, 2)  # versions this r2 reads; it writes (appends to) FORMAT_VERSION only
FRAME_AT_CHOICES = ("middle", "start")
DTYPE_CHOICES = ("fp32", "fp16", "bf16")


class CacheError(UsageError):
    """A cache file cannot be used: not a cache, corrupt, locked, or misused. Names the path."""


class CacheWriteError(RunFailureError, CacheError):
    """Writing to a cache failed (disk full, I/O error); items committed before are intact.

    A runtime failure (exit code 1), not bad input: the writer is closed, the file valid.
    """


class CacheMismatchError(CacheError):
    """A writer's settings differ from the cache's. `differences` lists every differing field."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


def _float_tuple(value: object, name: str, problems: list[str]) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        problems.append(f"{name} must be 3 numbers, got {value!r}")
        return ()
    if len(out) != 3 or not all(math.isfinite(x) for x in out):
        problems.append(f"{name} must be 3 finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class CacheSettings:
    """Everything that determines the cached features.

    Two settings describe the same features when every field is equal, except that the
    CLIP model is compared by identity (`r2.cache.identity`): by content fingerprint when
    both sides know it, else by name (model_id + revision).
    """

    model_id: str
    """HuggingFace hub id, or the resolved absolute path of a local folder, of the CLIP model."""
    revision: str | None
    """Model commit hash when known (hub models), else None."""
    k: int
    """Number of kept CLIP layers (the last K blocks)."""
    fps: float
    """Clips (sampled frames) per second of video."""
    frame_at: str
    """Which frame represents a clip: "middle" (the original's ffmpeg fps filter) or "start"."""
    image_size: int
    """Side in pixels of the square centre crop fed to the vision tower."""
    mean: tuple[float, float, float]
    """Per-channel normalisation mean (RGB, on [0, 1] pixels)."""
    std: tuple[float, float, float]
    """Per-channel normalisation standard deviation (RGB)."""
    dtype: str
    """Compute dtype of the encoder: "fp32", "fp16" or "bf16" (features are stored as float16)."""
    tokens_per_frame: int
    """P: tokens per frame (CLS + patches)."""
    video_dim: int
    """Dv: vision hidden size."""
    text_dim: int
    """Dq: text hidden size."""
    model_fingerprint: str | None = None
    """Content hash of the CLIP's config.json and weight files ("sha256:<hex>", see
    r2.extract.identity); None when unknown (caches and checkpoints made before r2 0.2)."""
    tokenizer_fingerprint: str | None = None
    """Identity of the query tokenization: "clean<N>:sha256:<hex>", the text-cleaning rule
    version N and a hash of the tokenizer files; None when unknown."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("model_id", "frame_at", "dtype"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("revision", "model_fingerprint", "tokenizer_fingerprint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a string or None, got {value!r}")
        if self.frame_at not in FRAME_AT_CHOICES:
            problems.append(f"frame_at must be one of {FRAME_AT_CHOICES}, got {self.frame_at!r}")
        if self.dtype not in DTYPE_CHOICES:
            problems.append(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        for name in ("k", "image_size", "tokens_per_frame", "video_dim", "text_dim"):
            value = getattr(self, name)  # numpy integers (from HDF5 attributes) become int
            if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
            else:
                object.__setattr__(self, name, int(value))
        try:
            fps = float(self.fps)
            if not (math.isfinite(fps) and fps > 0):
                problems.append(f"fps must be a positive number, got {self.fps!r}")
            object.__setattr__(self, "fps", fps)
        except (TypeError, ValueError):
            problems.append(f"fps must be a positive number, got {self.fps!r}")
        object.__setattr__(self, "mean", _float_tuple(self.mean, "mean", problems))
        object.__setattr__(self, "std", _float_tuple(self.std, "std", problems))
        if self.std and any(x <= 0 for x in self.std):
            problems.append(f"std must be positive, got {self.std!r}")
        if problems:
            raise ValueError("invalid CacheSettings: " + "; ".join(problems))

    def mismatches(self, other: CacheSettings) -> list[str]:
        """Every difference, as "field: <self's value> vs <other's value>".

        The CLIP model and the tokenizer are compared by identity (`r2.cache.identity`):
        fingerprints when both sides know them, names otherwise.
        """
        from .identity import IDENTITY_FIELDS, model_difference, tokenizer_difference

        out = [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if f.name not in IDENTITY_FIELDS and getattr(self, f.name) != getattr(other, f.name)
        ]
        identity = (model_difference(self, other), tokenizer_difference(self, other))
        return [d for d in identity if d] + out


@dataclass(frozen=True)
class VideoRecord:
    """Metadata of one cached video."""

    vid: str
    """Video id (any string; never used as a path)."""
    duration: float
    """Duration in seconds."""
    n_clips: int
    """T: number of clips = rows of the feature array."""
    source: str
    """Path of the source file the features were extracted from."""
    size: int
    """Source file size in bytes at extraction time."""
    mtime: float
    """Source file modification time (os.stat st_mtime) at extraction time."""
    partial: bool
    """True when the source was damaged and only a decodable prefix was used."""
    fps: float | None = None
    """Clips per second of this video; None: the cache's `fps` (`FeatureCache.video_fps`)."""


@dataclass(frozen=True)
class QueryRecord:
    """Metadata of one cached query."""

    qid: str
    """Query id (`str(qid)` of the annotation; never used as a path)."""
    text: str
    """The query text as given to the encoder."""
    n_tokens: int
    """Number of tokens reported by the encoder (start .. end-of-text)."""
    truncated: bool
    """True when the text was longer than the text tower's context and was cut."""
