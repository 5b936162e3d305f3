"""Loading a HuggingFace CLIP's parts, never a random model: files, preprocessing, identity.

`probe_model` resolves a hub id (after ONE quick reachability probe, `identity.hub_access`)
or a local folder, reads its config and preprocessing, and fingerprints its files;
`load_tower` / `load_tokenizer` then load the parts `ClipEncoder.load` needs. Every failure
is a `ModelLoadError` that says how to fix it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from r2.errors import UsageError
from r2.extract import identity

log = logging.getLogger(__name__)

PIXEL_SCALE = 255.0  # uint8 -> [0, 1], as torchvision's ToTensor
_COMMIT_RE = re.compile(r"snapshots/([0-9a-f]{40})(/|$)")


class ModelLoadError(UsageError, RuntimeError):
    """The CLIP model (or a file of it) could not be loaded; never replaced by a random model."""


def _load_error(model: str, revision: str | None, err: BaseException) -> ModelLoadError:
    rev = f" at revision {revision!r}" if revision else ""
    return ModelLoadError(
        f"could not load the CLIP model {model!r}{rev}: {type(err).__name__}: {err}\n"
        "r2 never substitutes a random model. To fix it, either\n"
        "  - run once with internet access so the model lands in the HuggingFace cache\n"
        "    (~/.cache/huggingface, or $HF_HOME), then work offline with HF_HUB_OFFLINE=1; or\n"
        "  - pass --clip /path/to/folder, a local folder with config.json, model.safetensors,\n"
        "    the tokenizer files and preprocessor_config.json (e.g. `save_pretrained` output)."
    )


def _resolve_model(
    model: str, revision: str | None, cache_dir: str | None, local_only: bool
) -> tuple[str, str | None]:
    """Resolve `model` to its config file; return (revision to load with, commit hash or None)."""
    from transformers.utils import cached_file

    try:
        config_file = cached_file(
            model,
            "config.json",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_only,
        )
    except Exception as err:
        raise _load_error(model, revision, err) from err
    if config_file is None:
        raise _load_error(model, revision, FileNotFoundError("config.json not found"))
    # Not resolve(): files in the HF cache are symlinks from snapshots/<commit>/ into blobs/.
    found = _COMMIT_RE.search(Path(config_file).absolute().parent.as_posix() + "/")
    commit = found.group(1) if found else None
    return (commit or revision), commit


def _read_preprocessing(
    model: str, revision: str | None, cache_dir: str | None, local_only: bool
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Image size, mean and std from the model's preprocessor_config.json."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            model,
            "preprocessor_config.json",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_only,
        )
        cfg = json.loads(Path(path).read_text())
    except Exception as err:
        raise _load_error(model, revision, err) from err

    def side(value: object, key: str) -> int:
        if isinstance(value, dict):
            value = value.get("shortest_edge", value.get("height"))
        if not isinstance(value, int):
            raise ModelLoadError(f"{path}: field {key!r} must give one square size, got {value!r}")
        return value

    size = side(cfg.get("size"), "size")
    crop = side(cfg.get("crop_size", size), "crop_size")
    if size != crop:
        raise ModelLoadError(f"{path}: shorter-side size {size} != crop size {crop}; unsupported")
    scale = cfg.get("rescale_factor", 1 / PIXEL_SCALE)
    if not cfg.get("do_rescale", True) or abs(scale * PIXEL_SCALE - 1) > 1e-9:
        raise ModelLoadError(f"{path}: only rescale_factor 1/255 is supported, got {scale}")
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if not cfg.get("do_normalize", True) or len(mean or ()) != 3 or len(std or ()) != 3:
        raise ModelLoadError(f"{path}: image_mean / image_std must be 3 values each")
    return crop, tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _fingerprints(
    model: str, requested: str | None, revision: str | None, cache_dir: str | None, local_only: bool
) -> tuple[str, str]:
    """(model fingerprint, tokenizer fingerprint) from the model's files (identity.py)."""
    from transformers.utils import cached_file

    def find(name: str) -> str | None:
        return cached_file(model, name, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_only,
                           _raise_exceptions_for_missing_entries=False)  # fmt: skip

    try:
        return identity.model_fingerprint(find), identity.tokenizer_fingerprint(find)
    except Exception as err:
        raise _load_error(model, requested, err) from err


@contextmanager
def _quiet_transformers():
    """Hide transformers' load report (the other tower's weights are 'unexpected') and bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_tower(cls: type, model: str, revision: str | None, cache_dir, local_only: bool):
    """Load one CLIP tower with its pretrained weights; a missing weight is an error."""
    try:
        with _quiet_transformers():
            tower, info = cls.from_pretrained(
                model,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_only,
                output_loading_info=True,
            )
    except Exception as err:
        raise _load_error(model, revision, err) from err
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise _load_error(
            model, revision, ValueError(f"weights missing from the checkpoint: {missing[:5]}")
        )
    return tower.eval().requires_grad_(False)


@dataclass(frozen=True)
class ModelSource:
    """A resolved CLIP model: where its files are, what they say, what they are."""

    model: str  # as given (hub id or folder)
    model_id: str  # hub id, or the folder's resolved absolute path (recorded in caches)
    requested: str | None  # the revision asked for
    revision: str | None  # the revision to load with (the commit when resolved)
    commit: str | None  # the resolved commit hash (hub snapshots), else None
    cache_dir: str | None
    local_only: bool  # load with local_files_only (offline, or the hub is unreachable)
    config: object  # transformers.CLIPConfig
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_fingerprint: str
    tokenizer_fingerprint: str

    @property
    def where(self) -> dict:
        return {"revision": self.revision, "cache_dir": self.cache_dir,
                "local_only": self.local_only}  # fmt: skip


def probe_model(
    model: str, revision: str | None, cache_dir: str | None, local_files_only: bool
) -> ModelSource:
    """Resolve a CLIP model, read its config and preprocessing and fingerprint its files.

    Raises:
        ModelLoadError: unreachable, absent, incomplete or inconsistent model (how to fix it
            in the message).
    """
    from transformers import CLIPConfig

    if identity.looks_like_path(model) and not identity.is_local(model):
        what = "is a file, not a model folder" if os.path.exists(model) else "not found"
        raise _load_error(model, revision, FileNotFoundError(f"{model}: {what}"))
    try:
        local_only = identity.hub_access(model, revision, cache_dir, local_files_only)
    except identity.HubUnreachableError as err:
        raise ModelLoadError(str(err)) from None
    rev, commit = _resolve_model(model, revision, cache_dir, local_only)
    where = {"revision": rev, "cache_dir": cache_dir, "local_only": local_only}
    try:
        config = CLIPConfig.from_pretrained(
            model, revision=rev, cache_dir=cache_dir, local_files_only=local_only
        )
    except Exception as err:
        raise _load_error(model, revision, err) from err
    image_size, mean, std = _read_preprocessing(model, **where)
    if image_size != config.vision_config.image_size:
        raise ModelLoadError(
            f"{model!r}: preprocessor crop size {image_size} != vision image_size "
            f"{config.vision_config.image_size}"
        )
    model_fp, tokenizer_fp = _fingerprints(model, revision, **where)
    local = identity.is_local(model)
    model_id = os.path.realpath(os.path.expanduser(model)) if local else model
    return ModelSource(model, model_id, revision, rev, commit, cache_dir, local_only, config,
                       image_size, mean, std, model_fp, tokenizer_fp)  # fmt: skip


def load_tower(cls: type, src: ModelSource):
    """One CLIP tower (CLIPVisionModel / CLIPTextModel) with its pretrained weights."""
    return _load_tower(cls, src.model, **src.where)


def load_tokenizer(src: ModelSource):
    """The model's CLIPTokenizer."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(
            src.model, revision=src.revision, cache_dir=src.cache_dir,
            local_files_only=src.local_only,
        )  # fmt: skip
    except Exception as err:
        raise _load_error(src.model, src.requested, err) from err
