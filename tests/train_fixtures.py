"""Helpers for the training / checkpoint / inference tests: tiny caches and annotations.

Not a test module (no `test_` prefix); imported by tests/test_train_*.py,
tests/test_checkpoint.py and tests/test_inference.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from r2.cache import CacheSettings, CacheWriter, QueryRecord, VideoRecord

FPS = 0.5
SETTINGS = CacheSettings(
    model_id="tiny-clip", revision=None, k=2, fps=FPS, frame_at="middle", image_size=32,
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dtype="fp32",
    tokens_per_frame=3, video_dim=8, text_dim=6, model_fingerprint="sha256:" + "0" * 64,
    tokenizer_fingerprint="clean1:sha256:" + "1" * 64,
)  # fmt: skip
# A tiny model over SETTINGS (seconds per test, not minutes).
TINY = {"dims": 16, "heads": 2}


def make_annotations(
    n: int, seed: int = 0, min_clips: int = 5, max_clips: int = 14, qid_start: int = 0
) -> list[dict]:
    """QVHighlights-schema annotations with one or two windows and saliency scores."""
    rng = np.random.default_rng(seed)
    annos = []
    for i in range(n):
        t = int(rng.integers(min_clips, max_clips + 1))
        start = int(rng.integers(0, t - 1))
        end = int(rng.integers(start + 1, min(t, start + 4) + 1))
        clips = list(range(start, end))
        scores = [[int(x) for x in rng.integers(0, 5, 3)] for _ in clips]
        scores[0][0] = max(scores[0][0], 1)  # at least one positive clip
        annos.append(
            {
                "qid": qid_start + i,
                "query": f"query number {qid_start + i}",
                "duration": t / FPS,
                "vid": f"vid{qid_start + i:03d}",
                "relevant_windows": [[start / FPS, end / FPS]],
                "relevant_clip_ids": clips,
                "saliency_scores": scores,
            }
        )
    return annos


def write_jsonl(path: Path, annos: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(a) for a in annos))
    return path


def make_cache(
    path: Path,
    annos: list[dict],
    seed: int = 0,
    settings: CacheSettings = SETTINGS,
) -> Path:
    """A cache with random features; clips inside a window get a learnable signal."""
    rng = np.random.default_rng(seed)
    s = settings
    with CacheWriter(path, s) as w:
        for a in annos:
            t = round(a["duration"] * s.fps)
            feats = rng.normal(0, 1, (t, s.k, s.tokens_per_frame, s.video_dim))
            for c in a.get("relevant_clip_ids") or []:
                if c < t:
                    feats[c, :, :, 0] += 2.0
            rec = VideoRecord(
                vid=str(a["vid"]),
                duration=float(a["duration"]),
                n_clips=t,
                source=f"/videos/{a['vid']}.mp4",
                size=1,
                mtime=0.0,
                partial=False,
            )
            w.add_video(rec, feats.astype(np.float16))
        records, feats = [], []
        for a in annos:
            n_tok = int(rng.integers(2, 6))
            records.append(
                QueryRecord(
                    qid=str(a["qid"]), text=a.get("query", ""), n_tokens=n_tok, truncated=False
                )
            )
            feats.append(rng.normal(0, 1, (n_tok, s.k, s.text_dim)).astype(np.float16))
        w.add_queries(records, feats)
    return path


def tiny_run(tmp_path: Path, n_train: int = 12, n_val: int = 4) -> dict[str, Path]:
    """A cache + train/val jsonl for the tiny training tests."""
    train = make_annotations(n_train, seed=1)
    val = make_annotations(n_val, seed=2, qid_start=1000)
    cache = make_cache(tmp_path / "tiny.h5", train + val)
    return {
        "cache": cache,
        "train": write_jsonl(tmp_path / "train.jsonl", train),
        "val": write_jsonl(tmp_path / "val.jsonl", val),
    }


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is ~10x faster (no spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
