"""Training data: annotation parsing, labels (spec §3), missing ids, sampler, preload, workers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from train_fixtures import (
    FPS,
    make_annotations,
    make_cache,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    write_jsonl,
)

from r2.cache import FeatureCache
from r2.train import data as D
from r2.train.labels import clean_windows


def _lines(path, n):
    return [json.loads(x) for x in path.read_text().splitlines()[:n]]


def test_labels_of_real_qvhighlights_lines(testdata, tmp_path):
    annos = _lines(testdata / "qvhighlights" / "highlight_train_release.jsonl", 30)
    cache = make_cache(tmp_path / "qv.h5", annos)
    path = write_jsonl(tmp_path / "train.jsonl", annos)
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True,
                                min_video_len=5.0)  # fmt: skip
        assert len(items) == 30
        ds = D.GroundingDataset(items, fc, FPS, k=2, train=True, seed=3, repeat=4)
        assert len(ds) == 120
        for i, (it, a) in enumerate(zip(items, annos, strict=True)):
            t = round(a["duration"] * FPS)
            expected = np.zeros(t, np.float32)
            for c, s in zip(a["relevant_clip_ids"], a["saliency_scores"], strict=True):
                expected[c] = sum(s) / 12
            np.testing.assert_array_equal(it.saliency, expected)
            np.testing.assert_array_equal(it.boundary, clean_windows(a["relevant_windows"],
                                                                     t, FPS))  # fmt: skip
            sample = ds[(0, i)]
            assert sample.qid == str(a["qid"]) and sample.vid == a["vid"]
            assert sample.video.shape == (t, 2, 3, 8) and sample.video.dtype == torch.float16
            assert sample.duration == a["duration"] and sample.fps == FPS
            assert expected[sample.pos_clip] > 0
            assert ds[(0, i)].pos_clip == sample.pos_clip  # same (seed, epoch, index) -> same
        draws = {ds[(e, 0)].pos_clip for e in range(30)}  # new epochs draw anew
        assert len(draws) > 1


def test_labels_equal_the_reference_batch(testdata, tmp_path):
    ref = testdata / "reference"
    annos = json.loads((ref / "labels.json").read_text())["train"]
    inputs = load_file(str(ref / "train_inputs.safetensors"))
    cache = make_cache(tmp_path / "ref.h5", annos)
    path = write_jsonl(tmp_path / "train.jsonl", annos)
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
    for i, it in enumerate(items):
        np.testing.assert_array_equal(it.boundary, inputs[f"boundary_{i}"])
        np.testing.assert_array_equal(it.saliency, inputs[f"saliency_{i}"])
    assert items[0].boundary[1].tolist() == [19.5, 21.5]  # the short window was widened


def test_missing_ids_error_with_counts_or_skip(tmp_path, caplog):
    annos = make_annotations(10)
    cache = make_cache(tmp_path / "c.h5", annos[:7])  # vid007..vid009 and their queries absent
    path = write_jsonl(tmp_path / "a.jsonl", annos)
    with FeatureCache(cache) as fc:
        with pytest.raises(D.MissingFeaturesError) as err:
            D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        msg = str(err.value)
        assert "3 of 10 queries reference videos not in" in msg and str(cache) in msg
        assert "vid007 (" in msg and f"{path}:8" in msg and "--skip-missing" in msg
        assert "3 of 10 queries have no query features" in msg
        with caplog.at_level(logging.WARNING):
            items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True,
                                    skip_missing=True)  # fmt: skip
        assert [it.anno.qid for it in items] == [str(i) for i in range(7)]
        assert "skipping 3 of 10 queries" in caplog.text


def test_short_videos_and_bad_labels_are_dropped_with_counts(tmp_path, caplog):
    annos = make_annotations(6)
    annos[0].update(
        duration=4.0, relevant_windows=[[0, 2]], relevant_clip_ids=[0], saliency_scores=[[1, 1, 1]]
    )  # shorter than the preset's 5 s
    end = annos[1]["duration"]
    annos[1]["relevant_windows"] = [[end - 2, end + 100]]  # past the end: clamped (counted)
    annos[2]["saliency_scores"] = [[0, 0, 0]] * len(annos[2]["saliency_scores"])  # no positive
    cache = make_cache(tmp_path / "c.h5", annos)
    path = write_jsonl(tmp_path / "a.jsonl", annos)
    with FeatureCache(cache) as fc, caplog.at_level(logging.INFO):
        train = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True,
                                min_video_len=5.0)  # fmt: skip
        val = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=False)
    assert [it.anno.qid for it in train] == ["1", "3", "4", "5"]
    t1 = train[0].n_clips
    assert train[0].boundary.tolist() == [[t1 / FPS - 2, t1 / FPS]]
    assert len(val) == 6  # no length filter and no labels needed for inference
    assert "dropped 1 of 6 training queries on videos shorter than 5 s" in caplog.text
    assert "skipped 1 queries with unusable labels" in caplog.text and ":3:" in caplog.text
    assert "warning window_past_end: 1 (first: " in caplog.text and ":2 (qid 1)" in caplog.text


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", ":2: invalid JSON"),
    ('{"qid": 5, "duration": 10}', ":2: field 'vid'"),
    ('{"qid": 0, "vid": "v"}', ":2: field 'qid': '0' already used at"),
    ('{"qid": 9, "vid": "v", "duration": -1}', ":2: field 'duration'"),
    ('{"qid": 9, "vid": "v", "relevant_windows": [[1, "x"]]}',
     r":2: field 'relevant_windows\[0\]'"),
    ('{"qid": 9, "vid": "v", "relevant_clip_ids": [1]}', ":2: field 'saliency_scores'"),
])  # fmt: skip
def test_annotation_errors_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"qid": 0, "vid": "v", "query": "q", "duration": 10}\n' + line + "\n")
    with pytest.raises(D.AnnotationError, match=message):
        D.read_annotations(path)


def test_sampler_order_depends_on_seed_and_epoch_only():
    s = D.EpochBatchSampler(10, 3, seed=4)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 4 and [len(b) for b in full] == [3, 3, 3, 1]
    assert sorted(i for b in full for _, i in b) == list(range(10))
    assert all(e == 2 for b in full for e, _ in b)
    s.set_epoch(2, start_batch=2)  # resume inside the epoch: the same remaining batches
    assert list(s) == full[2:] and len(s) == 2
    s.set_epoch(3)
    assert list(s) != full
    assert list(D.EpochBatchSampler(10, 3, seed=4).order(2)) == list(s.order(2))


def test_workers_and_preload_give_identical_batches(tmp_path):
    annos = make_annotations(8)
    cache = make_cache(tmp_path / "c.h5", annos)
    path = write_jsonl(tmp_path / "a.jsonl", annos)
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        ram = D.PreloadedFeatures.load(fc, items, k=1)
        assert D.feature_bytes(fc, items, k=1) == sum(v.nbytes for v in ram.videos.values()) + sum(
            q.nbytes for q in ram.queries.values()
        )
        batches = {}
        for name, feats, workers in (("file", fc, 0), ("workers", fc, 2), ("ram", ram, 0)):
            ds = D.GroundingDataset(items, feats, FPS, k=1, train=True, seed=1, repeat=2)
            sampler = D.EpochBatchSampler(len(ds), 3, seed=1)
            sampler.set_epoch(1)
            loader = D.make_loader(ds, sampler, workers, seed=1, preload="none")
            batches[name] = list(loader)
    for other in ("workers", "ram"):
        for a, b in zip(batches["file"], batches[other], strict=True):
            assert a.qids == b.qids and torch.equal(a.pos_clip, b.pos_clip)
            assert torch.equal(a.video, b.video) and torch.equal(a.boundary, b.boundary)
            assert a.video.shape[2] == 1  # only the last layer was kept


def test_preload_auto_decides_from_free_memory(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(D, "available_ram", lambda: 8 * 1024**3)
    with caplog.at_level(logging.INFO):
        assert D.resolve_preload("auto", 1024**3, cpu) == "ram"
        assert D.resolve_preload("auto", 6 * 1024**3, cpu) == "none"
    assert "features need 1.00 GiB, 8.00 GiB RAM available -> RAM" in caplog.text
    assert D.resolve_preload("none", 1, cpu) == "none"
    with pytest.raises(ValueError, match="CUDA"):
        D.resolve_preload("gpu", 1, cpu)
    with pytest.raises(ValueError, match="preload must be one of"):
        D.resolve_preload("disk", 1, cpu)


def test_tacos_ids_map_to_the_camera_files(tmp_path):
    annos = make_annotations(2)
    cached = [{**a, "vid": f"s1{i}-d2{i}-cam-002"} for i, a in enumerate(annos)]
    cache = make_cache(tmp_path / "c.h5", cached)
    annos = [{**a, "vid": f"s1{i}-d2{i}"} for i, a in enumerate(annos)]
    path = write_jsonl(tmp_path / "a.jsonl", annos)
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "tacos", train=True)
    assert [it.anno.vid for it in items] == ["s10-d20-cam-002", "s11-d21-cam-002"]
    assert items[0].anno.data["vid"] == "s10-d20"  # predictions keep the annotation's id
