"""r2.cache: round trips, ids, incremental appends, settings checks, errors, locking, readers.

(Crash safety under SIGKILL is tested in test_cache_crash.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap

import h5py  # only to build foreign / tampered HDF5 files for the error tests
import numpy as np
import pytest

import r2
from r2.cache import (
    FORMAT_VERSION,
    CacheError,
    CacheMismatchError,
    CacheSettings,
    CacheWriter,
    FeatureCache,
    QueryRecord,
    VideoRecord,
    read_settings,
)

SETTINGS = CacheSettings(
    model_id="openai/clip-vit-base-patch32", revision="3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268",
    k=2, fps=0.5, frame_at="middle", image_size=32, mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711), dtype="fp32", tokens_per_frame=3, video_dim=8,
    text_dim=6,
)  # fmt: skip
WEIRD_IDS = [
    "plain", "a/b/c", "../../etc/passwd", "/abs/path", "..", ".", " ", "  lead and trail  ",
    "", "tab\tnew\nline", "nul\x00byte", "日本語のビデオ", "emoji 🎬", "C:\\windows\\x",
    "lone surrogate \udcff", "x" * 5000, "%s{}[]*?", "-rf",
]  # fmt: skip


def video(vid: str, n: int = 3, seed: int = 0, size: int = 100, mtime: float = 1.5,
          partial: bool = False) -> tuple[VideoRecord, np.ndarray]:  # fmt: skip
    feats = np.random.default_rng(seed).standard_normal((n, 2, 3, 8)).astype(np.float16)
    return VideoRecord(vid, 2.0 * n - 0.3, n, f"/data/{vid}.mp4", size, mtime, partial), feats


def query(qid: str, n: int = 4, text: str = "a man cooks", seed: int = 0):
    feats = np.random.default_rng(seed).standard_normal((n, 2, 6)).astype(np.float16)
    return QueryRecord(qid, text, n, False), feats


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture
def cache_path(tmp_path):
    return tmp_path / "feats.h5"


def test_round_trip_exact_with_all_metadata(cache_path):
    v1, v2 = video("v1", 5, seed=1), video("v2", 1, seed=2, partial=True)
    q1, q2 = query("7", 3, "first", seed=3), query("8", 77, "second", seed=4)
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*v1)
        w.add_video(*v2)
        w.add_queries([q1[0], q2[0]], [q1[1], q2[1]])
    with FeatureCache(cache_path) as c:
        assert c.settings == SETTINGS and read_settings(cache_path) == SETTINGS
        assert c.video_ids() == ["v1", "v2"] and c.query_ids() == ["7", "8"]
        for record, feats in (v1, v2):
            assert c.video_record(record.vid) == record
            got = c.video(record.vid)
            assert got.dtype == np.float16 and got.tobytes() == feats.tobytes()
        for record, feats in (q1, q2):
            assert c.query_record(record.qid) == record
            assert c.query(record.qid).tobytes() == feats.tobytes()
        assert c.attrs["format_version"] == FORMAT_VERSION
        assert c.attrs["r2_version"] == r2.__version__
        assert c.attrs["revision"] == SETTINGS.revision and c.attrs["k"] == 2
        assert c.attrs["created"].startswith("20")
        summary = c.summary()
        assert (summary["videos"], summary["queries"], summary["clips"]) == (2, 2, 6)
        assert summary["partial_videos"] == 1 and summary["file_bytes"] > 0
        assert summary["settings"]["model_id"] == SETTINGS.model_id


def test_unknown_revision_is_stored_as_none(cache_path):
    settings = dataclasses.replace(SETTINGS, revision=None)
    with CacheWriter(cache_path, settings) as w:
        w.add_video(*video("a"))
    assert read_settings(cache_path).revision is None


def test_arbitrary_ids_round_trip_and_never_become_paths(tmp_path):
    path = tmp_path / "ids" / "c.h5"
    with CacheWriter(path, SETTINGS) as w:
        for i, vid in enumerate(WEIRD_IDS):
            w.add_video(*video(vid, 1 + i % 3, seed=i))
        items = [
            query(qid, 1 + i % 4, text=qid + " text", seed=i) for i, qid in enumerate(WEIRD_IDS)
        ]
        w.add_queries([r for r, _ in items], [f for _, f in items])
    assert os.listdir(tmp_path) == ["ids"]
    assert sorted(os.listdir(path.parent)) == ["c.h5"]  # the cache only: no lock file left
    with FeatureCache(path) as c:
        assert c.video_ids() == WEIRD_IDS and c.query_ids() == WEIRD_IDS
        for i, vid in enumerate(WEIRD_IDS):
            assert c.video(vid).tobytes() == video(vid, 1 + i % 3, seed=i)[1].tobytes()
            assert c.video_record(vid).source == f"/data/{vid}.mp4"
            assert c.query_record(vid).text == vid + " text"
        with pytest.raises(KeyError, match="not in cache"):
            c.video("missing")
        with pytest.raises(KeyError, match="not in cache"):
            c.query_record("plain ")


def test_incremental_skip_append_and_supersede(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*video("a", 3, seed=1, size=10, mtime=5.0))
        w.add_video(*video("b", 2, seed=2, size=20, mtime=6.0))
        w.add_queries(*zip(query("1", text="old text"), strict=True))
    with CacheWriter(cache_path, SETTINGS) as w:
        assert w.video_is_current("a", 10, 5.0) and w.video_is_current("b", 20, 6.0)
        assert not w.video_is_current("a", 11, 5.0) and not w.video_is_current("a", 10, 5.5)
        assert not w.video_is_current("c", 10, 5.0)
        assert w.has_query("1", "old text") and not w.has_query("1", "new text")
        assert not w.has_query("2", "old text")
        w.add_video(*video("a", 4, seed=9, size=11, mtime=7.0))  # source changed
        w.add_video(*video("c", 1, seed=3))
        w.add_queries(*zip(query("1", 2, text="new text", seed=5), strict=True))
        assert w.video_is_current("a", 11, 7.0) and not w.video_is_current("a", 10, 5.0)
        assert w.has_query("1", "new text")
    with FeatureCache(cache_path) as c:
        assert c.video_ids() == ["a", "b", "c"] and c.query_ids() == ["1"]
        assert c.video(["a"][0]).tobytes() == video("a", 4, seed=9)[1].tobytes()
        assert c.video_record("a").size == 11 and c.video_record("a").n_clips == 4
        assert c.query_record("1").text == "new text"
        assert c.query("1").tobytes() == query("1", 2, seed=5)[1].tobytes()
        summary = c.summary()
        assert summary["superseded_videos"] == 1 and summary["superseded_queries"] == 1


def test_settings_mismatch_lists_every_difference_and_leaves_file_untouched(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*video("a"))
    before = sha(cache_path)
    other = dataclasses.replace(SETTINGS, k=4, fps=1.0, model_id="other", revision=None)
    with pytest.raises(CacheMismatchError) as info:
        CacheWriter(cache_path, other)
    message = str(info.value)
    assert str(cache_path) in message
    for field in ("k: 2 vs 4", "fps: 0.5 vs 1.0", "model_id:"):
        assert field in message
    assert len(info.value.differences) == 3  # an unknown revision is not a difference
    assert sha(cache_path) == before
    with CacheWriter(cache_path, SETTINGS) as w:  # the lock was released
        assert w.video_is_current("a", 100, 1.5)


def test_settings_validation_and_mismatches():
    with pytest.raises(ValueError) as info:
        CacheSettings("m", None, 0, -1.0, "end", 224, (0, 0), (1, 1, 0), "fp64", 50, 768, 512)
    for problem in ("frame_at", "dtype", "k must", "fps must", "mean must", "std must"):
        assert problem in str(info.value)
    a = dataclasses.replace(SETTINGS, mean=[0.48145466, 0.4578275, 0.40821073])
    assert a == SETTINGS and a.mean == SETTINGS.mean  # lists are normalised to tuples
    b = dataclasses.replace(SETTINGS, image_size=224, dtype="fp16")
    assert SETTINGS.mismatches(b) == ["image_size: 32 vs 224", "dtype: 'fp32' vs 'fp16'"]
    assert SETTINGS.mismatches(SETTINGS) == []


def test_bad_features_are_rejected_and_leave_the_cache_usable(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        record, feats = video("a", 3)
        with pytest.raises(TypeError, match="float16"):
            w.add_video(record, feats.astype(np.float32))
        with pytest.raises(ValueError, match="shape"):
            w.add_video(record, feats[:2])
        with pytest.raises(ValueError, match="shape"):
            w.add_video(record, np.zeros((3, 2, 3, 9), np.float16))
        bad = feats.copy()
        bad[1, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            w.add_video(record, bad)
        qrec, qfeats = query("q")
        with pytest.raises(ValueError, match="shape"):
            w.add_queries([qrec], [qfeats[:, :1]])
        with pytest.raises(ValueError, match="1 query records but 2"):
            w.add_queries([qrec], [qfeats, qfeats])
        w.add_queries([], [])
        w.add_video(record, feats)
    with FeatureCache(cache_path) as c:
        assert c.video_ids() == ["a"] and c.query_ids() == []
    writer = CacheWriter(cache_path, SETTINGS)
    writer.close()
    with pytest.raises(CacheError, match="closed"):
        writer.add_video(record, feats)


def test_non_cache_and_corrupt_files_give_clear_errors(tmp_path):
    cases = {"text.h5": b"hello, not HDF5 at all", "empty.h5": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    with h5py.File(tmp_path / "foreign_v3.h5", "w", libver="latest") as f:
        f["x"] = np.arange(3)
    good = tmp_path / "good.h5"
    with CacheWriter(good, SETTINGS) as w:
        w.add_video(*video("a", 3))
    (tmp_path / "truncated.h5").write_bytes(good.read_bytes()[:3000])
    damaged = bytearray(good.read_bytes())
    damaged[20:40] = b"\xff" * 20  # inside the superblock
    (tmp_path / "damaged.h5").write_bytes(bytes(damaged))
    names = ["text.h5", "empty.h5", "foreign.h5", "foreign_v3.h5", "truncated.h5", "damaged.h5"]
    for name in [*names, "missing.h5"]:
        path = tmp_path / name
        before = sha(path) if path.exists() else None
        for opener in (FeatureCache, read_settings, lambda p: CacheWriter(p, SETTINGS)):
            if name == "missing.h5" and opener not in (FeatureCache, read_settings):
                continue
            with pytest.raises(CacheError, match=str(path).replace("\\", "\\\\")):
                opener(path)
        assert (sha(path) if path.exists() else None) == before, name
    with pytest.raises(CacheError, match="directory"):
        FeatureCache(tmp_path)


def test_newer_format_version_is_refused(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*video("a"))
    with h5py.File(cache_path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheError, match="format version"):
        FeatureCache(cache_path)


def test_parent_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "c" / "cache.h5"
    with CacheWriter(path, SETTINGS) as w:
        w.add_video(*video("v"))
    assert FeatureCache(path).video_ids() == ["v"]


def _hold_writer(path, ready, release) -> None:
    with CacheWriter(path, SETTINGS) as w:
        w.add_video(*video("held"))
        ready.set()
        release.wait(30)


def test_second_writer_is_refused_while_the_first_is_open(cache_path):
    first = CacheWriter(cache_path, SETTINGS)
    with pytest.raises(CacheError, match="another process is writing"):
        CacheWriter(cache_path, SETTINGS)
    first.close()
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_writer, args=(cache_path, ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(CacheError, match="writer lock"):
            CacheWriter(cache_path, SETTINGS)
        assert FeatureCache(cache_path).video_ids() == ["held"]  # readers are not blocked
    finally:
        release.set()
        proc.join(30)
    with CacheWriter(cache_path, SETTINGS) as w:
        assert w.video_is_current("held", 100, 1.5)


def test_reader_sees_committed_items_while_a_writer_is_open(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        w.add_video(*video("a", seed=1))
        with FeatureCache(cache_path) as first:
            assert first.video_ids() == ["a"]
            w.add_video(*video("b", seed=2))
            assert first.video_ids() == ["a"]  # a snapshot
            assert first.video("a").tobytes() == video("a", seed=1)[1].tobytes()
        with FeatureCache(cache_path) as second:
            assert second.video_ids() == ["a", "b"]
            assert second.video("b").tobytes() == video("b", seed=2)[1].tobytes()


def _digest_in_worker(cache: FeatureCache, queue) -> None:
    queue.put({vid: cache.video(vid).tobytes() for vid in cache.video_ids()})


def test_reader_works_in_forked_workers_and_pickles(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        for i in range(5):
            w.add_video(*video(f"v{i}", 1 + i, seed=i))
    cache = FeatureCache(cache_path)
    expected = {vid: cache.video(vid).tobytes() for vid in cache.video_ids()}  # parent handle open
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_digest_in_worker, args=(cache, queue)) for _ in range(2)]
    for p in workers:
        p.start()
    results = [queue.get(timeout=60) for _ in workers]
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    assert all(r == expected for r in results)
    assert cache.video("v2").tobytes() == expected["v2"]  # the parent's handle still works
    clone = pickle.loads(pickle.dumps(cache))
    assert {vid: clone.video(vid).tobytes() for vid in clone.video_ids()} == expected
    cache.close()
    clone.close()


def _use_writer_in_child(writer: CacheWriter, queue) -> None:
    try:
        writer.add_video(*video("from-child"))
        queue.put("wrote")
    except CacheError as exc:
        writer.close()  # must not close the parent's file
        queue.put(str(exc))


def test_a_writer_is_unusable_in_a_forked_child(cache_path):
    with CacheWriter(cache_path, SETTINGS) as w:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_use_writer_in_child, args=(w, queue))
        proc.start()
        assert "forked process" in queue.get(timeout=60)
        proc.join(30)
        w.add_video(*video("from-parent"))  # the parent's writer is intact
    assert FeatureCache(cache_path).video_ids() == ["from-parent"]


@pytest.mark.parametrize("env", ["TRUE", "BEST_EFFORT"])
def test_works_when_the_environment_forces_hdf5_file_locking(tmp_path, env):
    """HDF5_USE_FILE_LOCKING overrides locking=False; r2's own lock must not collide with it."""
    code = textwrap.dedent(f"""
        import numpy as np
        from r2.cache import CacheError, CacheWriter, FeatureCache, VideoRecord
        from tests.test_cache import SETTINGS, video
        path = {str(tmp_path / "c.h5")!r}
        with CacheWriter(path, SETTINGS) as w:
            w.add_video(*video("a"))
            with FeatureCache(path) as c:  # a reader while the writer is open
                assert c.video("a").tobytes() == video("a")[1].tobytes()
            try:
                CacheWriter(path, SETTINGS)
                raise SystemExit("second writer was not refused")
            except CacheError:
                pass
        with CacheWriter(path, SETTINGS) as w:
            w.add_video(*video("b"))
        assert FeatureCache(path).video_ids() == ["a", "b"]
        print("ok")
    """)
    env_vars = {**os.environ, "HDF5_USE_FILE_LOCKING": env}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], env=env_vars, cwd=repo,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
