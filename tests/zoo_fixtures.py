"""A fake Hugging Face hub cache holding an original-layout R2-Tuning checkpoint (no network).

`original_state_dict` renames an `R2Model`'s weights back to the original implementation's
keys (the inverse of r2.train.convert's table, checked key by key), so a test can write a
`.pth` exactly as the released files are laid out and put it where huggingface_hub looks.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from r2.train.convert import SALIENCY_SCALE_KEY, rename_key
from r2.train.model import R2Model
from r2.zoo import ZooEntry

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_TEM = "block.steps.0.temporal.layers.0."
_INVERSE = [
    (r"^pyramid\.levels\.(\d+)\.(\d+)\.(conv|norm)\.(weight|bias)$", None),
    (r"^block\.(gate|scale)$", r"adapter.\1"),
    (r"^block\.steps\.0\.(video_map|query_map|v_map|q_map)\.(.+)$", r"adapter.\1.\2"),
    (rf"^{_TEM}(cross_att|self_att)\.out\.(.+)$", r"adapter.tem.\1.m.\2"),
    (rf"^{_TEM}(cross_att|self_att)\.([qkv])\.(.+)$", r"adapter.tem.\1.\2.\3"),
    (rf"^{_TEM}cross_norm\.(.+)$", r"adapter.tem.cross_att_norm.\1"),
    (rf"^{_TEM}self_norm\.(.+)$", r"adapter.tem.self_att_norm.\1"),
    (rf"^{_TEM}ffn\.([02])\.(.+)$", r"adapter.tem.ffn.mapping.\1.\2"),
    (rf"^{_TEM}ffn_norm\.(.+)$", r"adapter.tem.ffn_norm.\1"),
    (r"^query_pool\.att\.weight$", "pooling.att.weight"),
    (r"^(class_head|coord_head)\.conv1\.(.+)$", r"\1.module.1.\2"),
    (r"^(class_head|coord_head)\.conv2\.(.+)$", r"\1.module.3.\2"),
    (r"^coord_scale$", "coef"),
]


def original_key(key: str) -> str:
    """The original implementation's name of one of our keys."""
    for pattern, repl in _INVERSE:
        m = re.match(pattern, key)
        if m and repl is None:  # pyramid: [Permute, Conv, Permute, LN, ReLU] per stage
            pos = 5 * int(m[2]) + (1 if m[3] == "conv" else 3)
            return f"pyramid.blocks.{m[1]}.{pos}.{m[4]}"
        if m:
            return re.sub(pattern, repl, key)
    raise KeyError(key)


def original_state_dict(model: R2Model) -> dict[str, torch.Tensor]:
    """`model`'s weights under the original keys, plus the saliency loss buffer."""
    sd = {}
    for key, value in model.state_dict().items():
        old = original_key(key)
        assert rename_key(old) == key, (key, old)
        sd[old] = value.clone()
    sd[SALIENCY_SCALE_KEY] = torch.tensor([math.log(1 / model.cfg.temperature)])
    return sd


def write_fake_hub_file(hub_cache: Path, entry: ZooEntry, payload: dict) -> Path:
    """Put `payload` (torch.save'd) where huggingface_hub caches `entry.filename`."""
    repo = hub_cache / f"models--{entry.repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    path = repo / "snapshots" / FAKE_COMMIT / entry.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path
