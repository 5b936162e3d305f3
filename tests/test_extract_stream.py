"""Extraction streams each video's features into the cache batch by batch (memory flat in the
video's length) and commits the video once: readers never see part of it."""

from __future__ import annotations

import numpy as np
import pytest
from videogen import write_video

from r2.cache import CacheWriter, FeatureCache
from r2.extract import extract
from r2.extract.decode import decode_video
from r2.extract.encode import ClipEncoder
from r2.extract.tiny_clip import make_tiny_clip

BATCH = 4  # frames per forward pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny"))


def test_features_reach_the_cache_in_batches_and_the_video_is_committed_once(
    tiny, tmp_path, monkeypatch
):
    video = write_video(tmp_path / "v.mp4", 30, fps=10, keyint=10, size=(64, 48))  # 30 clips
    out = tmp_path / "c.h5"
    writes, commits, visible = [], [], []
    write_rows, commit_video = CacheWriter._write_rows, CacheWriter._commit_video

    def spy_write(self, name, at, data):
        write_rows(self, name, at, data)
        writes.append(len(data))
        with FeatureCache(out) as reader:  # a reader while the video is half written
            visible.append("v" in reader.video_ids())

    def spy_commit(self, record, start, crc):
        commits.append(record.n_clips)
        commit_video(self, record, start, crc)

    monkeypatch.setattr(CacheWriter, "_write_rows", spy_write)
    monkeypatch.setattr(CacheWriter, "_commit_video", spy_commit)
    summary = extract([video], out, model=tiny, workers=0, fps=10, batch_frames=BATCH)
    assert summary.videos_done == ["v"]
    assert writes == [BATCH] * 7 + [2]  # never the whole video at once
    assert commits == [30] and not any(visible)  # one commit, nothing visible before it
    encoder = ClipEncoder.load(tiny, device="cpu")
    frames = decode_video(video, 10, encoder.settings.image_size).frames
    want = np.concatenate([encoder.encode_frames(frames[i : i + BATCH], batch=BATCH)
                           for i in range(0, 30, BATCH)])  # fmt: skip
    with FeatureCache(out) as cache:
        assert np.array_equal(cache.video("v"), want)
