"""Crash safety of r2.cache: SIGKILL a writing process at random moments, then reopen.

A forked child appends many small videos and query batches (re-opening its writer now and
then, and superseding earlier videos), writing a line to a report before each operation
("B"/"O"/"C") and after each committed add ("V vid version" / "Q qid version"). The test
kills it with SIGKILL after a random delay, then checks that the cache opens, holds every
reported item with exactly the right content (newest version at least the reported one),
holds no id twice and nothing unknown, and that a new writer can append.

Set R2_CACHE_KILLS to run more kill rounds than the default 12 (e.g. 300 as a stress test).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import signal
import time
import zlib

import numpy as np
import pytest

from r2.cache import (
    CacheError,
    CacheMismatchError,
    CacheSettings,
    CacheWriter,
    FeatureCache,
    QueryRecord,
    VideoRecord,
)

SETTINGS = CacheSettings(
    model_id="tiny", revision=None, k=2, fps=0.5, frame_at="middle", image_size=32,
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dtype="fp32",
    tokens_per_frame=3, video_dim=8, text_dim=6,
)  # fmt: skip
KILL_ROUNDS = int(os.environ.get("R2_CACHE_KILLS", "12"))
MAX_DELAY_S = 0.4  # kill the child after a uniform random delay in [0, MAX_DELAY_S]
MAX_CHILD_OPS = 3000  # a child that is never killed stops by itself
MIN_KILLS_IN_ADD = 3  # kills that must land inside add_video / add_queries ...
EXTRA_ROUNDS = 20  # ... for which up to this many rounds are added to KILL_ROUNDS


def _seed(name: str, version: int) -> int:
    return zlib.crc32(f"{name}#{version}".encode("utf-8", "surrogatepass"))


def video_item(vid: str, version: int) -> tuple[VideoRecord, np.ndarray]:
    """Deterministic record and features of version `version` of video `vid`."""
    seed = _seed(vid, version)
    n = 1 + seed % 4
    feats = np.random.default_rng(seed).standard_normal((n, 2, 3, 8)).astype(np.float16)
    record = VideoRecord(vid, 2.0 * n, n, f"/videos/{vid}.mp4", version, version + 0.25,
                         bool(version % 2))  # fmt: skip
    return record, feats


def query_item(qid: str, version: int) -> tuple[QueryRecord, np.ndarray]:
    """Deterministic record and features of version `version` of query `qid`."""
    seed = _seed(qid, version)
    n = 1 + seed % 5
    feats = np.random.default_rng(seed).standard_normal((n, 2, 6)).astype(np.float16)
    return QueryRecord(qid, f"text of {qid} v{version}", version, bool(seed % 2)), feats


def _child(path: str, tag: str, fd: int, seed: int) -> None:
    """Append forever (until killed), reporting each step on the pipe `fd`."""
    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="surrogatepass")
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    ops = 0
    while ops < MAX_CHILD_OPS:
        out.write("O\n")
        with CacheWriter(path, SETTINGS) as writer:
            out.write("o\n")
            for _ in range(rng.randint(3, 25)):
                ops += 1
                choice = rng.random()
                out.write("B\n")
                if choice < 0.55 or not versions:
                    vid = f"{tag}/v {ops} ü"
                    versions[vid] = 0
                    if rng.random() < 0.5:
                        writer.add_video(*video_item(vid, 0))
                    else:  # the same item streamed one row at a time
                        record, feats = video_item(vid, 0)
                        with writer.video_stream(record) as stream:
                            for row in feats:
                                stream.write(row[None])
                    out.write(f"V\t{vid}\t0\n")
                elif choice < 0.7:  # a changed source: supersede an earlier video
                    vid = rng.choice(sorted(versions))
                    versions[vid] += 1
                    writer.add_video(*video_item(vid, versions[vid]))
                    out.write(f"V\t{vid}\t{versions[vid]}\n")
                else:
                    qids = [f"{tag}/q{ops}.{j}" for j in range(rng.randint(1, 4))]
                    items = [query_item(q, 1) for q in qids]
                    writer.add_queries([r for r, _ in items], [f for _, f in items])
                    out.write("".join(f"Q\t{q}\t1\n" for q in qids))
            out.write("C\n")
        out.write("c\n")
    out.close()
    os._exit(0)


def _run_and_kill(path: str, tag: str, rng: random.Random, report: str
                  ) -> tuple[list[list[str]], str]:  # fmt: skip
    """Run a child writer, SIGKILL it after a random delay; its lines and last phase.

    The child reports to a regular file, not a pipe: a pipe write wakes the parent, and the
    scheduler then tends to preempt the child right there, so kills would cluster between
    operations instead of landing inside them.
    """
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_child, args=(path, tag, fd, rng.randrange(2**31)))
    proc.start()
    os.close(fd)
    time.sleep(rng.uniform(0, MAX_DELAY_S))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with open(report, encoding="utf-8") as fh:
        lines = [line.rstrip("\n").split("\t") for line in fh]
    os.remove(report)
    last = lines[-1][0] if lines else "start"
    phase = {"B": "add", "O": "open", "C": "close", "start": "start"}.get(last, "between")
    return lines, phase


def _check_cache(path: str, videos: dict[str, int], queries: dict[str, int],
                 in_flight: str | None) -> None:  # fmt: skip
    """Every reported item present, newest and intact; no duplicates; nothing unknown.

    `in_flight` is the tag of a child killed inside an add: that one operation (a video or
    a batch of at most 4 queries) may or may not be committed.
    """
    with FeatureCache(path) as cache:
        vids, qids = cache.video_ids(), cache.query_ids()
        assert len(vids) == len(set(vids)) and len(qids) == len(set(qids))
        assert set(videos) <= set(vids), sorted(set(videos) - set(vids))[:5]
        assert set(queries) <= set(qids), sorted(set(queries) - set(qids))[:5]
        unreported = []
        for vid in vids:
            record = cache.video_record(vid)
            if vid not in videos or record.size != videos[vid]:
                unreported.append(vid)
                assert record.size == videos.get(vid, -1) + 1, f"{vid!r}: wrong version"
            expected_record, expected = video_item(vid, record.size)
            assert record == expected_record
            np.testing.assert_array_equal(cache.video(vid), expected)
        for qid in qids:
            record = cache.query_record(qid)
            if qid not in queries:
                unreported.append(qid)
            expected_record, expected = query_item(qid, record.n_tokens)
            assert record == expected_record
            np.testing.assert_array_equal(cache.query(qid), expected)
        if unreported:
            assert in_flight is not None, f"unknown items {unreported[:5]}"
            assert len(unreported) <= 4, unreported
            assert all(i.startswith(f"{in_flight}/") for i in unreported), unreported


def _kill_round(path: str, tag: str, rng: random.Random, report: str,
                videos: dict[str, int], queries: dict[str, int]) -> str:  # fmt: skip
    """One child run + SIGKILL + checks + an append; returns where the kill landed."""
    lines, phase = _run_and_kill(path, tag, rng, report)
    for fields in lines:
        if fields[0] == "V":
            videos[fields[1]] = max(videos.get(fields[1], 0), int(fields[2]))
        elif fields[0] == "Q":
            queries[fields[1]] = int(fields[2])
    if not os.path.exists(path):  # killed before the first cache was created
        assert not videos and not queries
        return phase
    _check_cache(path, videos, queries, tag if phase == "add" else None)
    # unreported but committed items are now known facts for later rounds
    with FeatureCache(path) as cache:
        for vid in cache.video_ids():
            videos[vid] = max(videos.get(vid, 0), cache.video_record(vid).size)
        queries.update((q, 1) for q in cache.query_ids())
    with CacheWriter(path, SETTINGS) as writer:  # appending continues after the crash
        writer.add_video(*video_item(f"{tag}/after-crash", 0))
    videos[f"{tag}/after-crash"] = 0
    _check_cache(path, videos, queries, None)
    return phase


def test_sigkill_at_random_moments_keeps_every_committed_item(tmp_path):
    path = str(tmp_path / "crash" / "cache.h5")
    rng = random.Random(1234)
    videos: dict[str, int] = {}  # vid -> newest version reported committed
    queries: dict[str, int] = {}
    phases: dict[str, int] = {}
    rounds = 0
    # at least KILL_ROUNDS kills, and go on (a little) until MIN_KILLS_IN_ADD hit a write
    while rounds < KILL_ROUNDS or (
        phases.get("add", 0) < MIN_KILLS_IN_ADD and rounds < KILL_ROUNDS + EXTRA_ROUNDS
    ):
        phase = _kill_round(path, f"r{rounds}", rng, str(tmp_path / "report.txt"), videos, queries)
        phases[phase] = phases.get(phase, 0) + 1
        rounds += 1
        if rounds % 25 == 0:
            print(f"round {rounds}: {phases}", flush=True)
    print(f"\n{rounds} kills; phase at kill: {phases}; {len(videos)} videos, "
          f"{len(queries)} queries committed")  # fmt: skip
    assert len(videos) > rounds  # the children really wrote
    assert phases.get("add", 0) >= min(MIN_KILLS_IN_ADD, rounds), phases


@pytest.mark.parametrize("kill_after", ["open", "add"])
def test_kill_leaves_a_cache_that_a_reader_opens_while_flags_are_set(tmp_path, kill_after):
    """Readers open a crashed cache before any writer has recovered it."""
    path = str(tmp_path / "cache.h5")
    with CacheWriter(path, SETTINGS) as writer:
        writer.add_video(*video_item("kept", 0))
    read_fd, write_fd = os.pipe()

    def child() -> None:
        writer = CacheWriter(path, SETTINGS)
        if kill_after == "add":
            writer.add_video(*video_item("second", 0))
        os.write(write_fd, b"x")
        time.sleep(60)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    os.read(read_fd, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with open(path, "rb") as fh:
        crashed = fh.read()
    assert crashed[11] != 0  # the superblock still says "open for write"
    with pytest.raises(CacheMismatchError, match="k: 2 vs 3"):
        CacheWriter(path, dataclasses.replace(SETTINGS, k=3))
    with open(path, "rb") as fh:
        assert fh.read() == crashed  # refused: byte-for-byte untouched
    expected = {"kept": 0} if kill_after == "open" else {"kept": 0, "second": 0}
    _check_cache(path, expected, {}, None)  # the reader recovers the flags
    with open(path, "rb") as fh:
        assert fh.read(12)[11] == 0
    with CacheWriter(path, SETTINGS) as writer:
        assert writer.video_is_current("kept", 0, 0.25)
        writer.add_video(*video_item("third", 0))
    _check_cache(path, {**expected, "third": 0}, {}, None)


def _lines(report: str) -> list[str]:
    if not os.path.exists(report):
        return []
    with open(report) as fh:
        return fh.read().split()


def _stream_child(path: str, report: str) -> None:
    """Commit one video, then stream a long one chunk by chunk, reporting each chunk."""
    with CacheWriter(path, SETTINGS) as writer:
        writer.add_video(*video_item("before", 0))
        record = VideoRecord("long", 0.0, 0, "/videos/long.mp4", 1, 1.0, False)
        with writer.video_stream(record) as stream, open(report, "w") as out:
            for i in range(100_000):
                stream.write(np.full((4, 2, 3, 8), i % 7, np.float16))
                out.write(f"{i}\n")
                out.flush()
    os._exit(0)


def test_sigkill_inside_a_video_stream_shows_no_half_video(tmp_path):
    path, report = str(tmp_path / "cache.h5"), str(tmp_path / "report.txt")
    proc = multiprocessing.get_context("fork").Process(target=_stream_child, args=(path, report))
    proc.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once 200 chunks (800 rows) are written
        if len(_lines(report)) >= 200:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert len(_lines(report)) >= 200
    _check_cache(path, {"before": 0}, {}, None)  # no trace of the half-written video
    with CacheWriter(path, SETTINGS) as writer:  # the next writer reuses that space
        writer.add_video(*video_item("after", 0))
        with pytest.raises(CacheError, match="closed"), writer.video_stream(
            VideoRecord("x", 0.0, 0, "/x", 1, 1.0, False)
        ) as stream:  # fmt: skip
            stream.abort()
            stream.write(np.zeros((1, 2, 3, 8), np.float16))
    _check_cache(path, {"before": 0, "after": 0}, {}, None)
