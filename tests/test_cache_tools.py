"""`r2 cache info | check | compact | repair | merge` as a user runs them."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import signal
import time

import h5py
import numpy as np
import pytest
from test_cache import SETTINGS, query, sha, video
from test_cache_format import _two_items
from typer.testing import CliRunner

from r2.cache import CacheWriter, FeatureCache, VideoRecord
from r2.cache.rebuild import compact, merge
from r2.cli import app


def _run(*args):
    return CliRunner().invoke(app, ["cache", *[str(a) for a in args]])


def _contents(path) -> dict:
    """Every item of a cache: records and feature bytes."""
    with FeatureCache(path) as c:
        out = {("v", v): (c.video_record(v), c.video_fps(v), c.video(v).tobytes())
               for v in c.video_ids()}  # fmt: skip
        out.update({("q", q): (c.query_record(q), c.query(q).tobytes()) for q in c.query_ids()})
    return out


def _superseding(path, n: int = 30):
    with CacheWriter(path, SETTINGS) as w:
        for i in range(n):
            w.add_video(*video(f"v{i}", 1 + i % 5, seed=i))
        for i in range(0, n, 3):  # changed sources: superseded entries
            w.add_video(*video(f"v{i}", 2, seed=100 + i, size=7))
        items = [query(str(i), 1 + i % 6, text=f"q {i}", seed=i) for i in range(n)]
        w.add_queries([r for r, _ in items], [f for _, f in items])
    return path


def test_info_reports_settings_counts_and_waste(tmp_path):
    path = _superseding(tmp_path / "c.h5")
    result = _run("info", path)
    assert result.exit_code == 0, result.output
    for text in ("format 2", "videos: 30", "queries: 30", "superseded: 10 video entries",
                 "fps 0.5", "r2 cache compact", SETTINGS.model_id):  # fmt: skip
        assert text in result.output
    missing = _run("info", tmp_path / "nope.h5")
    assert missing.exit_code == 2 and "error:" in missing.output and "nope.h5" in missing.output


def test_check_finds_corruption_and_names_the_item(tmp_path):
    path = _two_items(tmp_path / "c.h5")
    ok = _run("check", path)
    assert ok.exit_code == 0 and "ok (2 videos, 1 queries read)" in ok.output
    with FeatureCache(path) as c:
        start = c.index.queries["1"].start
    with h5py.File(path, "r", locking=False) as f:
        chunk = f["query/tokens"].id.get_chunk_info_by_coord((start, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + 5)  # query "1" starts the token dataset
        fh.write(b"\xaa\xbb")
    bad = _run("check", path)
    assert bad.exit_code == 2, bad.output
    assert "query '1' fail their checksum" in bad.output and "1 problem(s) found" in bad.output


def test_compact_drops_superseded_rows_and_keeps_every_item(tmp_path):
    path = _superseding(tmp_path / "c.h5")
    before, size = _contents(path), path.stat().st_size
    result = _run("compact", path)
    assert result.exit_code == 0, result.output
    assert _contents(path) == before
    with FeatureCache(path) as c:
        info = c.summary()
        assert info["superseded_videos"] == info["superseded_frames"] == 0
    assert path.stat().st_size <= size
    assert os.listdir(tmp_path) == ["c.h5"]  # no temporary or lock file left


def _slowed(report: str, run, *args) -> None:
    """Run `run(*args)` in a forked child whose item copies are logged to `report` (and
    slowed down, so that kills land inside the copy)."""
    from r2.cache import rebuild

    copy = rebuild._copy_video

    def logged(*a) -> None:
        copy(*a)
        with open(report, "a") as fh:
            fh.write("c\n")
        time.sleep(0.002)

    rebuild._copy_video = logged
    run(*args)
    with open(report, "a") as fh:
        fh.write("done\n")
    os._exit(0)


def _lines(report: str) -> list[str]:
    if not os.path.exists(report):
        return []
    with open(report) as fh:
        return fh.read().split()


def _kill_when(proc, report, delay: float = 0.0, copied: int = 0) -> str:
    """SIGKILL `proc` after `delay` s or once `copied` items were copied; its last phase."""
    deadline = time.monotonic() + 30
    time.sleep(delay)
    while copied and time.monotonic() < deadline:
        if len(_lines(report)) >= copied:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    lines = _lines(report)
    if os.path.exists(report):
        os.remove(report)
    return "done" if "done" in lines else ("copy" if lines else "start")


def test_compact_killed_at_random_moments_never_loses_anything(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, SETTINGS) as w:
        for i in range(150):
            w.add_video(*video(f"v{i}", 5, seed=i))
        for i in range(0, 150, 2):
            w.add_video(*video(f"v{i}", 4, seed=1000 + i, size=3))
    before = _contents(path)
    rng, report = random.Random(0), str(tmp_path.parent / "report.txt")
    ctx = multiprocessing.get_context("fork")
    phases = []
    for _ in range(8):
        proc = ctx.Process(target=_slowed, args=(report, compact, str(path)))
        proc.start()
        phases.append(_kill_when(proc, report, delay=rng.uniform(0, 0.5)))
        assert _contents(path) == before  # the old file, or the compacted one: same items
    assert phases.count("copy") >= 3, phases
    compact(path)  # finishes, and deletes the dead runs' temporary files
    assert _contents(path) == before and os.listdir(tmp_path) == ["c.h5"]


def test_repair_makes_a_crashed_file_open_with_plain_h5py(tmp_path):
    path = _two_items(tmp_path / "c.h5")

    def child() -> None:
        writer = CacheWriter(path, SETTINGS)
        writer.add_video(*video("c", 2))
        os.kill(os.getpid(), signal.SIGKILL)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    with pytest.raises(OSError, match="h5clear"):
        h5py.File(path, "r", locking=False)  # what other tools see after a crash
    result = _run("repair", path)
    assert result.exit_code == 0 and "cleared" in result.output, result.output
    with h5py.File(path, "r", locking=False) as f:
        assert "video/frames" in f
    assert "nothing to repair" in _run("repair", path).output
    assert sorted(os.listdir(tmp_path)) == ["c.h5"]  # the dead writer's lock file is gone


def _shard(path, vids, seed=0, settings=SETTINGS, fps=None):
    with CacheWriter(path, settings) as w:
        for i, vid in enumerate(vids):
            record, feats = video(vid, 2, seed=seed + i)
            if fps:
                record = VideoRecord(vid, 2 / fps, 2, record.source, 1, 1.0, False, fps)
            w.add_video(record, feats)
        items = [query(f"q-{v}", 3, text=f"text {v}", seed=seed + i) for i, v in enumerate(vids)]
        w.add_queries([r for r, _ in items], [f for _, f in items])
    return path


def test_merge_unites_shards_and_reads_like_one_cache(tmp_path):
    a = _shard(tmp_path / "a.h5", ["x", "y"], seed=0, fps=2.0)
    b = _shard(tmp_path / "b.h5", ["z"], seed=10)
    result = _run("merge", a, b, "--out", tmp_path / "all.h5")
    assert result.exit_code == 0, result.output
    merged = _contents(tmp_path / "all.h5")
    assert merged == {**_contents(a), **_contents(b)}
    with FeatureCache(tmp_path / "all.h5") as c:
        assert c.video_ids() == ["x", "y", "z"] and c.video_fps("x") == 2.0
        for vid in c.video_ids():
            c.video(vid, verify=True)
    again = _run("merge", a, b, "--out", tmp_path / "all.h5")
    assert again.exit_code == 2 and "already exists" in again.output


def test_merge_refuses_other_settings_listing_the_fields(tmp_path):
    a = _shard(tmp_path / "a.h5", ["x"])
    other = dataclasses.replace(SETTINGS, fps=1.0, frame_at="start")
    b = _shard(tmp_path / "b.h5", ["y"], settings=other, fps=0.5)
    result = _run("merge", a, b, "--out", tmp_path / "all.h5")
    assert result.exit_code == 2
    assert "fps: 0.5 vs 1.0" in result.output and "frame_at: 'middle' vs 'start'" in result.output
    assert not (tmp_path / "all.h5").exists()


def test_merge_duplicates_error_unless_a_policy_says_which(tmp_path):
    a = _shard(tmp_path / "a.h5", ["x", "same"], seed=0)
    b = _shard(tmp_path / "b.h5", ["x", "other"], seed=50)  # "x": other features
    c = _shard(tmp_path / "c.h5", ["same"], seed=1)  # "same": identical to a's
    refused = _run("merge", a, b, "--out", tmp_path / "m.h5")
    assert refused.exit_code == 2 and "video 'x' in" in refused.output
    assert "--on-duplicate" in refused.output and not (tmp_path / "m.h5").exists()
    for policy, source in (("first", a), ("last", b)):
        out = tmp_path / f"{policy}.h5"
        result = _run("merge", a, b, "--out", out, "--on-duplicate", policy)
        assert result.exit_code == 0, result.output
        with FeatureCache(out) as m, FeatureCache(source) as s:
            np.testing.assert_array_equal(m.video("x"), s.video("x"))
    same = _run("merge", a, c, "--out", tmp_path / "same.h5")  # identical: kept once, no error
    assert same.exit_code == 0 and "2 identical duplicates kept once" in same.output
    bad = _run("merge", a, b, "--out", tmp_path / "z.h5", "--on-duplicate", "any")
    assert bad.exit_code == 2 and "error, first, last" in bad.output


def test_killed_merge_leaves_no_output_and_no_debris(tmp_path):
    inputs = [_superseding(tmp_path / f"s{i}.h5", 60) for i in range(2)]
    with CacheWriter(inputs[1], SETTINGS) as w:  # make shard 1 distinct from shard 0
        w.add_video(*video("only-in-1", 3))
    before = [sha(p) for p in inputs]
    out, report = tmp_path / "out" / "all.h5", str(tmp_path / "report.txt")
    proc = multiprocessing.get_context("fork").Process(
        target=_slowed, args=(report, merge, inputs, out, "last")
    )
    proc.start()
    assert _kill_when(proc, report, copied=20) == "copy"  # killed in the middle of the copy
    assert not out.exists() and [sha(p) for p in inputs] == before
    assert len(os.listdir(out.parent)) >= 1  # its temporary file (deleted by the next run)
    result = _run("merge", *inputs, "--out", out, "--on-duplicate", "last")
    assert result.exit_code == 0, result.output
    assert os.listdir(out.parent) == ["all.h5"]  # the killed run's temporary file is gone


def test_merge_compares_every_pair_of_model_identities(tmp_path):
    unknown = _shard(tmp_path / "a.h5", ["x"])  # made before fingerprints: matches by name
    fps = [dataclasses.replace(SETTINGS, model_fingerprint=f"sha256:{c * 64}") for c in "12"]
    b = _shard(tmp_path / "b.h5", ["y"], settings=fps[0])
    c = _shard(tmp_path / "c.h5", ["z"], settings=fps[1])
    result = _run("merge", unknown, b, c, "--out", tmp_path / "all.h5")
    assert result.exit_code == 2 and "model_fingerprint" in result.output, result.output
    ok = _run("merge", unknown, b, "--out", tmp_path / "ab.h5")
    assert ok.exit_code == 0, ok.output
    with FeatureCache(tmp_path / "ab.h5") as merged:  # the known identity is kept
        assert merged.settings.model_fingerprint == fps[0].model_fingerprint
