"""Tiny R²-Tuning feature releases, generated in the documented layout (not a test module).

`make_release(root, dataset)` writes `clip_b32_vid_k4/{vid}.npy` ((T, 4, 50, 768) float16),
`clip_b32_txt_k4/{qid}.npy` ((L, 4, 512) float16) and the dataset's annotation files
(datasets.md): QVHighlights-schema jsonl for QVHighlights / Ego4D-NLQ / Charades-STA / TACoS
(TACoS feature files named `{vid}-cam-002.npy`), `youtube_anno.json` / `tvsum_anno.json`
keyed by video id with query files named by video id, plus a small per-domain split-lists
file for the latter two. Relevant clips carry a learnable signal in the CLS token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VIDEO_SHAPE, QUERY_SHAPE = (4, 50, 768), (4, 512)
FPS = {"qvhighlights": 0.5, "ego4d": 0.5, "charades": 1.0, "tacos": 0.5, "youtube": 0.5,
       "tvsum": 0.5}  # fmt: skip
SPLITS = {
    "qvhighlights": {"train": "qvhighlights_train.jsonl", "val": "qvhighlights_val.jsonl"},
    "ego4d": {"train": "nlq_train.jsonl", "val": "nlq_val.jsonl"},
    "charades": {"train": "charades_train.jsonl", "test": "charades_test.jsonl"},
    "tacos": {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"},
}
DOMAINS = {"youtube": ("dog", "gymnastics"), "tvsum": ("BK", "VT")}
TINY = {"dims": 16, "heads": 2}  # model size for the end-to-end tests


@dataclass
class Release:
    """A generated release: its folder, the split-lists file (YouTube/TVSum), what it holds."""

    folder: Path
    dataset: str
    splits: Path | None = None
    videos: dict[str, np.ndarray] = field(default_factory=dict)  # feature id -> array
    queries: dict[str, np.ndarray] = field(default_factory=dict)  # qid -> array
    texts: dict[str, str] = field(default_factory=dict)


def _video(rng, t: int, positives: list[int]) -> np.ndarray:
    feats = rng.normal(0, 1, (t, *VIDEO_SHAPE)).astype(np.float16)
    feats[positives, :, 0, :8] += np.float16(2.0)
    return feats


def _query(rng) -> np.ndarray:
    return rng.normal(0, 1, (int(rng.integers(3, 9)), *QUERY_SHAPE)).astype(np.float16)


def _save(rel: Release, kind: str, key: str, array: np.ndarray) -> None:
    folder = rel.folder / ("clip_b32_vid_k4" if kind == "video" else "clip_b32_txt_k4")
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{key}.npy", array)
    (rel.videos if kind == "video" else rel.queries)[key] = array


def _grounding(rel: Release, rng, n_videos: int, queries_per_video: int) -> None:
    fps, qid = FPS[rel.dataset], 0
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS[rel.dataset]}
    splits = list(rows)
    for v in range(n_videos):
        t = int(rng.integers(8, 14))
        vid = {"tacos": f"s{v:02d}-d{v + 20:02d}", "ego4d": f"clip-{v:04d}-uid"}.get(
            rel.dataset, f"vid{v:03d}"
        )
        start = int(rng.integers(0, t - 3))
        window = [start / fps, (start + 3) / fps]
        key = vid + ("-cam-002" if rel.dataset == "tacos" else "")
        _save(rel, "video", key, _video(rng, t, list(range(start, start + 3))))
        n_train = n_videos - max(len(splits) - 1, n_videos // 3)
        split = "train" if v < n_train else splits[1 + (v - n_train) % (len(splits) - 1)]
        for _ in range(queries_per_video):
            text = f"query {qid} about video {vid}"
            row = {"qid": qid if rel.dataset != "ego4d" else f"q-{qid}", "query": text,
                   "duration": t / fps, "vid": vid, "relevant_windows": [window]}  # fmt: skip
            if rel.dataset == "qvhighlights":
                clips = list(range(int(window[0] / 2), int(window[1] / 2)))
                row.update(relevant_clip_ids=clips, saliency_scores=[[2, 3, 4]] * len(clips))
            rows[split].append(row)
            _save(rel, "query", str(row["qid"]), _query(rng))
            rel.texts[str(row["qid"])] = text
            qid += 1
    for split, name in SPLITS[rel.dataset].items():
        (rel.folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows[split]))


def _keyed(rel: Release, rng, per_domain: tuple[int, int]) -> None:
    anno, lists = {}, {}
    for d, domain in enumerate(DOMAINS[rel.dataset]):
        lists[domain] = {"train": [], "val": []}
        for i in range(sum(per_domain)):
            vid = f"{domain}-{i:02d}x"
            t = int(rng.integers(8, 14))
            lists[domain]["train" if i < per_domain[0] else "val"].append(vid)
            if rel.dataset == "youtube":
                match = [int(x) for x in rng.integers(-1, 2, t)]
                match[d + i % 3] = 1
                positives = [j for j, m in enumerate(match) if m > 0]
                title = f"{domain} video {i}: the best moments"
                frames = int(t * rng.integers(40, 90))  # at 30 fps: a per-video clip rate
                anno[vid] = {"match": match, "info": [vid, domain, "x", t * 2, "y", title],
                             "frames": frames, "fps": 30.0,
                             "clip": [[50 * j, 50 * j + 100] for j in range(t)]}  # fmt: skip
            else:
                scores = rng.integers(1, 6, (t, 20))
                positives = list(np.argsort(-scores.sum(1))[:3])
                title = f"{domain} video {i}"
                anno[vid] = {"title": title, "anno": scores.tolist()}
            _save(rel, "video", vid, _video(rng, t, positives))
            _save(rel, "query", vid, _query(rng))
            rel.texts[vid] = title
    rel.folder.mkdir(parents=True, exist_ok=True)
    (rel.folder / f"{rel.dataset}_anno.json").write_text(json.dumps(anno))
    key = "youtube_highlights" if rel.dataset == "youtube" else "tvsum"
    rel.splits = rel.folder.parent / f"{rel.dataset}_splits.json"
    rel.splits.write_text(json.dumps({key: lists}))


def make_release(
    root: Path, dataset: str, n_videos: int = 6, queries_per_video: int = 2, seed: int = 0,
    per_domain: tuple[int, int] = (3, 1),
) -> Release:  # fmt: skip
    """Generate a tiny release of `dataset` in `root/dataset` (module docstring)."""
    rel = Release(root / dataset, dataset)
    rng = np.random.default_rng(seed)
    if dataset in DOMAINS:
        _keyed(rel, rng, per_domain)
    else:
        _grounding(rel, rng, n_videos, queries_per_video)
    return rel
