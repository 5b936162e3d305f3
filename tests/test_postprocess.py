"""Post-processing (spec §4): the original's output for a known raw output, and hand cases."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from r2.evaluate.postprocess import postprocess_windows, upsample_saliency

f32 = np.float32


def test_clamp_then_round_only_rows_ending_before_duration():
    raw = np.array([[-1.2, 3.1, 0.9], [7.3, 12.0, 0.8], [5.0, 9.0, 0.7], [1.0, 3.0, 0.6]])
    out = postprocess_windows(raw, duration=10.0, unit=2, nms="none")
    assert out.dtype == np.float32
    expected = [
        [0, 4, 0.9],  # clamped to [0, 3.1], then 1.55 * 2 -> round -> 4
        [7.3, 10, 0.8],  # ended after the duration: clamped, NOT rounded
        [4, 8, 0.7],  # 2.5 and 4.5 round half to even -> 2 and 4
        [0, 4, 0.6],  # 0.5 -> 0, 1.5 -> 2
    ]
    assert np.array_equal(out, np.array(expected, dtype=f32))  # "none": no NMS, no sort
    assert raw[0, 0] == -1.2  # input untouched
    no_unit = postprocess_windows(raw, duration=10.0, unit=None, nms="none")
    assert np.array_equal(
        no_unit[:, :2], np.array([[0, 3.1], [7.3, 10], [5, 9], [1, 3]], dtype=f32)
    )


RAW = np.array([[0, 10, 0.9], [1, 10, 0.8], [0, 5, 0.95], [20, 30, 0.5]])


def test_normal_nms_suppresses_at_iou_at_least_threshold():
    # [0,5] first; IoU with [0,10] is exactly 0.5 -> suppressed at threshold 0.5 (>=), while
    # [1,10] (IoU 0.4) survives. Suppressed rows stay, with score 0, at the end.
    out = postprocess_windows(RAW, 100.0, None, "normal", 0.5)
    assert np.array_equal(
        out, np.array([[0, 5, 0.95], [1, 10, 0.8], [20, 30, 0.5], [0, 10, 0]], dtype=f32)
    )
    # At 0.7: [0,10] survives and then suppresses [1,10] (IoU 0.9).
    out = postprocess_windows(RAW, 100.0, None, "normal", 0.7)
    assert np.array_equal(
        out, np.array([[0, 5, 0.95], [0, 10, 0.9], [20, 30, 0.5], [1, 10, 0]], dtype=f32)
    )


def test_linear_nms_scales_scores():
    # after [0,5]: [1,10] .8 * (1 - .4) = .48, [0,10] .9 * (1 - .5) = .45, [20,30] .5;
    # then [20,30] (no overlap), then [1,10] scales [0,10] by 1 - .9 -> .045.
    out = postprocess_windows(RAW, 100.0, None, "linear")
    assert np.array_equal(out[:, :2], np.array([[0, 5], [20, 30], [1, 10], [0, 10]], dtype=f32))
    assert np.allclose(out[:, 2], [0.95, 0.5, 0.48, 0.045], rtol=1e-6, atol=0)


def test_ties_keep_the_first_row():
    a = postprocess_windows(np.array([[0, 10, 0.5], [0, 9, 0.5]]), 100.0, None)
    assert np.array_equal(a, np.array([[0, 10, 0.5], [0, 9, 0]], dtype=f32))
    b = postprocess_windows(np.array([[0, 9, 0.5], [0, 10, 0.5]]), 100.0, None)
    assert np.array_equal(b, np.array([[0, 9, 0.5], [0, 10, 0]], dtype=f32))


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        postprocess_windows(np.array([[0, 1, np.nan]]), 10.0, 2)
    with pytest.raises(ValueError, match="shape"):
        postprocess_windows(np.zeros((3, 2)), 10.0, 2)
    with pytest.raises(ValueError, match="unknown nms"):
        postprocess_windows(np.zeros((1, 3)), 10.0, 2, nms="gaussian")
    assert postprocess_windows(np.zeros((0, 3)), 10.0, 2).shape == (0, 3)


def test_upsample_saliency_by_hand():
    level0 = np.array([0.1, 0.9, 0.2, 0.3, 0.0], dtype=f32)
    level1 = np.array([0.5, 0.25], dtype=f32)  # -> 0.5 0.5 0.25 0.25 | pad 0.25
    level2 = np.array([0.2], dtype=f32)  # -> 0.2 x 5
    out = upsample_saliency([level0, level1, level2], 5)
    assert out.dtype == np.float32
    assert np.array_equal(out, np.array([0.5, 0.9, 0.25, 0.3, 0.25], dtype=f32))
    # 7 clips, level of 3: int(7 / 3) = 2 repeats -> 6 values, then the last repeated once
    assert np.array_equal(upsample_saliency([np.array([1.0, 2.0, 3.0])], 7), [1, 1, 2, 2, 3, 3, 3])
    # a level longer than the video is max-pooled (window int(5 / 2) = 2, tail dropped)
    assert np.array_equal(upsample_saliency([np.array([1.0, 4.0, 2.0, 3.0, 9.0])], 2), [4, 3])
    with pytest.raises(ValueError, match="cannot map"):
        upsample_saliency([np.array([1.0, 2.0, 3.0])], 2)
    with pytest.raises(ValueError, match="no scores"):
        upsample_saliency([np.array([])], 2)


def _reference(testdata):
    ref = testdata / "reference"
    tensors = load_file(ref / "test_expected.safetensors")
    sample = json.loads((ref / "test_expected.json").read_text())["samples"][0]
    return tensors, sample


def test_matches_original_postprocessed_windows(testdata):
    tensors, sample = _reference(testdata)
    pp = sample["postprocess"]
    assert (pp["unit"], pp["nms_cfg"]) == (2, {"type": "normal", "thres": 0.7})
    out = postprocess_windows(tensors["boundary_0"], pp["duration"], pp["unit"], "normal", 0.7)
    expected = np.array(pp["pred_relevant_windows"], dtype=f32)
    assert out.shape == expected.shape == (34, 3)
    kept = expected[:, 2] > 0
    assert kept.sum() == 23
    assert np.array_equal(out[:23], expected[kept])  # same windows, same scores, same order
    # suppressed rows: score 0, their order is a tie in the original's torch.sort
    assert sorted(map(tuple, out[23:].tolist())) == sorted(map(tuple, expected[~kept].tolist()))
    assert np.array_equal(np.array(pp["pred_saliency_scores"], dtype=f32), tensors["saliency_0"])


def test_saliency_from_class_scores_matches_original(testdata):
    tensors, sample = _reference(testdata)
    probs = 1 / (1 + np.exp(-tensors["class_logits_0"][:, 0].astype(np.float64)))
    levels = np.split(probs, np.cumsum(sample["pyramid_level_sizes"])[:-1])
    video, query = (
        tensors["video_emb_0"].astype(np.float64),
        tensors["query_emb_0"].astype(np.float64),
    )
    cosine = video @ query / (np.linalg.norm(video, axis=1) * np.linalg.norm(query))
    saliency = upsample_saliency(levels, sample["T"]) * cosine
    assert np.allclose(saliency, tensors["saliency_0"], rtol=0, atol=1e-6)
