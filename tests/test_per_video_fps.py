"""Per-video clip rates (YouTube Highlights: fps = labels / seconds): an annotation row's
"fps" drives that video's frame choice and T in `r2 extract`, is recorded per video, and
training labels, inference windows and the predictor follow it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import videogen as vg
from videogen import write_video

from r2.api import R2Predictor
from r2.cache import FeatureCache
from r2.evaluate.inference import predict_items
from r2.extract import InputError, extract
from r2.extract.decode import decode_video
from r2.extract.encode import ClipEncoder
from r2.extract.tiny_clip import make_tiny_clip
from r2.train.annotations import read_annotations
from r2.train.checkpoint import build_meta, save_checkpoint
from r2.train.config import QVHIGHLIGHTS, get_preset
from r2.train.data import GroundingDataset, prepare_items
from r2.train.feature_identity import StaleFeaturesError
from r2.train.model import R2Model

SIDE = 64  # tiny CLIP input: the frames' index grid stays readable at this size
SECONDS, RATE = 10, 30  # each generated video: 300 frames at 30 fps
FAST = 2.0  # clips per second of video "fast" (its annotation says so); "slow": --fps 0.5


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fps")
    clip = make_tiny_clip(root / "clip", image_size=SIDE, patch_size=16)
    videos = [write_video(root / f"{v}.mp4", SECONDS * RATE, fps=RATE, size=(80, 64))
              for v in ("fast", "slow")]  # fmt: skip
    window = {"duration": SECONDS, "relevant_windows": [[2.0, 4.0]]}
    rows = [{"qid": 1, "query": "a dog", "vid": "fast", "fps": FAST, **window},
            {"qid": 2, "query": "a cat", "vid": "slow", **window},
            {"qid": 3, "query": "the dog again", "vid": "fast", "fps": FAST, **window}]  # fmt: skip
    anno = _jsonl(root / "anno.jsonl", rows)
    seen: list[np.ndarray] = []  # every frame given to CLIP, in order
    encode = ClipEncoder.encode_frames

    def spy(self, frames, *args, **kwargs):
        seen.extend(np.asarray(frames))
        return encode(self, frames, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClipEncoder, "encode_frames", spy)
        summary = extract(videos, root / "c.h5", [anno], model=str(clip), workers=0)
    assert sorted(summary.videos_done) == ["fast", "slow"]
    return {"root": root, "clip": clip, "cache": root / "c.h5", "anno": anno, "rows": rows,
            "videos": dict(zip(("fast", "slow"), videos, strict=True)), "frames": seen}  # fmt: skip


def test_extract_uses_each_videos_fps_for_frame_choice_and_t(setup):
    # the last frame before each clip's middle: k/30 < (i + 0.5)/fps
    want = {"fast": [15 * i + 7 for i in range(20)], "slow": [60 * i + 29 for i in range(5)]}
    got = [vg.read_index(f) for f in setup["frames"]]
    assert got == want["fast"] + want["slow"]  # exactly those frames, fast first
    encoder = ClipEncoder.load(str(setup["clip"]), device="cpu", towers=("vision",))
    with FeatureCache(setup["cache"]) as c:
        for vid, fps, t in (("fast", FAST, 20), ("slow", 0.5, 5)):
            record = c.video_record(vid)
            assert record.n_clips == t and c.video_fps(vid) == fps
            assert record.duration == pytest.approx(SECONDS)
            decoded = decode_video(setup["videos"][vid], fps, SIDE)
            assert [vg.read_index(f) for f in decoded.frames] == want[vid]
            # other batch sizes (batches span videos) may move a float16 value by one ulp
            np.testing.assert_allclose(c.video(vid), encoder.encode_frames(decoded.frames),
                                       rtol=1e-3, atol=1e-4)  # fmt: skip
        assert c.video_record("fast").fps == FAST and c.video_record("slow").fps is None


def test_changed_annotation_fps_re_extracts_the_video(setup, tmp_path):
    rows = [dict(r, fps=1.0) if r["vid"] == "fast" else r for r in setup["rows"]]
    anno = _jsonl(tmp_path / "anno.jsonl", rows)
    stale = r"anno.jsonl:1: field 'fps' 1 but video 'fast'"
    with pytest.raises(StaleFeaturesError, match=stale), FeatureCache(setup["cache"]) as c:
        prepare_items(read_annotations(anno), c, "charades", train=True)
    cache = tmp_path / "c.h5"
    cache.write_bytes(setup["cache"].read_bytes())
    videos = list(setup["videos"].values())
    summary = extract(videos, cache, [anno], model=str(setup["clip"]), workers=0)
    assert summary.videos_done == ["fast"] and summary.videos_cached == ["slow"]
    with FeatureCache(cache) as c:
        assert c.video_record("fast").n_clips == 10 and c.video_fps("fast") == 1.0


def test_rows_of_one_video_must_agree_on_fps(setup, tmp_path):
    rows = [*setup["rows"], {"qid": 9, "query": "x", "vid": "fast", "fps": 1.0}]
    anno = _jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(InputError, match=r"a.jsonl:4: field 'fps'.* video 'fast'.*a.jsonl:1"):
        extract([], tmp_path / "c.h5", [anno], model=str(setup["clip"]))
    bad = _jsonl(tmp_path / "b.jsonl", [{"qid": 1, "query": "x", "vid": "v", "fps": -2}])
    with pytest.raises(InputError, match=r"b.jsonl:1: field 'fps':? must be a positive number"):
        extract([], tmp_path / "c.h5", [bad], model=str(setup["clip"]))
    assert not (tmp_path / "c.h5").exists()


def _model(settings) -> R2Model:
    torch.manual_seed(0)
    cfg = QVHIGHLIGHTS.model_config(video_dim=settings.video_dim, query_dim=settings.text_dim,
                                    k=settings.k, dims=32, heads=4)  # fmt: skip
    return R2Model(cfg).eval()


def test_training_labels_and_inference_use_each_videos_fps(setup):
    with FeatureCache(setup["cache"]) as c:
        items = prepare_items(read_annotations(setup["anno"]), c, "charades", train=True)
        by_vid = {it.anno.vid: it for it in items}
        fast, slow = by_vid["fast"], by_vid["slow"]
        assert (fast.fps, fast.n_clips, slow.fps, slow.n_clips) == (FAST, 20, 0.5, 5)
        # the window [2 s, 4 s] touches clips 4..7 at 2 clips/s, clip 1 at 0.5 clip/s
        assert np.flatnonzero(fast.saliency).tolist() == [4, 5, 6, 7]
        assert np.flatnonzero(slow.saliency).tolist() == [1]
        dataset = GroundingDataset(items, c, c.settings.fps, c.settings.k, train=True)
        assert [dataset[i].fps for i in range(len(items))] == [it.fps for it in items]
        model = _model(c.settings)
        seen = []
        forward = model.forward
        model.forward = lambda batch: (seen.append(batch.fps.tolist()), forward(batch))[1]
        rows = predict_items(model, c, items, get_preset("charades"), c.settings.fps)
    assert seen == [[it.fps] for it in items]  # each video's own rate reaches the model
    for it, row in zip(items, rows, strict=True):
        assert len(row["pred_saliency_scores"]) == it.n_clips
        assert all(0 <= s < e <= SECONDS for s, e, _ in row["pred_relevant_windows"])


def test_predictor_encodes_a_video_at_its_own_fps(setup):
    with FeatureCache(setup["cache"]) as c:
        settings, cached = c.settings, c.video("fast")
    ckpt = save_checkpoint(setup["root"] / "run" / "best", _model(settings),
                           build_meta(_model(settings).cfg, QVHIGHLIGHTS, settings))  # fmt: skip
    predictor = R2Predictor.from_pretrained(ckpt, device="cpu")
    video = predictor.encode_video(setup["videos"]["fast"], fps=FAST)
    assert video.fps == FAST and video.features.shape[0] == 20
    np.testing.assert_allclose(video.features, cached, rtol=1e-3, atol=1e-4)
    pred = predictor.predict(video, "a dog")
    assert pred.fps == FAST and pred.saliency.shape == (20,) and pred.duration == SECONDS
    assert predictor.encode_video(setup["videos"]["fast"]).features.shape[0] == 5  # default
