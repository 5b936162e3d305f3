"""Inference over a split: the original's post-processed predictions, B = 1 semantics, rows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from train_fixtures import (
    SETTINGS,
    TINY,
    make_annotations,
    make_cache,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    write_jsonl,
)

from r2.cache import CacheSettings, CacheWriter, QueryRecord, VideoRecord
from r2.evaluate.inference import predict_split
from r2.evaluate.postprocess import postprocess_windows
from r2.train.batch import Sample, collate
from r2.train.checkpoint import build_meta, check_cache_compatible, load_checkpoint, save_checkpoint
from r2.train.config import QVHIGHLIGHTS
from r2.train.data import MissingFeaturesError
from r2.train.model import R2Model

VIT_B32 = CacheSettings(
    model_id="openai/clip-vit-base-patch32", revision=None, k=4, fps=0.5, frame_at="middle",
    image_size=224, mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711), dtype="fp32", tokens_per_frame=50,
    video_dim=768, text_dim=512)  # fmt: skip


def _tiny_model(seed: int = 0, **overrides) -> R2Model:
    torch.manual_seed(seed)
    cfg = QVHIGHLIGHTS.model_config(video_dim=SETTINGS.video_dim, query_dim=SETTINGS.text_dim,
                                    k=SETTINGS.k, **{**TINY, **overrides})  # fmt: skip
    return R2Model(cfg).eval()


@pytest.fixture
def split(tmp_path):
    annos = make_annotations(7, seed=5, min_clips=3, max_clips=20)
    return make_cache(tmp_path / "c.h5", annos), write_jsonl(tmp_path / "a.jsonl", annos), annos


def test_matches_the_original_post_processed_predictions(testdata, tmp_path):
    from r2.train.convert import config_from_official, load_official_state_dict, read_state_dict

    ref = testdata / "reference"
    sd = read_state_dict(ref / "weights.safetensors")
    model = R2Model(config_from_official(sd))
    load_official_state_dict(model, sd)
    inputs = load_file(str(ref / "test_inputs.safetensors"))
    expected = json.loads((ref / "test_expected.json").read_text())["samples"][0]
    scale = float(inputs["feature_scale"])
    video = (inputs["video_0_int8"].astype(np.float32) * scale).astype(np.float16)  # exact
    query = (inputs["query_0_int8"].astype(np.float32) * scale).astype(np.float16)
    label = expected["label"]
    cache = tmp_path / "ref.h5"
    with CacheWriter(cache, VIT_B32) as w:
        w.add_video(VideoRecord(vid=label["vid"], duration=label["duration"],
                                n_clips=video.shape[0], source="ref", size=1, mtime=0.0,
                                partial=False), video)  # fmt: skip
        w.add_queries([QueryRecord(qid=str(label["qid"]), text=label["query"],
                                   n_tokens=query.shape[0], truncated=False)], [query])  # fmt: skip
    (row,) = predict_split(model, cache, [label], "qvhighlights", batch_size=8)
    assert row["qid"] == 150 and row["vid"] == label["vid"] and row["query"] == label["query"]
    want = np.array(expected["postprocess"]["pred_relevant_windows"])
    got = np.array(row["pred_relevant_windows"])
    assert got.shape == want.shape == (34, 3)
    kept = want[:, 2] > 0  # suppressed rows (score 0) are a tie: compare them as a set
    np.testing.assert_array_equal(got[kept, :2], want[kept, :2])
    np.testing.assert_allclose(got[kept, 2], want[kept, 2], atol=1e-5)
    assert sorted(map(tuple, got[~kept, :2])) == sorted(map(tuple, want[~kept, :2]))
    assert (got[~kept, 2] == 0).all()
    want_sal = expected["postprocess"]["pred_saliency_scores"]
    np.testing.assert_allclose(row["pred_saliency_scores"], want_sal, atol=1e-4)


def test_rows_are_post_processed_single_sample_predictions(split):
    cache, path, annos = split
    model = _tiny_model()
    rows = predict_split(model, cache, path, "qvhighlights")
    assert [r["qid"] for r in rows] == [a["qid"] for a in annos]  # order and int qids kept
    from r2.cache import FeatureCache

    with FeatureCache(cache) as fc:
        for row, a in zip(rows, annos, strict=True):
            t = fc.video_record(a["vid"]).n_clips
            sample = Sample(qid=str(a["qid"]), vid=a["vid"],
                            video=torch.from_numpy(fc.video(a["vid"])),
                            query=torch.from_numpy(fc.query(str(a["qid"]))), fps=0.5,
                            duration=a["duration"])  # fmt: skip
            batch = collate([sample])
            with torch.no_grad():
                (raw,) = model.predict(model(batch), batch)
            want = postprocess_windows(raw.boundary, a["duration"], 2.0, "normal", 0.7)
            np.testing.assert_array_equal(np.array(row["pred_relevant_windows"], np.float32), want)
            np.testing.assert_array_equal(np.array(row["pred_saliency_scores"], np.float32),
                                          raw.saliency)  # fmt: skip
            assert len(row["pred_saliency_scores"]) == t
            w = np.array(row["pred_relevant_windows"])
            assert (w[:, :2] >= 0).all() and (w[:, :2] <= a["duration"]).all()
            assert (np.diff(w[:, 2]) <= 0).all()  # best first
            on_grid = w[:, 1] < a["duration"]
            assert (w[on_grid, :2] % 2 == 0).all()  # rounded to the 2 s unit


def test_batch_size_never_changes_results(split):
    cache, path, _ = split
    model = _tiny_model()  # the original semantics: padding would change outputs
    one = predict_split(model, cache, path, "qvhighlights", batch_size=1)
    assert predict_split(model, cache, path, "qvhighlights", batch_size=4, workers=2) == one
    invariant = _tiny_model(padding_invariant=True)
    one = predict_split(invariant, cache, path, "qvhighlights", batch_size=1)
    many = predict_split(invariant, cache, path, "qvhighlights", batch_size=4)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a["pred_saliency_scores"], b["pred_saliency_scores"],
                                   atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(a["pred_relevant_windows"], b["pred_relevant_windows"],
                                   atol=1e-4)  # fmt: skip


def test_missing_ids_and_checkpoint_round_trip(split, tmp_path):
    cache, _, annos = split
    extra = make_annotations(2, qid_start=900)
    model = _tiny_model()
    with pytest.raises(MissingFeaturesError, match="2 of 9 queries reference videos not in"):
        predict_split(model, cache, annos + extra, "qvhighlights")
    rows = predict_split(model, cache, annos + extra, "qvhighlights", skip_missing=True)
    assert len(rows) == 7
    # what `r2 eval --checkpoint` does: load, check the cache, predict -> the same rows
    save_checkpoint(tmp_path / "best", model, build_meta(model.cfg, QVHIGHLIGHTS, SETTINGS))
    loaded, meta = load_checkpoint(tmp_path)
    assert check_cache_compatible(meta, SETTINGS) == []
    assert predict_split(loaded, cache, annos, "qvhighlights") == rows
    # another unit / NMS through the preset
    coarse = dataclasses.replace(QVHIGHLIGHTS, unit=None, nms="linear")
    other = predict_split(loaded, cache, annos, coarse)
    assert other != rows and all(len(a["pred_relevant_windows"]) == len(b["pred_relevant_windows"])
                                 for a, b in zip(other, rows, strict=True))  # fmt: skip
