"""The Python API: one checkpoint, one video encoded once, many queries; the same numbers
as the extract → cache → eval path."""

from __future__ import annotations

import numpy as np
import pytest
from e2e_fixtures import N_CLIPS, QUERIES, make_setup

from r2 import api
from r2.api import R2Predictor
from r2.cache import FeatureCache
from r2.evaluate.inference import predict_split


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("api"))


def test_encode_video_equals_the_cached_features_in_chunks(setup, monkeypatch):
    monkeypatch.setattr(api, "FRAMES_PER_CHUNK", 5)  # 23 clips: 4 full chunks + 3
    predictor = R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    video = predictor.encode_video(setup["video"])
    with FeatureCache(setup["cache"]) as c:
        cached, record = c.video("vid1"), c.video_record("vid1")
    assert video.features.shape == cached.shape == (N_CLIPS, *cached.shape[1:])
    assert video.features.dtype == np.float16
    np.testing.assert_array_equal(video.features, cached)  # same frames, same CLIP forward
    assert video.duration == pytest.approx(record.duration)


def test_predict_matches_eval_on_the_cache_and_reuses_the_encoding(setup, monkeypatch):
    predictor = R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    with FeatureCache(setup["cache"]) as c:
        video = api.VideoFeatures(str(setup["video"]), c.video("vid1"),
                                  c.video_record("vid1").duration, 0.5)  # fmt: skip
    calls = []
    monkeypatch.setattr(predictor, "encode_video", lambda *a: calls.append(a))
    rows = predict_split(setup["model"], setup["cache"], setup["anno"], "qvhighlights")
    for query, row in zip(QUERIES, rows, strict=True):
        pred = predictor.predict(video, query)
        assert calls == []  # features reused, the video is not decoded again
        got = np.array([[m.start, m.end, m.score] for m in pred.moments])
        want = np.array([w for w in row["pred_relevant_windows"] if w[2] > 0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        raw = np.asarray(row["pred_saliency_scores"])
        np.testing.assert_allclose(pred.saliency, np.clip(raw, 0, 1), atol=1e-6)
        assert pred.saliency.shape == (N_CLIPS,)
        assert pred.saliency.min() >= 0 and pred.saliency.max() <= 1
        scores = [m.score for m in pred.moments]
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= m.start < m.end <= pred.duration for m in pred.moments)
    top = predictor.predict(video, QUERIES[0], top=2)
    assert len(top.moments) == 2


def test_predict_many_equals_one_query_at_a_time(setup, monkeypatch):
    monkeypatch.setattr(api, "QUERIES_PER_PASS", 2)  # 3 queries: a pass of 2, then 1
    predictor = R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    with FeatureCache(setup["cache"]) as c:
        video = api.VideoFeatures(str(setup["video"]), c.video("vid1"),
                                  c.video_record("vid1").duration, 0.5)  # fmt: skip
    queries = [*QUERIES, "red"]  # token lengths differ: the shared pass pads them
    many = predictor.predict_many(video, queries, top=5)
    assert [p.query for p in many] == queries
    for query, got in zip(queries, many, strict=True):
        want = predictor.predict(video, query, top=5)
        np.testing.assert_allclose(got.saliency, want.saliency, atol=1e-6)
        assert len(got.moments) == len(want.moments)
        for a, b in zip(got.moments, want.moments, strict=True):
            assert a.start == pytest.approx(b.start, abs=1e-4)
            assert a.end == pytest.approx(b.end, abs=1e-4)
            assert a.score == pytest.approx(b.score, abs=1e-6)
    with pytest.raises(TypeError, match="list of queries"):
        predictor.predict_many(video, "one string")
