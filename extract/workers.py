"""Decoding in worker processes: a pool that survives bad files and dies with its parent.

Workers are started with forkserver (spawn where unavailable), never plain fork, so no torch
or OpenMP state of the main process is ever copied into them. They run at a lower CPU
priority than the main process (`DECODE_NICE`): the forward pass gets the cores it can use
and decoding fills the gaps it leaves (benchmarks/extract.py). They ignore SIGINT: Ctrl-C
reaches the main process, which stops them at once (`DecodeSource.close(kill=True)`), and
they exit by themselves when the main process dies. This module and everything it imports
stay free of torch: the workers import it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

from r2.errors import R2Error
from r2.extract.inputs import VideoInput
from r2.extract.spill import SPILL_BYTES, release

log = logging.getLogger(__name__)

JOBS_PER_WORKER = 2  # decode jobs queued per worker, so none idles during a forward pass
DECODE_NICE = 10  # niceness added to decode workers (CFS weight ~1/10 of the forward pass)
KILL_WAIT_S = 5.0  # how long close(kill=True) waits for workers to exit
CRASH_REASON = "the decoder process died on this file (crash inside FFmpeg/PyAV)"


@dataclass(frozen=True)
class DecodeOptions:
    """How frames are sampled; passed to every decode job."""

    fps: float  # clips per second
    image_size: int  # square side S of the frames
    frame_at: str  # "middle" | "start"
    allow_partial: bool  # keep the decodable prefix of a damaged file
    spill_dir: str | None = None  # long videos' frames go to raw files here (see spill.py)
    spill_bytes: int = SPILL_BYTES  # ... when their decoded frames exceed this many bytes
    nice: int = DECODE_NICE  # niceness added to the worker processes
    threads: int = 0  # decoder threads per video (0: FFmpeg's choice)


def decode_job(path: str, opts: DecodeOptions):
    """Worker side: decode one video. Returns (DecodedVideo, None) or (None, one-line reason)."""
    from r2.extract.decode import VideoError, decode_video

    try:
        video = decode_video(path, opts.fps, opts.image_size, opts.frame_at, opts.allow_partial,
                             threads=opts.threads, spill_dir=opts.spill_dir,
                             spill_bytes=opts.spill_bytes)  # fmt: skip
    except VideoError as err:  # one line, with the --allow-partial hint where it helps
        return None, err.hint(opts.allow_partial).splitlines()[0] or type(err).__name__
    if len(video.frames) == 0:
        release(video.frames)
        return None, f"{path}: no frames could be decoded"
    return video, None


def decoder_threads(workers: int, cores: int) -> int:
    """Decoder threads per video: the cores shared among the workers (single-threaded
    decoding is the cheapest in CPU time; parallelism comes from decoding several videos)."""
    return max(1, cores // max(1, workers))


def _watch_parent(lifeline, nice: int = 0) -> None:
    """Worker initializer: ignore Ctrl-C, lower the priority, and exit as soon as the main
    process is gone (even after SIGKILL) or closes the pipe (`close(kill=True)`).

    Pool workers otherwise wait for work forever once their parent was killed, since each
    holds both ends of its own task queue. `lifeline` is the read end of a pipe whose only
    write end lives in the main process: EOF means the main process has died.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        os._exit(1)

    threading.Thread(target=watch, name="r2-parent-watch", daemon=True).start()


def _context():
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["r2.extract.decode"])
    return ctx


class DecodeSource:
    """Decodes videos in worker processes (or inline when workers == 0), in input order-ish.

    `results(block)` yields (item, DecodedVideo | None, reason | None). A worker crash
    breaks the pool: the videos that were in flight are retried one at a time in a fresh
    pool, so only the file that really crashes the decoder is skipped.
    """

    def __init__(self, items: list[VideoInput], opts: DecodeOptions, workers: int):
        self.pending = deque(items)
        self.opts = opts
        self.workers = workers
        self.suspects: deque[VideoInput] = deque()  # in flight when a worker died
        self.inflight: dict[Future, VideoInput] = {}
        self.isolating = False  # one suspect alone in the pool
        self.paused = False  # set by the consumer while it holds enough decoded frames
        self.pool = self._new_pool() if workers > 0 and items else None

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = _context()
        lifeline, self._lifeline = ctx.Pipe(duplex=False)  # workers read, only we write
        pool = ProcessPoolExecutor(self.workers, ctx, _watch_parent, (lifeline, self.opts.nice))
        self._worker_end = lifeline  # closed with the pool (kept open until workers started)
        return pool

    def _shutdown(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
        self._lifeline.close()  # stragglers of a broken pool exit now
        self._worker_end.close()
        self.pool = None

    def options(self, item: VideoInput) -> DecodeOptions:
        """The decode options of `item`: its own fps (from the annotations) when it has one."""
        return self.opts if item.fps is None else replace(self.opts, fps=item.fps)

    def _submit(self, item: VideoInput) -> Future:
        return self.pool.submit(decode_job, str(item.path), self.options(item))

    @property
    def exhausted(self) -> bool:
        return not (self.pending or self.suspects or self.inflight)

    def prime(self) -> None:
        """Start decoding (workers start now, e.g. while the model loads)."""
        self._fill()

    def _fill(self) -> None:
        if self.pool is None or self.paused:
            return
        if self.suspects:
            if not self.inflight:
                item = self.suspects.popleft()
                self.inflight[self._submit(item)] = item
                self.isolating = True
            return
        self.isolating = False
        while self.pending and len(self.inflight) < self.workers * JOBS_PER_WORKER:
            item = self.pending.popleft()
            self.inflight[self._submit(item)] = item

    def _broken(self, item: VideoInput) -> Iterator[tuple]:
        """A worker died: skip `item` if it was alone, else retry everything in flight alone."""
        lost = [item, *self.inflight.values()]
        self.inflight.clear()
        self._shutdown(wait=False)
        self.pool = self._new_pool()
        if self.isolating:
            yield item, None, f"{item.path}: {CRASH_REASON}"
            lost = lost[1:]
        self.suspects.extendleft(reversed(lost))
        log.warning("a decoder process died; retrying %d video(s) one at a time", len(lost))

    def results(self, block: bool) -> Iterator[tuple]:
        """Finished decodes: all that are ready, waiting for at least one when `block`."""
        if self.pool is None:
            if self.pending and not self.paused:
                item = self.pending.popleft()
                yield (item, *decode_job(str(item.path), self.options(item)))
            return
        self._fill()
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=None if block else 0,
                       return_when=FIRST_COMPLETED)  # fmt: skip
        for future in done:
            item = self.inflight.pop(future, None)
            if item is None:  # dropped by _broken while handling another future
                continue
            try:
                yield (item, *future.result())
            except BrokenProcessPool:
                yield from self._broken(item)
            except R2Error:  # not the file's fault (e.g. no room for spilled frames): stop
                raise
            except Exception as err:  # a bug or an unexpected library error: skip, say so
                log.debug("decoding %s failed", item.path, exc_info=True)
                yield item, None, f"{item.path}: unexpected error: {type(err).__name__}: {err}"
        self._fill()

    def close(self, kill: bool = False) -> None:
        """Stop the pool; `kill`: at once (Ctrl-C, an error), abandoning decodes in flight."""
        if self.pool is None:
            return
        if not kill:
            self._shutdown(wait=True)
            return
        processes = list((self.pool._processes or {}).values())  # private: the only handle on them
        self._lifeline.close()  # every worker's watcher sees EOF and exits at once
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.join(KILL_WAIT_S)
            if proc.is_alive():
                log.debug("decode worker %s did not exit; killing it", proc.pid)
                proc.kill()
        self._worker_end.close()
        self.pool = None
