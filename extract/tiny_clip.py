"""A tiny random CLIP saved as a complete HuggingFace folder, for tests and the offline demo.

The folder loads with `CLIPModel.from_pretrained`, `CLIPTokenizer.from_pretrained` and the
image-processor config loader, exactly like `openai/clip-vit-base-patch32`, so every code path
of `ClipEncoder` runs on it. It is NOT a substitute for the real model: its features are
random. The tokenizer is a byte-level BPE built in code (the 256 byte symbols, their
end-of-word forms, a few merges and the two special tokens), so any text tokenizes.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_IMAGE_SIZE = 32  # pixels, square input of the tiny vision tower
TINY_PATCH_SIZE = 8  # pixels -> (32 / 8)^2 + 1 = 17 tokens per frame
TINY_VISION_WIDTH = 48  # Dv of the tiny model (differs from Dq on purpose: catches axis mix-ups)
TINY_TEXT_WIDTH = 32  # Dq of the tiny model
TINY_LAYERS = 5  # transformer blocks per tower (>= the default K = 4)
TINY_CONTEXT = 77  # text positions, as in CLIP
# Own preprocessing constants (not CLIP's), so tests can see that they are read from the folder.
TINY_MEAN = (0.5, 0.45, 0.4)
TINY_STD = (0.25, 0.3, 0.2)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation (spec §1)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A handful of merges ("the", "and", "ing", ...) so that BPE merging is exercised.
TINY_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("e", "r</w>"),
    ("o", "n</w>"),
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP mapping of the 256 byte values to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes], strict=True))


def _vocab() -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + '</w>', merge results, then the special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in TINY_MERGES]
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def _write_tokenizer(out: Path) -> int:
    """Write vocab.json / merges.txt, then let transformers add its own tokenizer files."""
    from transformers import CLIPTokenizer

    vocab = _vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TINY_MERGES)
    (out / "merges.txt").write_text(merges, encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TINY_CONTEXT,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(out)
    tokenizer.save_pretrained(out)
    return len(vocab)


def _write_preprocessor_config(out: Path, image_size: int, mean, std) -> None:
    """The CLIPImageProcessor JSON (shorter side resize, centre crop, own mean/std)."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def make_tiny_clip(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = TINY_IMAGE_SIZE,
    patch_size: int = TINY_PATCH_SIZE,
    num_layers: int = TINY_LAYERS,
) -> Path:
    """Write a complete HuggingFace CLIP folder holding a tiny random model.

    Args:
        out_dir: folder to create (or overwrite files in).
        seed: torch seed of the random weights; the same seed gives the same weights.
        image_size: square input size of the vision tower, in pixels.
        patch_size: ViT patch size in pixels; tokens per frame = (image_size / patch_size)^2 + 1.
        num_layers: transformer blocks in each tower.

    Returns:
        The folder path, loadable by `CLIPModel.from_pretrained` and `ClipEncoder.load`.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(out)
    vocab = _vocab()
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": TINY_TEXT_WIDTH,
        "intermediate_size": 2 * TINY_TEXT_WIDTH,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "max_position_embeddings": TINY_CONTEXT,
        "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS],
        "pad_token_id": vocab[EOS],
    }
    vision_config = {
        "hidden_size": TINY_VISION_WIDTH,
        "intermediate_size": 2 * TINY_VISION_WIDTH,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    _write_preprocessor_config(out, image_size, TINY_MEAN, TINY_STD)
    return out


def make_random_vit_b32(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a CLIP folder with the full ViT-B/32 architecture and random weights (benchmarks).

    Both towers have CLIP ViT-B/32's sizes (CLIPConfig defaults: 224 px, patch 32, widths
    768 / 512, 12 blocks) and the preprocessor config has CLIP's mean and std, so speed is
    the real model's; the tokenizer is the tiny byte-level one (ids fit CLIP's vocabulary).
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(out)
    vocab = _vocab()
    special = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    config = CLIPConfig(text_config=special, vision_config={})
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out, safe_serialization=True)
    size = config.vision_config.image_size
    _write_preprocessor_config(out, size, CLIP_MEAN, CLIP_STD)
    return out
