"""TVSum from its original release (`ydata-tvsum50.mat`) to QVHighlights-schema jsonl.

Release file: `ydata-tvsum50.mat` (MATLAB v7.3, i.e. HDF5; read with h5py): a struct
`tvsum50` with, per video, `video` (YouTube id), `category` (one of 10 domains), `title`,
`length` (seconds), `nframes` and `user_anno` (nframes x 20 annotators, scores 1-5).

Output (`tvsum_{train,val}.jsonl`, the released per-domain lists of `domain_splits.json`:
4 train / 1 val video per domain), one row per video: `qid` = `vid` = the YouTube id,
`query` = the title, `domain` = the category, `duration` = `length` (s), `label` =
per-2-s-clip scores of the 20 annotators (n_clips x 20), `nframes`.

Per-clip scores, as the released pipeline's files: with fps = nframes / length, n_clips =
floor(((nframes - 1) / fps) / 2), the 2-s clips that end by the last frame's time (for 3
videos one fewer than floor(length / 2)); clip i takes each annotator's score of the frame
at the clip's middle, frame int((2i + 1) x fps) (TVSum's annotators scored 2-s shots, so
this is the shot's score). The
training target is (sum of the 20 scores - 20) / 80, positives are clips above the median;
video and label lengths that differ by fewer than 5 clips are both cut to the shorter at
training time (r2.train.annotations).

Known defects, repaired and counted in the repair table: 4 titles are wrapped in double
quotes (CSV artefacts) and 2 are UTF-8 bytes stored as single characters ("Å\\xa0KODA" for
"ŠKODA", "ViÃ±a" for "Viña"): both fixed (7 rows in all, one title has both).

Agreement with `../testdata/datasets/unified/tvsum` (multisets of (vid, normalised query,
per-clip labels)): train 40 / 40, val 10 / 10 (100 %). Explained difference outside the
compared key: the unified files' `duration` is the number of clips (e.g. 66 for a 133.3 s
video), ours is in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .common import ConvertResult, ReleaseError, RepairLog, find_files, require, write_splits
from .youtube import load_splits

DATASET = "tvsum"
RELEASE_FILE = "ydata-tvsum50.mat"
STRUCT = "tvsum50"
FIELDS = ("video", "category", "title", "length", "nframes", "user_anno")
CLIP_SECONDS = 2.0
ANNOTATORS = 20
SPLITS = ("train", "val")
SPLITS_KEY = "tvsum"


def _value(f, ref):
    """A MATLAB cell value: text (uint16 chars) or a numeric array."""
    data = f[ref][()]
    if data.dtype == np.uint16:
        return "".join(map(chr, data.flatten()))
    return np.asarray(data)


def read_mat(path: Path) -> list[dict]:
    """The 50 videos of the release file, one dict per video (FIELDS)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            struct = f[STRUCT]
            n = struct[FIELDS[0]].shape[0]
            return [{k: _value(f, struct[k][i, 0]) for k in FIELDS} for i in range(n)]
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise ReleaseError(f"{path}: not the TVSum release file ({exc})") from None


def fix_title(title: str, log: RepairLog, split: str, where: str) -> str:
    """Undo the release's CSV quoting and UTF-8-read-as-Latin-1 titles (logged)."""
    text = title.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
        log.add(split, "title wrapped in quotes", "fixed", where)
    if any(ord(c) > 127 for c in text):
        try:
            decoded = text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            decoded = text
        if decoded != text:
            text = decoded
            log.add(split, "title in mis-decoded UTF-8", "fixed", where)
    return text


def clip_scores(user_anno: np.ndarray, length: float) -> np.ndarray:
    """(n_clips, 20) scores of the frame at each 2-s clip's middle (module docstring)."""
    anno = user_anno if user_anno.shape[0] == ANNOTATORS else user_anno.T  # (20, nframes)
    nframes = anno.shape[1]
    fps = nframes / length
    n_clips = int((nframes - 1) / fps / CLIP_SECONDS)  # clips that end by the last frame's time
    frames = [min(int((2 * i + 1) * fps), nframes - 1) for i in range(n_clips)]
    return anno[:, frames].T


def _row(video: dict, split: str, log: RepairLog) -> dict | None:
    vid, where = video["video"], f"{RELEASE_FILE}[{video['video']}]"
    length = float(np.asarray(video["length"]).reshape(-1)[0])
    anno = np.asarray(video["user_anno"], dtype=np.float64)
    if length <= 0 or anno.size == 0 or ANNOTATORS not in anno.shape:
        log.add(split, "video without length or 20 annotators", "dropped", where)
        return None
    title = fix_title(video["title"], log, split, where)
    if not title:
        log.add(split, "query without text", "dropped", where)
        return None
    labels = clip_scores(anno, length)
    return {"qid": vid, "query": title, "duration": length, "vid": vid,
            "domain": video["category"].strip(), "label": labels.astype(int).tolist(),
            "nframes": int(np.asarray(video["nframes"]).reshape(-1)[0])}  # fmt: skip


def convert_tvsum(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    splits: str | os.PathLike | None = None,
) -> ConvertResult:
    """Convert `ydata-tvsum50.mat` (the file or its folder) into `{out}/tvsum_{train,val}.jsonl`.

    Args:
        sources: the release file or a folder holding it.
        out: output folder.
        splits: a domain_splits.json-style file (default: the released lists, shipped).

    Raises:
        ReleaseError: the file is missing or not the TVSum release.
    """
    (path,) = require(find_files(sources, [RELEASE_FILE]), [RELEASE_FILE], sources)
    videos = {v["video"]: v for v in read_mat(path)}
    lists, log = load_splits(splits, SPLITS_KEY), RepairLog()
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    listed = set()
    for domain in sorted(lists):
        for split in SPLITS:
            for vid in lists[domain].get(split, []):
                listed.add(vid)
                if vid not in videos:
                    log.add(split, "listed video not in the release file", "dropped", vid)
                    continue
                row = _row(videos[vid], split, log)
                if row is not None:
                    rows[split].append(row)
    result = ConvertResult(DATASET, {}, {}, log)
    unlisted = sorted(set(videos) - listed)
    if unlisted:
        result.notes.append(f"{len(unlisted)} videos of the release are in no split list: "
                            + ", ".join(unlisted[:5]))  # fmt: skip
    return write_splits(DATASET, out, rows, result)
