"""Label preparation (labels.py) and batching (batch.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from r2.train.batch import Sample, collate
from r2.train.labels import (
    clean_windows,
    positive_threshold,
    saliency_labels,
    sample_positive_clip,
    tvsum_saliency,
    youtube_saliency,
)


def test_clean_windows_rules():
    w = clean_windows([[-3, 4], [12, 8], [20, 21], [0, 0.5], [47.5, 60], [10, 10]], 24, 0.5)
    assert w.dtype == np.float32
    assert w.tolist() == [
        [0, 4],  # clamped at 0
        [8, 12],  # swapped
        [19.5, 21.5],  # widened to one 2-s clip around its centre
        [0, 2],  # centre clamped to >= 1 s
        [46, 48],  # clamped to T / fps = 48, then widened inside the video
        [9, 11],
    ]
    assert clean_windows([], 5, 1.0).shape == (0, 2)
    with pytest.raises(ValueError, match="finite"):
        clean_windows([[0, float("nan")]], 5, 1.0)


def test_saliency_labels_qvhighlights_and_windows():
    anno = {
        "qid": 7,
        "relevant_clip_ids": [1, 3, 9],
        "saliency_scores": [[4, 4, 4], [1, 2, 3], [4, 0, 0]],
    }
    sal = saliency_labels(anno, 5)  # clip 9 lies outside a 5-clip video
    np.testing.assert_allclose(sal, [0, 1, 0, 0.5, 0])
    win = {"qid": 8, "relevant_windows": [[2.5, 4.0], [9.0, 9.5]]}
    # [2.5, 4] touches clip 3 (ceil 2.5 .. ceil 4 - 1); [9, 9.5] widens to [8.75, 9.75]: clip 9
    np.testing.assert_array_equal(saliency_labels(win, 10, 1.0), [0, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="needs fps"):
        saliency_labels(win, 10)
    with pytest.raises(ValueError, match="qid 9"):
        saliency_labels({"qid": 9}, 10, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        saliency_labels({"qid": 1, "relevant_clip_ids": [1], "saliency_scores": []}, 5)


def test_highlight_labels_and_thresholds():
    np.testing.assert_allclose(tvsum_saliency(np.full((3, 20), 3)), [0.5] * 3)
    np.testing.assert_allclose(youtube_saliency([-1, 1, 1]), [0, 1, 1])
    assert positive_threshold(np.array([0.1, 0.4, 0.2, 0.3]), "tvsum") == pytest.approx(0.2)
    assert positive_threshold(np.zeros(3), "youtube") == 0.5
    assert positive_threshold(np.zeros(3)) == 0.0


def test_sample_positive_clip_is_the_original_draw():
    sal = np.array([0, 0.5, 0, 0.25, 0.75], dtype=np.float32)
    a, b = random.Random(3), random.Random(3)
    for _ in range(20):
        assert sample_positive_clip(sal, a) == b.sample([1, 3, 4], 1)[0]
    assert sample_positive_clip(sal, np.random.default_rng(0)) in (1, 3, 4)
    assert sample_positive_clip(sal, random.Random(0), threshold=0.6) == 4
    with pytest.raises(ValueError, match="no clip"):
        sample_positive_clip(np.zeros(4), random.Random(0))


def _sample(t, n, q, boundary=None):
    return Sample(
        qid=q,
        vid="v" + q,
        video=torch.ones(t, 2, 3, 4, dtype=torch.float16),
        query=torch.ones(n, 2, 5),
        fps=0.5,
        duration=2.0 * t,
        boundary=torch.tensor(boundary or [[0.0, 2.0]]),
        saliency=torch.ones(t),
        pos_clip=0,
    )


def test_collate_pads_like_the_original():
    b = collate([_sample(4, 3, "a", [[0.0, 2.0], [4.0, 6.0]]), _sample(2, 5, "b")])
    assert b.video.shape == (2, 4, 2, 3, 4) and b.video.dtype == torch.float16
    assert b.query.shape == (2, 5, 2, 5)
    assert b.video_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert b.query_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b.video[1, 2:].abs().sum() == 0 and b.query[0, 3:].abs().sum() == 0
    assert torch.isinf(b.boundary[1, 1]).all() and b.saliency[1].tolist() == [1, 1, 0, 0]
    assert b.pos_clip.tolist() == [0, 0] and b.qids == ["a", "b"] and b.lengths.tolist() == [4, 2]
    assert b.to("cpu").video.shape == b.video.shape


def test_collate_names_the_bad_sample():
    bad = _sample(3, 2, "bad")
    bad.saliency = torch.ones(5)
    with pytest.raises(ValueError, match="qid bad: saliency has 5 values for 3 clips"):
        collate([_sample(3, 2, "ok"), bad])
    other = _sample(3, 2, "wide")
    other.video = torch.ones(3, 2, 3, 6)
    with pytest.raises(ValueError, match="qid wide: feature shape"):
        collate([_sample(3, 2, "ok"), other])
    with pytest.raises(ValueError, match="at least one"):
        collate([])
