"""Write a cache in format version 1 exactly as r2 0.1.0 did (not a test module).

Format 1 has no per-video fps, no checksums and no settings digest; r2 reads such files
and refuses to append to them until `r2 cache compact` upgrades them.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from r2.cache import CacheSettings, QueryRecord, VideoRecord
from r2.cache.layout import QUERY_ROW_V1, VIDEO_ROW_V1


def _slot(seq: int, counts: list[int]) -> np.ndarray:
    body = np.asarray([seq, *counts], dtype="<i8")
    return np.concatenate([body, [zlib.crc32(body.tobytes()), 0]]).astype("<i8")


def write_v1_cache(
    path: Path,
    settings: CacheSettings,
    videos: list[tuple[VideoRecord, np.ndarray]],
    queries: list[tuple[QueryRecord, np.ndarray]],
) -> Path:
    """A format-1 cache holding `videos` and `queries` (in that order, one commit)."""
    s = settings
    pool, vrows, qrows = b"", [], []
    frames, tokens = [], []
    n_frames = n_tokens = 0
    for record, feats in videos:
        vid, source = record.vid.encode(), record.source.encode()
        vrows.append((len(pool), len(vid), len(pool) + len(vid), len(source), n_frames,
                      record.n_clips, record.duration, record.size, record.mtime,
                      record.partial))  # fmt: skip
        pool += vid + source
        frames.append(feats)
        n_frames += len(feats)
    for record, feats in queries:
        qid, text = record.qid.encode(), record.text.encode()
        qrows.append((len(pool), len(qid), len(pool) + len(qid), len(text), n_tokens,
                      len(feats), record.n_tokens, record.truncated))  # fmt: skip
        pool += qid + text
        tokens.append(feats)
        n_tokens += len(feats)
    attrs = {k: v for k, v in asdict(s).items() if v is not None}
    for new in ("model_fingerprint", "tokenizer_fingerprint"):
        attrs.pop(new, None)
    attrs.update(format="r2-feature-cache", format_version=1, r2_version="0.1.0",
                 created="2025-01-01T00:00:00+00:00", feature_dtype="float16",
                 mean=np.asarray(s.mean), std=np.asarray(s.std))  # fmt: skip
    counts = [len(vrows), n_frames, len(qrows), n_tokens, len(pool)]
    with h5py.File(path, "w", libver=("v110", "v110")) as f:
        f.attrs.update(attrs)
        f["committed"] = np.stack([_slot(1, counts), _slot(0, [0] * 5)])
        f.create_dataset("strings", data=np.frombuffer(pool, np.uint8), maxshape=(None,))
        f.create_dataset("video/index", data=np.array(vrows, VIDEO_ROW_V1), maxshape=(None,))
        f.create_dataset("query/index", data=np.array(qrows, QUERY_ROW_V1), maxshape=(None,))
        for name, parts, row in (("video/frames", frames, (s.k, s.tokens_per_frame, s.video_dim)),
                                 ("query/tokens", tokens, (s.k, s.text_dim))):  # fmt: skip
            data = np.concatenate(parts) if parts else np.zeros((0, *row), np.float16)
            f.create_dataset(name, data=data, maxshape=(None, *row), chunks=(1, *row))
    return path
