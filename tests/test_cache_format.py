"""Cache format 2: a cache is what its attributes say, per-video fps, checksums, streaming
writes, version-1 files, and no debris.

(Round trips and locking: test_cache.py; SIGKILL: test_cache_crash.py; tools:
test_cache_tools.py; damaged files that used to hang: test_cache_hang.py.)
"""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
import zlib

import h5py  # only to tamper with files
import numpy as np
import pytest
from cache_v1 import write_v1_cache
from test_cache import SETTINGS, query, video

from r2.cache import (
    FORMAT_VERSION,
    CacheError,
    CacheWriter,
    FeatureCache,
    VideoRecord,
    read_settings,
)
from r2.cache.rebuild import compact


@pytest.fixture
def cache_path(tmp_path):
    return tmp_path / "feats.h5"


def _two_items(path):
    with CacheWriter(path, SETTINGS) as w:
        w.add_video(*video("a", 3, seed=1))
        w.add_video(*video("b", 5, seed=2))
        w.add_queries(*zip(query("1", 4, seed=3), strict=True))
    return path


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("fps", 1.0, "settings_digest"),
        ("model_id", "another/model", "settings_digest"),
        ("dtype", "fp16", "settings_digest"),
        ("k", 3, r"\(k, tokens_per_frame, video_dim\) say \(3, 3, 8\)"),
        ("tokens_per_frame", 4, r"say \(2, 4, 8\)"),
        ("text_dim", 7, r"\(k, text_dim\) say \(2, 7\)"),
        ("format_version", 1, "layout of format version 1"),
    ],
)
def test_hand_edited_root_attributes_are_refused(cache_path, attr, value, message):
    _two_items(cache_path)
    with h5py.File(cache_path, "r+", locking=False) as f:
        f.attrs[attr] = value
    for opener in (FeatureCache, read_settings, lambda p: CacheWriter(p, SETTINGS)):
        with pytest.raises(CacheError, match=message) as err:
            opener(cache_path)
        assert str(cache_path) in str(err.value)


def _rewrite_commit(path, change) -> None:
    """Replace the newest commit slot by `change(counts)`, with a valid checksum."""
    with h5py.File(path, "r+", locking=False) as f:
        slots = f["committed"][:]
        newest = int(np.argmax(slots[:, 0]))
        body = slots[newest, :6].copy()
        body[1:] = change(list(body[1:]))
        slots[newest] = np.concatenate([body, [zlib.crc32(body.astype("<i8").tobytes()), 0]])
        f["committed"][...] = slots


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4])
def test_commit_counts_inflated_past_the_datasets_are_refused(cache_path, which):
    _two_items(cache_path)
    _rewrite_commit(cache_path, lambda c: [x + 1000 * (i == which) for i, x in enumerate(c)])
    with pytest.raises(CacheError, match=r"claims .* rows of /.* but the dataset holds") as err:
        FeatureCache(cache_path)
    assert str(cache_path) in str(err.value)


def test_clip_count_must_match_duration_times_fps(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*video("ok", 5))  # 9.7 s at 0.5 clip/s: 5 clips
        record, feats = video("short", 5)
        with pytest.raises(ValueError, match=r"5 clips but 30 s at 0\.5 clips/s make 15"):
            w.add_video(dataclasses.replace(record, duration=30.0), feats)
        w.add_video(dataclasses.replace(record, duration=30.0, partial=True), feats)  # allowed
        w.add_video(dataclasses.replace(record, vid="edge", duration=11.0), feats)  # 6 ± 1
    with h5py.File(cache_path, "r+", locking=False) as f:
        rows = f["video/index"][:]
        rows[0]["duration"] = 60.0  # hand-edited: 5 clips for 60 s
        f["video/index"][...] = rows
    with pytest.raises(CacheError, match=r"video 'ok' \(index row 0\) has 5 clips but 60 s"):
        FeatureCache(cache_path)


def test_per_video_fps_is_stored_and_used(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        feats = video("fast", 20)[1]
        fast = VideoRecord("fast", 10.0, 20, "/v/fast.mp4", 1, 2.0, False, fps=2.0)
        w.add_video(fast, feats)
        w.add_video(*video("default", 5))
        with pytest.raises(ValueError, match="fps must be a positive number"):
            w.add_video(dataclasses.replace(fast, vid="bad", fps=-1.0), feats)
        with pytest.raises(ValueError, match=r"20 clips but 10 s at 0\.5 clips/s"):
            w.add_video(dataclasses.replace(fast, vid="wrong", fps=None), feats)
        assert w.video_is_current("fast", 1, 2.0, fps=2.0)
        assert not w.video_is_current("fast", 1, 2.0)  # at the cache's 0.5: re-extract
        assert w.video_is_current("default", 100, 1.5) and w.video_is_current(
            "default", 100, 1.5, 0.5
        )
    with FeatureCache(cache_path) as c:
        assert c.video_record("fast") == fast and c.video_fps("fast") == 2.0
        assert c.video_record("default").fps is None and c.video_fps("default") == 0.5
        assert c.summary()["video_fps"] == [0.5, 2.0]
        np.testing.assert_array_equal(c.video("fast"), feats)


def test_checksums_are_stored_and_verified(cache_path):
    _two_items(cache_path)
    with FeatureCache(cache_path) as c:
        entry = c.index.videos["b"]
        assert entry.crc == zlib.crc32(video("b", 5, seed=2)[1].tobytes())
        assert c.index.queries["1"].crc == zlib.crc32(query("1", 4, seed=3)[1].tobytes())
        c.video("b", verify=True)
        offset = c.index.videos["b"].start + 2  # a frame row in the middle of "b"
    with h5py.File(cache_path, "r", locking=False) as f:
        frames = f["video/frames"]
        chunk = frames.id.get_chunk_info_by_coord((offset, 0, 0, 0))
        first_row = offset // frames.chunks[0] * frames.chunks[0]  # of the chunk
    row_bytes = 2 * 3 * 8 * 2  # K * P * Dv float16
    with open(cache_path, "r+b") as fh:  # flip bytes of the stored features (no HDF5 write)
        fh.seek(chunk.byte_offset + (offset - first_row) * row_bytes + 10)
        fh.write(b"\x12\x34\x56")
    with FeatureCache(cache_path) as c:
        c.video("b")  # unverified reads still work ...
        with pytest.raises(CacheError, match="video 'b' fail their checksum"):
            c.video("b", verify=True)  # ... the checksum finds the damage
        c.video("a", verify=True)


def test_video_stream_writes_chunks_and_commits_once(cache_path):
    feats = video("long", 50, seed=4)[1]
    record = VideoRecord("long", 0.0, 0, "/v/long.mp4", 9, 1.0, False)
    with CacheWriter(cache_path, SETTINGS) as w:
        with w.video_stream(record) as s:
            for at in range(0, 50, 7):
                s.write(feats[at : at + 7])
                with FeatureCache(cache_path) as reader:
                    assert not reader.has_video("long")  # nothing visible before the commit
                with pytest.raises(CacheError, match="still being written"):
                    w.add_video(*video("other"))
            w.add_queries(*zip(query("q"), strict=True))  # queries may go in meanwhile
            s.update(duration=100.0)
        assert s.rows == 50
        with pytest.raises(RuntimeError), w.video_stream(record) as s:
            s.write(feats[:3])
            raise RuntimeError("the decoder died")  # discarded, nothing committed
        with pytest.raises(ValueError, match="NaN"), w.video_stream(record) as s:
            s.write(np.full((2, 2, 3, 8), np.nan, np.float16))
        w.add_video(*video("after", 2, seed=5))
    with FeatureCache(cache_path) as c:
        assert c.video_ids() == ["long", "after"] and c.query_ids() == ["q"]
        assert c.video_record("long") == dataclasses.replace(record, n_clips=50, duration=100.0)
        np.testing.assert_array_equal(c.video("long", verify=True), feats)
        np.testing.assert_array_equal(c.video("after", verify=True), video("after", 2, seed=5)[1])


def test_video_stream_memory_does_not_grow_with_the_video(tmp_path):
    settings = dataclasses.replace(SETTINGS, tokens_per_frame=50, video_dim=256)
    chunk = np.random.default_rng(0).standard_normal((8, 2, 50, 256)).astype(np.float16)
    peaks = []
    for n_chunks in (10, 80):  # 3.3 MB and 26 MB of features
        with CacheWriter(tmp_path / f"{n_chunks}.h5", settings) as w:
            record = VideoRecord("v", 16.0 * n_chunks, 0, "/v.mp4", 1, 1.0, False)
            tracemalloc.start()
            with w.video_stream(record) as s:
                for _ in range(n_chunks):
                    s.write(chunk)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    assert peaks[1] < 2 * chunk.nbytes + 2**20, peaks  # bounded by a chunk, not the video
    assert peaks[1] < 1.5 * peaks[0] + 2**20, peaks


def test_version_1_is_read_refused_for_append_and_upgraded_by_compact(cache_path):
    items = [video("a", 3, seed=1), video("b", 2, seed=2)]
    queries = [query("1", 4, seed=3)]
    write_v1_cache(cache_path, SETTINGS, items, queries)
    with FeatureCache(cache_path) as c:
        assert c.version == 1 and c.video_ids() == ["a", "b"] and c.video_fps("a") == 0.5
        np.testing.assert_array_equal(c.video("b", verify=True), items[1][1])  # no checksum
        assert c.index.videos["a"].crc is None
    before = cache_path.read_bytes()
    with pytest.raises(CacheError, match=f"r2 cache compact {cache_path}"):
        CacheWriter(cache_path, SETTINGS)
    assert cache_path.read_bytes() == before and not os.path.exists(f"{cache_path}.lock")
    compact(cache_path)
    with FeatureCache(cache_path) as c:
        assert c.version == FORMAT_VERSION and c.video_ids() == ["a", "b"]
        for record, feats in items:
            assert c.video_record(record.vid) == record
            np.testing.assert_array_equal(c.video(record.vid, verify=True), feats)
        np.testing.assert_array_equal(c.query("1", verify=True), queries[0][1])
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*video("c"))


def test_no_empty_cache_or_lock_file_is_left_behind(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, SETTINGS):
        pass  # created, nothing committed: an empty cache is debris
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError), CacheWriter(path, SETTINGS) as w:
        with pytest.raises(ValueError):
            w.add_video(*video("a", 3)[:1], np.zeros((3,), np.float16))
        raise RuntimeError("the run failed before committing anything")
    assert os.listdir(tmp_path) == []
    _two_items(path)
    other = dataclasses.replace(SETTINGS, k=3)
    with pytest.raises(CacheError):
        CacheWriter(path, other)  # refused: the existing cache stays, no lock file
    assert os.listdir(tmp_path) == ["c.h5"]
    with CacheWriter(path, SETTINGS):
        pass  # an existing cache is never deleted
    assert os.listdir(tmp_path) == ["c.h5"]
