"""A small end-to-end setup for the API and CLI tests (not a test module): a tiny random
CLIP, one generated video extracted into a cache with its queries, and a random tiny
checkpoint whose cache settings name that CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from videogen import write_video

from r2.cache import FeatureCache
from r2.extract import extract
from r2.extract.tiny_clip import make_tiny_clip
from r2.train.checkpoint import build_meta, save_checkpoint
from r2.train.config import QVHIGHLIGHTS
from r2.train.model import R2Model

N_CLIPS = 23  # 46 s at 0.5 clip/s: not a multiple of the chunk sizes the tests use
QUERIES = ["a man opens the fridge", "the dog runs on the beach at night"]


def make_setup(root: Path) -> dict:
    """Build everything under `root`; returns paths (video, cache, anno, ckpt) and the model."""
    clip = str(make_tiny_clip(root / "clip"))
    video = write_video(root / "vid1.mp4", N_CLIPS * 2 * 10, fps=10, size=(80, 60),
                        keyint=10, content="texture")  # fmt: skip
    rows = [{"qid": i, "query": q, "vid": "vid1", "duration": N_CLIPS * 2.0,
             "relevant_windows": [[4, 10]], "relevant_clip_ids": [2, 3, 4],
             "saliency_scores": [[2, 3, 4]] * 3} for i, q in enumerate(QUERIES)]  # fmt: skip
    anno = root / "val.jsonl"
    anno.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_anno = root / "test.jsonl"
    test_anno.write_text("".join(json.dumps({k: r[k] for k in ("qid", "query", "vid", "duration")})
                                 + "\n" for r in rows))  # fmt: skip
    cache = root / "cache.h5"
    extract([video], cache, [anno], model=clip, workers=0)
    with FeatureCache(cache) as c:
        settings = c.settings
    torch.manual_seed(0)
    cfg = QVHIGHLIGHTS.model_config(video_dim=settings.video_dim, query_dim=settings.text_dim,
                                    k=settings.k, dims=32, heads=4)  # fmt: skip
    model = R2Model(cfg).eval()
    with torch.no_grad():  # live gates and scales, as after training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    ckpt = save_checkpoint(root / "run" / "best", model, build_meta(cfg, QVHIGHLIGHTS, settings))
    return {"video": video, "cache": cache, "anno": anno, "test_anno": test_anno, "ckpt": ckpt,
            "run": ckpt.parent, "model": model}  # fmt: skip
