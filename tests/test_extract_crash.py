"""Crash safety of `extract`: SIGKILL a real extraction process at random moments, re-run.

A helper process imports torch, transformers and r2 once (no thread started), then forks one
child per run, each a complete `extract(...)` over tiny generated videos and an annotation
file (tiny CLIP, one decode worker process, small forward batches so there are many
commits). The test kills the child with SIGKILL after a random delay, re-runs, and after
every kill checks the cache: it opens, every item in it appears once and holds exactly the
features of a clean uninterrupted run. The last run must complete and leave the full cache.

Set R2_EXTRACT_KILLS to run more kill rounds than the default 12.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import videogen as vg

from r2.cache import FeatureCache
from r2.extract.tiny_clip import make_tiny_clip

KILL_ROUNDS = int(os.environ.get("R2_EXTRACT_KILLS", "12"))
RUN_TIMEOUT_S = 120  # one extract run of the tiny set takes a few seconds
N_VIDEOS = 12
N_QUERIES = 40
LOADED = "loaded CLIP"  # logged twice: settings read, then towers loaded (writes follow)

# Forks a child per command line (extract kwargs as JSON); prints the child's pid, then its
# exit status once it ended WITHOUT reaping it, so its pid can't be reused before the test
# has stopped signalling it; reaps it on the next command line.
ZYGOTE = r"""
import json, os, sys
import torch, transformers, h5py, av  # imported once, before any fork; no thread started
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel
import r2.cache, r2.extract, r2.extract.encode, r2.extract.pipeline, r2.extract.decode
for line in sys.stdin:
    kwargs = json.loads(line)
    log = kwargs.pop("log")
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1); os.dup2(fd, 2)
        import logging
        logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(message)s")
        try:
            r2.extract.extract(**kwargs)
        except BaseException:
            import traceback; traceback.print_exc(); sys.stdout.flush(); os._exit(1)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
    print(pid, flush=True)
    status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    print(status.si_code, status.si_status, flush=True)
    sys.stdin.readline()  # "reap"
    os.waitpid(pid, 0)
"""


class Zygote:
    """The forking helper process, in its own process group (killed as a group at the end)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        # One torch thread: OpenMP barriers crawl on a loaded machine with a tiny model.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.runs = 0
        self._buffer = b""

    def _line(self, timeout: float | None) -> str | None:
        """The zygote's next output line, or None after `timeout` s (unbuffered reads)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout.fileno()], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, "the zygote process died"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()

    def _log_shows(self, log: Path, text: str) -> bool:
        return not text or (log.exists() and log.read_text().count(text) >= 2)

    def run(self, kill_after: float | None, after: str = "", **kwargs) -> tuple[bool, float]:
        """One extract run, SIGKILLed `kill_after` s after its log shows `after` twice (if it
        still runs). Returns (completed cleanly, seconds from then to the end)."""
        self.runs += 1
        log = self.log_dir / f"run{self.runs}.log"
        self.proc.stdin.write(json.dumps({**kwargs, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        pid = int(self._line(RUN_TIMEOUT_S))
        status = None
        while status is None and not self._log_shows(log, after):
            status = self._line(0.01)
        began = time.perf_counter()
        if status is None:
            status = self._line(kill_after)
        if status is None:
            os.kill(pid, signal.SIGKILL)  # still running (not reaped: the pid is still its own)
            status = self._line(RUN_TIMEOUT_S)
        seconds = time.perf_counter() - began
        assert status is not None, f"run {self.runs} did not end"
        self.proc.stdin.write("reap\n")
        self.proc.stdin.flush()
        code, value = map(int, status.split())
        exited = code == os.CLD_EXITED
        assert not exited or value == 0, f"run {self.runs} failed:\n{log.read_text()}"
        return exited, seconds

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10  # decode workers of killed runs exit on their own
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        ps = ["ps", "-ww", "-o", "pid,ppid,stat,etime,args", "-g", str(self.proc.pid)]
        alive = subprocess.run(ps, capture_output=True, text=True).stdout
        os.killpg(self.proc.pid, signal.SIGKILL)
        pytest.fail(f"processes of killed runs still alive 10 s after the last run:\n{alive}")


def _dataset(root: Path) -> tuple[Path, Path]:
    videos = root / "videos"
    videos.mkdir()
    for i in range(N_VIDEOS):
        vg.write_video(videos / f"v{i}.mp4", 20 + 10 * i, fps=10, keyint=10)  # 2..9 s
    anno = root / "anno.jsonl"
    rows = [{"qid": q, "query": f"query number {q} " + "word " * (q % 9)} for q in range(N_QUERIES)]
    anno.write_text("\n".join(json.dumps(r) for r in rows))
    return videos, anno


def _contents(path: Path) -> tuple[dict, dict]:
    with FeatureCache(path) as cache:
        vids, qids = cache.video_ids(), cache.query_ids()
        assert len(vids) == len(set(vids)) and len(qids) == len(set(qids))
        videos = {v: (cache.video(v), cache.video_record(v)) for v in vids}
        queries = {q: (cache.query(q), cache.query_record(q)) for q in qids}
    return videos, queries


def _check_subset(path: Path, reference: tuple[dict, dict]) -> int:
    """Every item in the cache equals the clean run's; returns how many there are."""
    if not path.exists():
        return 0
    videos, queries = _contents(path)
    for got, want in ((videos, reference[0]), (queries, reference[1])):
        for key, (feats, record) in got.items():
            assert key in want, f"unknown item {key!r}"
            assert np.array_equal(feats, want[key][0]), f"{key!r}: features differ"
            assert record == want[key][1], f"{key!r}: record differs"
    return len(videos) + len(queries)


def test_killed_runs_leave_a_valid_cache_and_resume(tmp_path):
    videos, anno = _dataset(tmp_path)
    model = str(make_tiny_clip(tmp_path / "tiny"))
    args = {"inputs": [str(videos)], "annotations": [str(anno)], "model": model,
            "workers": 1, "batch_frames": 2}  # fmt: skip
    zygote = Zygote(tmp_path)
    try:
        done, clean_s = zygote.run(None, out=str(tmp_path / "clean.h5"), **args)
        assert done
        _, tail_s = zygote.run(None, LOADED, out=str(tmp_path / "clean2.h5"), **args)
        reference = _contents(tmp_path / "clean.h5")
        assert len(reference[0]) == N_VIDEOS and len(reference[1]) == N_QUERIES
        rng = random.Random(0)
        out = tmp_path / "killed.h5"
        counts, kills = [], 0
        while kills < KILL_ROUNDS:
            # a third of the kills anywhere in the run (also while the file is created),
            # the others once the towers are loaded, when items are being written
            after, span = ("", clean_s) if kills % 3 == 0 else (LOADED, 0.7 * tail_s)
            done, _ = zygote.run(rng.uniform(0, span), after, out=str(out), **args)
            kills += not done
            counts.append(_check_subset(out, reference))
            if done:  # finished before the kill: start over so every round can be cut short
                out.unlink()
        done, _ = zygote.run(None, out=str(out), **args)
        assert done
        final = _contents(out)
        assert _check_subset(out, reference) == N_VIDEOS + N_QUERIES
        assert final[0].keys() == reference[0].keys() and final[1].keys() == reference[1].keys()
        assert any(0 < c < N_VIDEOS + N_QUERIES for c in counts), f"no kill mid-run: {counts}"
        print("items after each killed run:", counts)
    finally:
        zygote.close()
