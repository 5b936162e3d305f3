"""Import checkpoints of the original implementation (yeliudev/R2-Tuning) into `R2Model`.

The original's `state_dict` (83 entries for QVHighlights: 82 parameters + the saliency
loss's temperature buffer) is renamed key by key with the table below; unknown, missing
or mis-shaped keys are refused with the full list. Files are read without unpickling
arbitrary objects: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from r2.errors import UsageError

from .config import R2Config
from .model import R2Model

log = logging.getLogger(__name__)


class ConvertError(UsageError, ValueError):
    """An original checkpoint cannot be imported; the message names the file and why."""


_STEP = "block.steps.0"
_TEM = f"{_STEP}.temporal.layers.0"
RENAMES: list[tuple[str, str]] = [
    (r"^adapter\.(gate|scale)$", r"block.\1"),
    (r"^adapter\.(video_map|query_map|v_map|q_map)\.(.+)$", _STEP + r".\1.\2"),
    (r"^adapter\.tem\.(cross_att|self_att)\.m\.(weight|bias)$", _TEM + r".\1.out.\2"),
    (r"^adapter\.tem\.(cross_att|self_att)\.([qkv])\.(weight|bias)$", _TEM + r".\1.\2.\3"),
    (r"^adapter\.tem\.cross_att_norm\.(weight|bias)$", _TEM + r".cross_norm.\1"),
    (r"^adapter\.tem\.self_att_norm\.(weight|bias)$", _TEM + r".self_norm.\1"),
    (r"^adapter\.tem\.ffn\.mapping\.([02])\.(weight|bias)$", _TEM + r".ffn.\1.\2"),
    (r"^adapter\.tem\.ffn_norm\.(weight|bias)$", _TEM + r".ffn_norm.\1"),
    (r"^pooling\.att\.weight$", "query_pool.att.weight"),
    (r"^(class_head|coord_head)\.module\.1\.(weight|bias)$", r"\1.conv1.\2"),
    (r"^(class_head|coord_head)\.module\.3\.(weight|bias)$", r"\1.conv2.\2"),
    (r"^coef$", "coord_scale"),
]
SALIENCY_SCALE_KEY = "loss._loss_sal.scale"
"""The original's saliency-loss buffer log(1/τ); checked against the config, not loaded."""
IGNORED_PREFIXES = ("clip.",)
"""The frozen CLIP backbone (present when the original ran with init=True): not ours."""
_PYRAMID = re.compile(r"^pyramid\.blocks\.(\d+)\.(\d+)\.(weight|bias)$")


def rename_key(key: str) -> str | None:
    """Our name for an original key, or None when the key is not a known one."""
    m = _PYRAMID.match(key)
    if m:  # blocks.s = [Permute, Conv, Permute, LN, ReLU] × s: conv at 5i+1, norm at 5i+3
        level, idx, kind = int(m[1]), int(m[2]), m[3]
        stage, pos = divmod(idx, 5)
        part = {1: "conv", 3: "norm"}.get(pos)
        return None if part is None else f"pyramid.levels.{level}.{stage}.{part}.{kind}"
    for pattern, repl in RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors or a torch file (weights only, no pickled code).

    Torch files may hold the dict itself or wrap it under "state_dict" or "model"; a
    "module." prefix (DataParallel) is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path}: is a folder; give the checkpoint file (.pth/.safetensors)")
    if not path.is_file():
        raise ConvertError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:  # weights_only: tensors and plain containers, never arbitrary pickled objects
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise ConvertError(f"{path}: too large to read into memory") from None
    except Exception as e:  # unpickling refused, not a torch file, truncated, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        kind = "safetensors" if path.suffix == ".safetensors" else "weights-only torch"
        raise ConvertError(
            f"{path}: cannot read as a {kind} checkpoint ({type(e).__name__}: {first[:200]})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConvertError(f"{path}: no state dict of tensors found")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise ConvertError(f"{path}: weights hold NaN or infinity: {shown}")
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def config_from_official(sd: Mapping[str, Tensor], **overrides) -> R2Config:
    """The `R2Config` matching an original state dict's shapes (released defaults for
    everything shapes cannot tell, e.g. heads = 8; override with keyword arguments)."""
    try:
        dims = sd["adapter.v_map.weight"].shape[0]
        in_video = sd["adapter.video_map.0.weight"].shape[0]
        use_tef = in_video % 64 == 2  # CLIP widths are multiples of 64; tef adds 2
        values = dict(
            dims=dims,
            video_dim=in_video - 2 if use_tef else in_video,
            use_tef=use_tef,
            query_dim=sd["adapter.query_map.0.weight"].shape[0],
            k=sd["adapter.scale"].numel(),
            ffn_ratio=sd["adapter.tem.ffn.mapping.0.weight"].shape[0] // dims,
            strides=tuple(2**j for j in range(sd["coef"].numel())),
        )
    except KeyError as e:
        raise ConvertError(f"not an original R2-Tuning state dict: key {e} is missing") from e
    if not any(k.startswith("coord_head.") for k in sd):
        values.update(
            coord_head=False,
            merge_cls_sal=False,
            cls_loss="bce",
            loss_reg_weight=0.0,
            saliency_terms=("row",),
        )
    values.update(overrides)
    return R2Config(**values)


def load_official_state_dict(model: R2Model, sd: Mapping[str, Tensor]) -> None:
    """Load an original-layout state dict into `model` (renamed; strict).

    Raises:
        ConvertError: listing every unknown, missing or mis-shaped key, or a saliency
            temperature that differs from the model's config.
    """
    ours = model.state_dict()
    renamed, unknown, bad_shape = {}, [], []
    for key, value in sd.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        if key == SALIENCY_SCALE_KEY:
            want = math.log(1 / model.cfg.temperature)
            if abs(float(value.reshape(-1)[0]) - want) > 1e-5:
                raise ConvertError(
                    f"{key} = {float(value.reshape(-1)[0])} but the config's "
                    f"temperature {model.cfg.temperature} means {want}"
                )
            continue
        new = rename_key(key)
        if new is None or new not in ours:
            unknown.append(key if new is None else f"{key} (-> {new})")
        elif tuple(value.shape) != tuple(ours[new].shape):
            bad_shape.append(f"{key}: {tuple(value.shape)} vs ours {tuple(ours[new].shape)}")
        else:
            renamed[new] = value
    missing = sorted(set(ours) - set(renamed))
    problems = [f"unknown keys: {unknown}"] * bool(unknown)
    problems += [f"missing keys (ours): {missing}"] * bool(missing)
    problems += [f"shape mismatches: {bad_shape}"] * bool(bad_shape)
    if problems:
        raise ConvertError("cannot load the original state dict: " + "; ".join(problems))
    model.load_state_dict(renamed, strict=True)


def official_cache_settings(fps: float, cfg: R2Config):
    """The feature settings of the original release (openai/clip-vit-base-patch32, 224 px,
    CLIP mean/std, one frame per clip at the clip's middle), for a converted checkpoint."""
    from r2.cache import CacheSettings

    return CacheSettings(
        model_id="openai/clip-vit-base-patch32", revision=None, k=cfg.k, fps=fps,
        frame_at="middle", image_size=224, mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711), dtype="fp32", tokens_per_frame=50,
        video_dim=cfg.video_dim, text_dim=cfg.query_dim,
    )  # fmt: skip


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    preset: str = "qvhighlights",
    extra_meta: dict | None = None,
    **overrides,
) -> R2Model:
    """Convert an original checkpoint to an r2 checkpoint at `dst` (safetensors + JSON).

    The metadata records the model config (read from the tensor shapes), the dataset
    preset (post-processing at inference) and the original release's feature settings, so
    `r2 predict` / `r2 eval --checkpoint` can use the converted weights directly.
    `extra_meta` is stored beside it (e.g. the source file's hash, see r2.zoo).
    """
    from r2.files import ensure_writable

    from .checkpoint import build_meta, save_checkpoint
    from .config import get_preset

    ds = get_preset(preset)
    dst = Path(dst)
    if dst.is_dir():
        raise ConvertError(
            f"{dst}: is a folder; give the output file (e.g. {dst}/model.safetensors)"
        )
    target = dst if dst.suffix == ".safetensors" else dst.with_name(dst.name + ".safetensors")
    ensure_writable(target, "converted checkpoint")  # before reading a large file
    sd = read_state_dict(src)
    cfg = config_from_official(sd, **overrides)
    model = R2Model(cfg)
    load_official_state_dict(model, sd)
    settings = official_cache_settings(ds.fps or 0.5, cfg)
    meta = build_meta(cfg, ds, settings, converted_from=Path(src).name, **(extra_meta or {}))
    path = save_checkpoint(dst, model, meta)
    log.info("converted %s (%d tensors) -> %s", src, len(model.state_dict()), path)
    return model
