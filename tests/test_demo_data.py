"""The embedded demo dataset: determinism, real decodable videos, visible events, schema, split."""

import json
import math
import os

import av
import numpy as np
import pytest

from r2 import demo_data
from r2.demo_data import (
    COLOURS,
    SHAPES,
    baseline_predictions,
    best_fixed_window,
    load_jsonl,
    make_demo_dataset,
)

N_VIDEOS = 6
FPS = 4.0
SIZE = (160, 120)
GT_FIELDS = {"relevant_windows", "relevant_clip_ids", "saliency_scores"}
COLOUR_TOLERANCE = 60.0  # RGB distance of a decoded pixel to the shape colour
VISIBLE_FRACTION = 0.03  # a shape covers at least 3% of the frame when on screen (>= 7% seen)
ABSENT_FRACTION = 0.002  # ... and its colour at most 0.2% when it is not (0% seen)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_videos=N_VIDEOS, seed=3)


@pytest.fixture(scope="module")
def decoded(ds):
    """vid -> (frame times, RGB frames, container duration, codec name), decoded once."""
    cache: dict = {}

    def get(vid: str):
        if vid not in cache:
            cache[vid] = _decode(ds.videos / f"{vid}.mp4")
        return cache[vid]

    yield get
    cache.clear()


def _splits(ds) -> dict[str, list[dict]]:
    return {name: load_jsonl(getattr(ds, name)) for name in ("train", "val", "test")}


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        info = (container.duration / av.time_base, stream.codec_context.name)
    times = np.array([t for t, _ in frames])
    return times, np.stack([img for _, img in frames]), info[0], info[1]


def _colour_of(query: str) -> str:
    found = [c for c in COLOURS if c in query.lower().split()]
    assert len(found) == 1, query
    return found[0]


def test_same_seed_gives_identical_annotations_and_frames(ds, decoded, tmp_path):
    again = make_demo_dataset(tmp_path / "again", n_videos=N_VIDEOS, seed=3)
    for name in ("train", "val", "test"):
        assert getattr(again, name).read_bytes() == getattr(ds, name).read_bytes()
    for video in sorted(ds.videos.glob("*.mp4")):
        times_a, frames_a, _, _ = decoded(video.stem)
        times_b, frames_b, _, _ = _decode(again.videos / video.name)
        np.testing.assert_array_equal(times_a, times_b)
        np.testing.assert_array_equal(frames_a, frames_b)


def test_other_seed_gives_other_dataset(ds, tmp_path):
    other = make_demo_dataset(tmp_path / "other", n_videos=N_VIDEOS, seed=4)
    assert other.train.read_text() != ds.train.read_text()
    vid = "demo_0000.mp4"
    assert not np.array_equal(_decode(ds.videos / vid)[1], _decode(other.videos / vid)[1])


def test_videos_are_h264_and_decode_to_their_duration(ds, decoded):
    durations = {r["vid"]: r["duration"] for rows in _splits(ds).values() for r in rows}
    assert len(durations) == N_VIDEOS
    for vid, duration in durations.items():
        times, frames, container_duration, codec = decoded(vid)
        assert codec == "h264"
        assert frames.shape == (round(duration * FPS), SIZE[1], SIZE[0], 3)
        assert container_duration == pytest.approx(duration, abs=1e-3)
        np.testing.assert_allclose(times, np.arange(len(times)) / FPS)


def test_each_query_shape_is_on_screen_exactly_inside_its_windows(ds, decoded):
    """Every decoded frame: the query's colour covers the frame's shape area iff t is in a window.

    This holds for every frame of each 2-s clip, so any clip-sampling rule (start or middle
    frame) sees the event.
    """
    rows = [r for name in ("train", "val") for r in _splits(ds)[name]]
    for row in rows:
        times, frames, _, _ = decoded(row["vid"])
        colour = np.array(COLOURS[_colour_of(row["query"])], dtype=float)
        near = np.linalg.norm(frames.astype(float) - colour, axis=-1) < COLOUR_TOLERANCE
        fraction = near.mean(axis=(1, 2))  # (n_frames,)
        inside = np.zeros(len(times), dtype=bool)
        for start, end in row["relevant_windows"]:
            inside |= (times >= start) & (times < end)
        assert inside.any()
        assert fraction[inside].min() > VISIBLE_FRACTION, row
        assert fraction[~inside].max(initial=0.0) < ABSENT_FRACTION, row


def test_annotations_follow_the_qvhighlights_schema(ds):
    splits = _splits(ds)
    qids = [r["qid"] for rows in splits.values() for r in rows]
    assert len(qids) == len(set(qids)) and all(type(q) is int for q in qids)
    for name, rows in splits.items():
        assert rows, f"{name} split is empty"
        for row in rows:
            assert set(row) == {"qid", "query", "duration", "vid"} | (
                set() if name == "test" else GT_FIELDS
            )
            assert isinstance(row["query"], str) and any(s in row["query"] for s in SHAPES)
            assert (ds.videos / f"{row['vid']}.mp4").is_file()
            if name != "test":
                _check_ground_truth(row)


def _check_ground_truth(row: dict) -> None:
    duration, windows = row["duration"], row["relevant_windows"]
    expected_ids = []
    for start, end in windows:
        assert 0 <= start < end <= duration
        assert start % 2 == 0 and end % 2 == 0 and 4 <= end - start <= 16
        expected_ids += list(range(start // 2, end // 2))
    assert windows == sorted(windows)
    assert row["relevant_clip_ids"] == expected_ids  # sorted, no duplicates: windows are disjoint
    scores = row["saliency_scores"]
    assert len(scores) == len(expected_ids)
    assert all(len(t) == 3 and all(type(v) is int and 0 <= v <= 4 for v in t) for t in scores)
    assert all(sum(t) > 0 for t in scores)  # every relevant clip is a usable positive


def test_split_is_by_video_and_queries_within_a_video_name_different_colours(ds):
    vids = {name: {r["vid"] for r in rows} for name, rows in _splits(ds).items()}
    assert not vids["train"] & vids["val"]
    assert not vids["train"] & vids["test"]
    assert not vids["val"] & vids["test"]
    all_vids = vids["train"] | vids["val"] | vids["test"]
    assert all_vids == {p.stem for p in ds.videos.glob("*.mp4")}
    for rows in _splits(ds).values():
        by_vid: dict[str, list[str]] = {}
        for row in rows:
            by_vid.setdefault(row["vid"], []).append(_colour_of(row["query"]))
        assert all(len(c) == len(set(c)) for c in by_vid.values())


def test_event_timing_varies_so_a_fixed_window_is_a_weak_guess():
    """Over many planned videos (no rendering), the best fixed window reaches a low mean IoU."""
    plans = [demo_data._plan_video(0, i) for i in range(200)]
    train, val, _ = demo_data._split_rows(plans, 0, 0.2, 0.1)
    assert sum(len(p.events) > 1 for p in plans) > 100  # most videos have distractor events
    start, end = best_fixed_window(train)
    ious = []
    for row in val:
        s, e = start * row["duration"], end * row["duration"]
        ious.append(max(_iou((s, e), w) for w in row["relevant_windows"]))
    assert np.mean(ious) < 0.35


def test_saliency_is_higher_in_the_middle_of_an_event():
    plans = [demo_data._plan_video(1, i) for i in range(100)]
    train, _, _ = demo_data._split_rows(plans, 1, 0.2, 0.1)
    edge, middle = [], []
    for row in (r for r in train if len(r["relevant_windows"]) == 1):
        sums = [sum(t) for t in row["saliency_scores"]]
        if len(sums) >= 4:
            edge += [sums[0], sums[-1]]
            middle.append(sums[len(sums) // 2])
    assert np.mean(middle) > np.mean(edge) + 1.5


def _iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def test_existing_dataset_is_reused_and_overwrite_regenerates(tmp_path):
    make_demo_dataset(tmp_path, n_videos=4, seed=1)
    first = make_demo_dataset(tmp_path, n_videos=3, seed=1)  # smaller: the extra video goes
    assert sorted(p.name for p in first.videos.iterdir()) == [f"demo_000{i}.mp4" for i in range(3)]
    video = first.videos / "demo_0000.mp4"
    os.utime(video, (1_000_000, 1_000_000))
    make_demo_dataset(tmp_path, n_videos=3, seed=1)
    assert video.stat().st_mtime == 1_000_000  # reused, untouched
    (tmp_path / "videos" / "demo_0001.mp4").unlink()  # incomplete folder: regenerated
    make_demo_dataset(tmp_path, n_videos=3, seed=1)
    assert (tmp_path / "videos" / "demo_0001.mp4").is_file()
    make_demo_dataset(tmp_path, n_videos=3, seed=1, overwrite=True)
    assert video.stat().st_mtime != 1_000_000
    assert not list(tmp_path.rglob("*.tmp"))


def test_invalid_arguments_are_all_reported(tmp_path):
    with pytest.raises(ValueError) as err:
        make_demo_dataset(
            tmp_path, n_videos=2, val_fraction=0.9, test_fraction=0.2, fps=2.2, size=(161, 8)
        )
    message = str(err.value)
    for field in ("n_videos=2", "val_fraction=0.9", "fps=2.2", "size=(161, 8)"):
        assert field in message
    assert not list(tmp_path.iterdir())


def test_best_fixed_window_finds_the_common_window():
    rows = [{"duration": 40, "relevant_windows": [[10, 20]]}] * 3
    rows += [{"duration": 80, "relevant_windows": [[20, 40], [60, 80]]}]
    assert best_fixed_window(rows) == pytest.approx((0.25, 0.5))
    with pytest.raises(ValueError):
        best_fixed_window([])


def test_baseline_predictions_are_valid_submission_rows(ds):
    splits = _splits(ds)
    preds = baseline_predictions(splits["train"], splits["val"], seed=5)
    start, end = best_fixed_window(splits["train"])
    assert [p["qid"] for p in preds] == [r["qid"] for r in splits["val"]]
    for pred, row in zip(preds, splits["val"], strict=True):
        assert set(pred) == {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}
        assert (pred["query"], pred["vid"]) == (row["query"], row["vid"])
        [[s, e, score]] = pred["pred_relevant_windows"]
        d = row["duration"]
        assert (s, e, score) == pytest.approx((start * d, end * d, 1.0), abs=1e-3)
        assert len(pred["pred_saliency_scores"]) == math.ceil(d / 2)
    json.dumps(preds)  # serialisable as a submission file
    again = baseline_predictions(splits["train"], splits["val"], seed=5)
    other = baseline_predictions(splits["train"], splits["val"], seed=6)
    assert again == preds and other != preds
    assert baseline_predictions(splits["train"], splits["test"])  # test rows have no GT: fine


def test_load_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"qid": 1}\n\n{"qid": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        load_jsonl(path)
