"""The embedded demo dataset: procedural videos of coloured shapes with known event windows.

`make_demo_dataset` writes real H.264 mp4 files (PyAV) and QVHighlights-schema jsonl
annotations, deterministically for a seed and without downloading anything. Every video has
a textured, low-saturation background and 1-3 LARGE saturated shapes, each a different colour,
that are on screen (static, moving, growing or spinning) during known windows aligned to the
2-second clips. One query per shape describes it ("a red circle appears", "when does the blue
square move to the left?"), so the other shapes of the same video act as distractors and a
fixed-window guess stays weak. Colour is the primary cue, shape the secondary one, so even a
small random CLIP separates the events. `baseline_predictions` gives the trivial baselines a
trained model has to beat, as QVHighlights submission rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r2.demo_render import COLOURS, DIRECTIONS, SHAPES, Event, VideoPlan, write_video

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when the output for a given seed changes (2: test_gt.jsonl)
CLIP_SECONDS = 2  # QVHighlights clip length (s); windows and durations are multiples of it
DEFAULT_N_VIDEOS = 100
DEFAULT_FPS = 4.0  # frames per second written; features sample one frame per 2-s clip
DEFAULT_SIZE = (160, 120)  # (width, height) in pixels, 4:3
DURATION_RANGE_S = (20, 40)  # inclusive, even seconds
EVENT_CLIPS_RANGE = (2, 8)  # event length in 2-s clips (4-16 s), inclusive
OBJECTS_PER_VIDEO_P = (0.15, 0.45, 0.40)  # probability of 1, 2, 3 shapes (queries) per video
REPEAT_P = 0.2  # probability that a shape has a second window (a query with two windows)
BACKGROUND_GREY = (95.0, 145.0)  # range of a video's mean background grey level
BACKGROUND_TINT = 6.0  # max per-channel offset of a video's background from grey
MANIFEST = "demo_dataset.json"
TEST_FIELDS = ("qid", "query", "duration", "vid")  # what test.jsonl shows (no ground truth)
BASELINE_GRID = 100  # the fixed-window baseline searches a 1/100 grid of the duration

ACTIONS = ("appear", "move", "grow", "spin")
TEMPLATES = {  # query wordings per action; {c} colour, {s} shape, {to}/{ward} direction
    "appear": ("a {c} {s} appears", "when does a {c} {s} show up?", "the {c} {s} becomes visible",
               "a {c} {s} is shown on the screen", "there is a {c} {s} on a noisy background",
               "a big {c} {s} pops up in the middle of the frame"),
    "move": ("the {c} {s} moves {to}", "a {c} {s} slides {ward} across the screen",
             "when does the {c} {s} move {to}?", "a {c} {s} travelling {ward}"),
    "grow": ("a {c} {s} grows bigger", "the {c} {s} gets larger",
             "when does the {c} {s} expand?", "a growing {c} {s}"),
    "spin": ("a {c} {s} spins around", "the {c} {s} rotates", "when is the {c} {s} rotating?",
             "a {c} {s} turning in place"),
}  # fmt: skip


@dataclass(frozen=True)
class DemoDataset:
    """Where `make_demo_dataset` wrote the dataset.

    Attributes:
        root: The output folder.
        videos: Folder of the mp4 files, one per video, named `<vid>.mp4`.
        train: Training annotations (QVHighlights jsonl, with ground truth).
        val: Validation annotations (with ground truth).
        test: Test queries WITHOUT ground truth (`qid`, `query`, `duration`, `vid`), as a
            benchmark's test split is published.
        test_gt: The same test queries WITH ground truth (the withheld labels), to score
            the test split on videos that played no part in training or epoch selection.
        n_videos: Number of videos written.
        seed: The seed that determines every video and annotation.
    """

    root: Path
    videos: Path
    train: Path
    val: Path
    test: Path
    test_gt: Path
    n_videos: int
    seed: int


def make_demo_dataset(
    out_dir: str | os.PathLike,
    n_videos: int = DEFAULT_N_VIDEOS,
    seed: int = 0,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    overwrite: bool = False,
) -> DemoDataset:
    """Generate the demo dataset (videos + train/val/test jsonl) into `out_dir`.

    Video i depends only on (seed, i), so a larger `n_videos` extends a smaller set. Videos are
    split into train/val/test by video. A folder already holding the same dataset (same
    manifest, all files present) is reused unless `overwrite`. Files are written atomically.

    Args:
        out_dir: Output folder (created).
        n_videos: Number of videos (at least 3 so that every split gets one).
        seed: Random seed; the same seed gives identical files.
        val_fraction: Fraction of videos in the validation split.
        test_fraction: Fraction of videos in the test split (test.jsonl without ground truth,
            test_gt.jsonl with it).
        fps: Frame rate of the written videos.
        size: (width, height) in pixels, both even.
        overwrite: Regenerate even when the folder already holds this dataset.

    Returns:
        The paths of what was written.
    """
    _check_args(n_videos, val_fraction, test_fraction, fps, size)
    root = Path(out_dir)
    ds = DemoDataset(
        root, root / "videos", root / "train.jsonl", root / "val.jsonl", root / "test.jsonl",
        root / "test_gt.jsonl", n_videos, seed,
    )  # fmt: skip
    params = {
        "generator_version": GENERATOR_VERSION, "n_videos": n_videos, "seed": seed,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "fps": fps,
        "size": list(size),
    }  # fmt: skip
    plans = [_plan_video(seed, i) for i in range(n_videos)]
    if not overwrite and _is_current(ds, params, plans):
        logger.info("demo dataset already present in %s (reused)", root)
        return ds
    start = time.perf_counter()
    ds.videos.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)  # the manifest marks a complete dataset
    _remove_stale_videos(ds.videos, {p.vid for p in plans})
    for plan in tqdm(plans, desc="demo videos", unit="video", disable=None):
        write_video(plan, ds.videos / f"{plan.vid}.mp4", fps, size)
    splits = _split_rows(plans, seed, val_fraction, test_fraction)
    for path, rows in zip((ds.train, ds.val, ds.test_gt), splits, strict=True):
        _write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    _write_text(ds.test, "".join(json.dumps({k: r[k] for k in TEST_FIELDS}) + "\n"
                                 for r in splits[2]))  # fmt: skip
    _write_text(root / MANIFEST, json.dumps(params, indent=1) + "\n")
    logger.info(
        "wrote %d demo videos and %d/%d/%d train/val/test queries to %s in %.1f s",
        n_videos, *(len(rows) for rows in splits), root, time.perf_counter() - start,
    )  # fmt: skip
    return ds


def baseline_predictions(train_rows: list[dict], val_rows: list[dict], seed: int = 0) -> list[dict]:
    """Trivial baselines for `val_rows`, as QVHighlights submission rows.

    Windows: the single best fixed window in normalised time, i.e. the [s, e] fraction of
    the duration that maximises the mean IoU (best-matching GT window per query) over
    `train_rows`, scaled by each video's duration, as the only prediction (score 1.0).
    Saliency: uniform random scores (seeded), one per 2-s clip.

    Args:
        train_rows: Annotation rows with `duration` and `relevant_windows`.
        val_rows: Rows to predict for (only `qid`, `query`, `vid`, `duration` are read).
        seed: Seed of the random saliency.

    Returns:
        One row per val row: `qid`, `query`, `vid`, `pred_relevant_windows` [[s, e, score]],
        `pred_saliency_scores` (one per 2-s clip).
    """
    start, end = best_fixed_window(train_rows)
    rng = np.random.default_rng(seed)
    preds = []
    for row in val_rows:
        duration = float(row["duration"])
        n_clips = math.ceil(duration / CLIP_SECONDS)
        preds.append({
            "qid": row["qid"], "query": row["query"], "vid": row["vid"],
            "pred_relevant_windows": [[round(start * duration, 4), round(end * duration, 4), 1.0]],
            "pred_saliency_scores": [round(float(x), 4) for x in rng.random(n_clips)],
        })  # fmt: skip
    return preds


def best_fixed_window(rows: list[dict]) -> tuple[float, float]:
    """The [start, end] fraction of the duration with the highest mean IoU over `rows`.

    Each row scores a candidate by its IoU with the row's best-matching GT window; candidates
    lie on a 1/`BASELINE_GRID` grid of the duration.
    """
    if not rows:
        raise ValueError("best_fixed_window needs at least one annotated row")
    grid = np.linspace(0.0, 1.0, BASELINE_GRID + 1)
    s, e = np.meshgrid(grid, grid, indexing="ij")
    keep = e > s
    cand = np.stack([s[keep], e[keep]], axis=1)  # (C, 2)
    scores = np.zeros(len(cand))
    for row in rows:
        gt = np.asarray(row["relevant_windows"], dtype=float) / float(row["duration"])  # (W, 2)
        inter = np.minimum(cand[:, None, 1], gt[None, :, 1]) - np.maximum(
            cand[:, None, 0], gt[None, :, 0]
        )  # (C, W)
        union = np.maximum(cand[:, None, 1], gt[None, :, 1]) - np.minimum(
            cand[:, None, 0], gt[None, :, 0]
        )
        scores += (np.clip(inter, 0.0, None) / union).max(axis=1)
    best = int(np.argmax(scores))
    return float(cand[best, 0]), float(cand[best, 1])


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a jsonl annotation file (blank lines skipped); errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
    return rows


# ---------------------------------------------------------------- planning (pure, seeded)


def _check_args(n_videos, val_fraction, test_fraction, fps, size) -> None:
    problems = []
    if n_videos < 3:
        problems.append(f"n_videos={n_videos} (need >= 3: one video per split at least)")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        problems.append(
            f"val_fraction={val_fraction}, test_fraction={test_fraction} "
            "(each in (0, 1), sum below 1)"
        )
    if not (fps >= 1.0 and float(fps * CLIP_SECONDS).is_integer()):
        problems.append(f"fps={fps} (need >= 1 and a whole number of frames per 2-s clip)")
    if len(size) != 2 or any(v < 32 or v % 2 for v in size):
        problems.append(f"size={size} (need (width, height), even, >= 32)")
    if problems:
        raise ValueError("make_demo_dataset: invalid arguments: " + "; ".join(problems))


def _plan_video(seed: int, index: int) -> VideoPlan:
    """Everything about video `index`, from a generator seeded by (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    lo, hi = DURATION_RANGE_S
    duration = int(rng.integers(lo // CLIP_SECONDS, hi // CLIP_SECONDS + 1)) * CLIP_SECONDS
    n_objects = int(rng.choice([1, 2, 3], p=OBJECTS_PER_VIDEO_P))
    colours = rng.choice(list(COLOURS), size=n_objects, replace=False)
    shapes = rng.choice(SHAPES, size=n_objects, replace=False)
    owners = [i for i in range(n_objects) for _ in range(1 + int(rng.random() < REPEAT_P))]
    slots = _layout_windows(rng, duration // CLIP_SECONDS, len(owners))
    rng.shuffle(owners)
    owners = owners[: len(slots)]
    events = []
    for i in range(n_objects):
        windows = tuple(w for w, o in zip(slots, owners, strict=True) if o == i)
        if windows:
            events.append(_plan_event(rng, str(colours[i]), str(shapes[i]), windows))
    grey = rng.uniform(*BACKGROUND_GREY)
    tint = rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=3)
    return VideoPlan(
        vid=f"demo_{index:04d}",
        duration=duration,
        background=tuple(float(v) for v in grey + tint),
        texture_seed=int(rng.integers(2**31)),
        events=tuple(events),
    )


def _layout_windows(rng: np.random.Generator, n_clips: int, n_windows: int) -> list[tuple]:
    """Non-overlapping windows (seconds) separated by >= 1 clip, in time order."""
    lo, hi = EVENT_CLIPS_RANGE
    lengths = [int(v) for v in rng.integers(lo, hi + 1, size=n_windows)]
    while sum(lengths) + len(lengths) - 1 > n_clips:  # shrink the longest, else drop one
        longest = int(np.argmax(lengths))
        if lengths[longest] > lo:
            lengths[longest] -= 1
        else:
            lengths.pop()
    free = n_clips - (sum(lengths) + len(lengths) - 1)
    cuts = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    gaps = np.diff(np.concatenate([[0], cuts]))  # extra clips before each window
    windows, clip = [], 0
    for length, gap in zip(lengths, gaps, strict=True):
        clip += int(gap)
        windows.append((clip * CLIP_SECONDS, (clip + length) * CLIP_SECONDS))
        clip += length + 1
    return windows


def _plan_event(rng: np.random.Generator, colour: str, shape: str, windows) -> Event:
    actions = [a for a in ACTIONS if not (a == "spin" and shape == "circle")]
    action = str(rng.choice(actions))
    direction = str(rng.choice(list(DIRECTIONS))) if action == "move" else ""
    centre = (0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06))
    to, ward = DIRECTIONS[direction][1:] if direction else ("", "")
    query = str(rng.choice(TEMPLATES[action])).format(c=colour, s=shape, to=to, ward=ward)
    if rng.random() < 0.5:
        query = query[0].upper() + query[1:] + ("" if query.endswith("?") else ".")
    return Event(
        colour=colour, shape=shape, action=action, direction=direction,
        windows=tuple(windows), centre=centre, angle=float(rng.uniform(0, 2 * math.pi)),
        turns=float(rng.uniform(0.5, 1.5)), query=query,
    )  # fmt: skip


def _split_rows(plans, seed, val_fraction, test_fraction) -> tuple[list, list, list]:
    """(train, val, test) annotation rows, all with ground truth; split by video."""
    order = np.random.default_rng([seed, 2**31]).permutation(len(plans))
    n_val = max(1, round(val_fraction * len(plans)))
    n_test = max(1, round(test_fraction * len(plans)))
    split_of = {int(v): 1 for v in order[:n_val]} | {int(v): 2 for v in order[n_val:][:n_test]}
    splits: tuple[list, list, list] = ([], [], [])
    qid = 0
    for index, plan in enumerate(plans):
        rng = np.random.default_rng([seed, index, 1])  # saliency annotators
        for event in plan.events:
            qid += 1
            row = {"qid": qid, "query": event.query, "duration": plan.duration, "vid": plan.vid}
            row |= _ground_truth(event.windows, rng)
            splits[split_of.get(index, 0)].append(row)
    return splits


def _ground_truth(windows, rng: np.random.Generator) -> dict:
    """QVHighlights GT fields: clip ids inside the windows, 3 scores (1..4) per clip."""
    clip_ids, scores = [], []
    for start, end in windows:
        n = (end - start) // CLIP_SECONDS
        for j in range(n):
            middle = 1.0 - abs(2.0 * (j + 0.5) / n - 1.0)  # 0 at the edges .. 1 in the middle
            base = 2 + round(2 * middle)
            triple = np.clip(base + rng.integers(-1, 2, size=3), 1, 4)
            clip_ids.append(start // CLIP_SECONDS + j)
            scores.append([int(v) for v in triple])
    return {
        "relevant_clip_ids": clip_ids,
        "saliency_scores": scores,
        "relevant_windows": [[s, e] for s, e in windows],
    }


def _write_text(path: Path, text: str) -> None:
    from r2.files import write_text_atomic

    write_text_atomic(path, text)


def _remove_stale_videos(folder: Path, keep: set[str]) -> None:
    """Delete demo videos of an earlier, larger generation (they are in no annotation file)."""
    stale = [p for p in folder.glob("demo_*.mp4") if p.stem not in keep]
    for path in stale:
        path.unlink()
    if stale:
        logger.info("removed %d demo videos of an earlier generation from %s", len(stale), folder)


def _is_current(ds: DemoDataset, params: dict, plans: list[VideoPlan]) -> bool:
    manifest = ds.root / MANIFEST
    try:
        if json.loads(manifest.read_text(encoding="utf-8")) != params:
            return False
    except (OSError, ValueError):
        return False
    files = [ds.train, ds.val, ds.test, ds.test_gt] + [ds.videos / f"{p.vid}.mp4" for p in plans]
    return all(f.is_file() for f in files)
