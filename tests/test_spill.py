"""Long videos' decoded frames go through a file, not memory: same cache, no leftovers."""

from __future__ import annotations

import numpy as np
import pytest
from videogen import write_video

from r2.cache import FeatureCache
from r2.extract import extract, spill
from r2.extract.decode import VideoError, decode_video
from r2.extract.spill import SpilledFrames, spill_frames
from r2.extract.tiny_clip import make_tiny_clip

SIZE = 32  # pixels: the tiny CLIP's input


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, seconds in enumerate((30, 47)):
        write_video(root / f"v{i}.mp4", seconds * 10, fps=10, size=(64, 48), keyint=15,
                    bframes=2, content="texture")  # fmt: skip
    return root


def test_spilled_frames_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (11, SIZE, SIZE, 3), dtype=np.uint8)
    spilled = spill_frames(iter(frames), tmp_path, SIZE)
    assert len(spilled) == 11 and spilled.shape == frames.shape
    np.testing.assert_array_equal(spilled[0:11], frames)
    np.testing.assert_array_equal(spilled[3:7], frames[3:7])
    np.testing.assert_array_equal(spilled[9:40], frames[9:])  # clipped like an array
    assert spilled[5:5].shape == (0, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="contiguous"):
        spilled[::2]
    spilled.release()
    assert list(tmp_path.iterdir()) == []
    spilled.release()  # idempotent


def test_a_truncated_spill_file_is_an_error_not_garbage(tmp_path):
    spilled = spill_frames(iter(np.zeros((4, SIZE, SIZE, 3), np.uint8)), tmp_path, SIZE)
    with open(spilled.path, "r+b") as f:
        f.truncate(SIZE * SIZE * 3 * 2 + 5)
    with pytest.raises(OSError, match="truncated"):
        spilled[0:4]


def test_decode_failure_midway_leaves_no_file(tmp_path):
    def frames():
        yield np.zeros((SIZE, SIZE, 3), np.uint8)
        raise VideoError("x.mp4: cannot decode frame 1")

    with pytest.raises(VideoError):
        spill_frames(frames(), tmp_path, SIZE)
    assert list(tmp_path.iterdir()) == []


def test_decode_video_spills_long_videos_only(videos, tmp_path):
    path = videos / "v0.mp4"
    in_memory = decode_video(path, 0.5, SIZE, spill_dir=tmp_path)  # 15 frames: small
    assert isinstance(in_memory.frames, np.ndarray)
    spilled = decode_video(path, 0.5, SIZE, spill_dir=tmp_path, spill_bytes=0)
    assert isinstance(spilled.frames, SpilledFrames)
    assert (spilled.n_clips, spilled.duration) == (in_memory.n_clips, in_memory.duration)
    np.testing.assert_array_equal(spilled.frames[0 : spilled.n_clips], in_memory.frames)


@pytest.mark.parametrize("workers", [0, 1])
def test_extraction_through_spill_files_gives_the_same_cache(
    tiny, videos, tmp_path, monkeypatch, workers
):
    plain = extract([videos], tmp_path / "plain.h5", model=tiny, workers=workers)
    written = []
    original = spill.spill_frames
    monkeypatch.setattr(spill, "SPILL_BYTES", 0)  # every video spills (passed to workers)
    if workers == 0:  # inline decoding: the spill can be observed directly

        def observed(frames, folder, size):
            written.append(original(frames, folder, size))
            return written[-1]

        monkeypatch.setattr("r2.extract.decode.spill_frames", observed)
    out = tmp_path / "spilled.h5"
    (tmp_path / "spilled.h5.frames").mkdir()  # a killed run's leftovers
    (tmp_path / "spilled.h5.frames" / "stale.rgb").write_bytes(b"x" * 100)
    spilled = extract([videos], out, model=tiny, workers=workers)
    # completion order may differ (decode workers finish in any order); the set may not
    assert sorted(spilled.videos_done) == sorted(plain.videos_done)
    assert not spilled.videos_skipped
    if workers == 0:
        assert len(written) == 2
    assert not (tmp_path / "spilled.h5.frames").exists()  # removed, with the stale file
    with FeatureCache(tmp_path / "plain.h5") as a, FeatureCache(out) as b:
        for vid in a.video_ids():
            np.testing.assert_array_equal(a.video(vid), b.video(vid))
