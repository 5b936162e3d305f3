"""The orchestration of one extraction run: inputs, shard and checks, then `pipeline.run`.

`extract(...)` is what `r2 extract` runs. Everything that can be wrong with the inputs or
the output (missing files, malformed annotations, duplicate ids, a read-only or misnamed
output) is found by `prepare` before any model is loaded or any video decoded. Importing
this module stays light (no torch): the decode worker processes import the package.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from r2.errors import UsageError
from r2.extract.defaults import CACHE_DIR
from r2.extract.inputs import (
    InputError,
    QueryInput,
    ScanResult,
    VideoInput,
    read_queries,
    scan_inputs,
    video_fps,
)
from r2.extract.options import ExtractOptions, default_workers  # noqa: F401 - re-exported
from r2.extract.shard import Shard, balance, probe_duration, query_shard, resolve_shard
from r2.extract.summary import ExtractSummary

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What one run extracts, decided before any model is loaded or video decoded."""

    out: Path  # the cache this run writes (this shard's for a sharded run)
    videos: list[VideoInput]  # the videos of this run (of this shard)
    queries: list[QueryInput]  # the queries of this run (of this shard)
    scan: ScanResult  # every video found, and what the folder scans left out
    all_queries: list[QueryInput]  # every query of the annotations
    shard: Shard | None = None


def default_out(inputs: Sequence[str | Path], annotations: Sequence[str | Path]) -> Path:
    """cache/<name>.h5, <name> from the first input (folder name or file stem)."""
    first = Path(next(iter(inputs), None) or next(iter(annotations)))
    name = first.resolve().name if first.is_dir() else first.stem
    return Path(CACHE_DIR) / f"{name or 'features'}.h5"


def tune_environment() -> None:
    """Settings measured to help CPU extraction, applied only if torch isn't imported yet.

    OMP_WAIT_POLICY=PASSIVE stops idle OpenMP threads of the forward pass from spinning
    on the cores the decode workers need (see benchmarks/extract.py).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def check_output(out: Path) -> Path:
    """The cache path can be written: not a folder, folder writable, file not read-only.

    Raises:
        UsageError: naming the path and why, before any long work.
    """
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; the cache (--out) must be a file path")
    from r2.files import ensure_writable

    ensure_writable(out, "cache")
    if out.exists() and not os.access(out, os.W_OK):
        raise UsageError(f"{out}: the cache file is read-only")
    return out


def _split(videos: list[VideoInput], queries: list[QueryInput], shard: Shard):
    """This shard's videos and queries (r2.extract.shard: by duration, queries with videos)."""
    began = time.perf_counter()
    durations = [probe_duration(v.path) for v in videos]
    owner = balance([v.vid for v in videos], durations, shard.count)
    mine = [v for v in videos if owner[v.vid] == shard.index]
    seconds = sum(d or 0.0 for v, d in zip(videos, durations, strict=True)
                  if owner[v.vid] == shard.index)  # fmt: skip
    known = sum(d or 0.0 for d in durations)
    log.info("shard %s (%s): %d of %d videos, %.1f of %.1f h by their headers (probed in "
             "%.1f s)", shard, shard.source, len(mine), len(videos), seconds / 3600,
             known / 3600, time.perf_counter() - began)  # fmt: skip
    return mine, [q for q in queries if query_shard(q.vid, owner) == shard.index]


def prepare(inputs, out, annotations, opts: ExtractOptions) -> Job:
    """Find and check everything one run needs, before any model load or decoding.

    Raises:
        InputError / UsageError: missing inputs, malformed annotations, duplicate ids, a
            bad shard, an output that cannot be written.
    """
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    annotations = [annotations] if isinstance(annotations, (str, os.PathLike)) else annotations
    annotations = list(annotations)
    if not inputs and not annotations:
        raise InputError("nothing to extract: no video files found and no queries given")
    shard = resolve_shard(opts.shard)
    base = Path(out) if out is not None else default_out(inputs, annotations)
    out = check_output(shard.path(base) if shard else base)
    scan = scan_inputs(inputs)
    queries = read_queries(annotations)
    per_video = video_fps(queries)  # annotation "fps": that video's clips per second
    videos = [replace(v, fps=per_video.get(v.vid)) for v in scan.videos]
    if not videos and not queries:
        raise InputError("nothing to extract: no video files found and no queries given")
    job = Job(out, videos, queries, scan, queries, shard)
    if shard is not None:
        job.videos, job.queries = _split(videos, queries, shard)
    return job


def _queries_without_video(queries, videos, cache_path: Path) -> list[str]:
    """The "qid (vid)" of the queries whose video is neither among the inputs nor in the cache
    (TACoS annotation ids map to their "-cam-002" files)."""
    from r2.cache import CacheError, FeatureCache
    from r2.data.check import TACOS_CAMERA

    wanted = [q for q in queries if q.vid is not None]
    if not wanted:
        return []
    known = {v.vid for v in videos}
    try:
        with FeatureCache(cache_path) as cache:
            known |= set(cache.video_ids())
    except (CacheError, OSError):
        pass  # no cache written: the inputs are all there is
    return [f"{q.qid} ({q.vid})" for q in wanted
            if q.vid not in known and q.vid + TACOS_CAMERA not in known]  # fmt: skip


def extract(
    inputs: Sequence[str | Path] | str | Path = (),
    out: str | Path | None = None,
    annotations: Sequence[str | Path] | str | Path = (),
    **options,
) -> ExtractSummary:
    """Extract multi-layer CLIP features of videos and queries into one cache file.

    Incremental: videos already cached from an unchanged source (same size and mtime) and
    queries cached with the same text are skipped; changed ones are re-extracted. Files that
    can't be decoded, or are damaged, are skipped with a one-line reason (fatal with
    `strict`). Videos are decoded in worker processes (forkserver): call this from a
    script's `if __name__ == "__main__":` block, as Python's multiprocessing requires.
    Ctrl-C stops promptly (workers included); what was committed stays in the cache.

    Args:
        inputs: video files and/or folders (searched recursively); video id = file stem.
        out: cache file; default cache/<name of the first input>.h5. A sharded run writes
            `<stem>.shard-I-of-N.h5` beside it (r2.extract.shard).
        annotations: QVHighlights-schema jsonl files (`qid`, `query`, optional `vid`, and
            optional `fps`: that video's clips per second; all rows of a video must agree).
        **options: the fields of `ExtractOptions` (model, revision, k, fps, frame_at, dtype,
            device, workers, threads, batch_frames, allow_partial, strict, shard).

    Returns:
        ExtractSummary; `summary.usable` is False when every given video failed.

    Raises:
        InputError / UsageError: bad inputs or output (file:line: field for annotations).
        r2.cache.CacheMismatchError: the cache holds other settings (nothing is modified).
        r2.cache.CacheWriteError: the disk filled up (or another write failure); every item
            committed before stays valid.
        r2.extract.encode.ModelLoadError: the model can't be loaded.
    """
    began = time.perf_counter()
    opts = ExtractOptions(**options)
    job = prepare(inputs, out, annotations, opts)
    tune_environment()
    from r2.extract.pipeline import run  # torch is imported from here on

    summary = ExtractSummary(job.out, job.shard)
    summary.videos_other_shards = len(job.scan.videos) - len(job.videos)
    summary.queries_other_shards = len(job.all_queries) - len(job.queries)
    run(summary, job.videos, job.queries, opts)
    summary.files_ignored = job.scan.skipped_counts()
    if job.shard is None:
        summary.queries_without_video = _queries_without_video(job.queries, job.videos, job.out)
    summary.seconds = time.perf_counter() - began
    log.info("%s", summary.report())
    return summary
