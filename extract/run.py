"""The orchestration of one extraction run: inputs, options, then `pipeline.run`.

`extract(...)` is what `r2 extract` runs. Importing this module stays light (no torch):
the decode worker processes import the package.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from r2.extract.defaults import (
    CACHE_DIR,
    DEFAULT_FPS,
    DEFAULT_FRAME_AT,
    DEFAULT_K,
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    FRAME_AT_CHOICES,
)
from r2.extract.inputs import InputError, read_queries, scan_inputs, video_fps

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    """What one `extract` run did."""

    cache: Path  # the cache file written
    videos_done: list[str] = field(default_factory=list)  # vids extracted by this run
    videos_cached: list[str] = field(default_factory=list)  # vids already current in the cache
    videos_skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    videos_partial: list[str] = field(default_factory=list)  # vids stored from a damaged file
    queries_done: int = 0  # queries encoded by this run
    queries_cached: int = 0  # queries already in the cache with the same text
    queries_truncated: list[str] = field(default_factory=list)  # qids cut to the context length
    frames: int = 0  # frames encoded by this run
    seconds: float = 0.0  # wall time of the run
    files_ignored: dict[str, int] = field(default_factory=dict)  # folder scans: reason -> count
    queries_without_video: list[str] = field(default_factory=list)  # "qid (vid)": no such video

    @property
    def usable(self) -> bool:
        """False when the run leaves nothing to work with (every given video failed)."""
        videos = len(self.videos_done) + len(self.videos_cached)
        given = videos + len(self.videos_skipped)
        queries = self.queries_done + self.queries_cached
        return videos > 0 if given else queries > 0

    def report(self) -> str:
        """Multi-line human summary (counts, then one line per skipped file)."""
        lines = [
            f"cache: {self.cache}",
            f"videos: {len(self.videos_done)} extracted, {len(self.videos_cached)} already "
            f"cached, {len(self.videos_skipped)} skipped"
            + (f", {len(self.videos_partial)} partial" if self.videos_partial else ""),
            f"queries: {self.queries_done} encoded, {self.queries_cached} already cached"
            + (f", {len(self.queries_truncated)} truncated" if self.queries_truncated else ""),
            f"{self.frames} frames in {self.seconds:.1f} s",
        ]
        if self.files_ignored:
            lines.append("files ignored by the folder scan: " + ", ".join(
                f"{n} {reason}" for reason, n in self.files_ignored.items()))  # fmt: skip
        if self.queries_without_video:
            lines.append(f"queries whose video was never found (not in the inputs nor the "
                         f"cache): {len(self.queries_without_video)}, first: "
                         + ", ".join(self.queries_without_video[:5]))  # fmt: skip
        lines += [f"  skipped: {reason}" for _, reason in self.videos_skipped]
        return "\n".join(lines)


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


def default_workers() -> int:
    """Decode processes: all cores but the one driving the forward pass, at least 1, at most 8."""
    from r2.device import available_cores  # affinity and cgroup quota, not the host's count

    return max(1, min(8, available_cores() - 1))


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


def _check_options(k: int, fps: float, frame_at: str, dtype, workers, batch_frames) -> None:
    problems = []
    if not (isinstance(k, int) and k >= 1):
        problems.append(f"k must be a positive integer, got {k!r}")
    if not (isinstance(fps, (int, float)) and 0 < fps < float("inf")):
        problems.append(f"fps must be a positive number, got {fps!r}")
    if frame_at not in FRAME_AT_CHOICES:
        problems.append(f"frame_at must be one of {FRAME_AT_CHOICES}, got {frame_at!r}")
    if dtype is not None and dtype not in DTYPE_CHOICES:
        problems.append(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if workers is not None and not (isinstance(workers, int) and workers >= 0):
        problems.append(f"workers must be an integer >= 0, got {workers!r}")
    if batch_frames is not None and not (isinstance(batch_frames, int) and batch_frames >= 1):
        problems.append(f"batch_frames must be a positive integer, got {batch_frames!r}")
    if problems:
        from .inputs import InputError

        raise InputError("; ".join(problems))


def extract(
    inputs: Sequence[str | Path] = (),
    out: str | Path | None = None,
    annotations: Sequence[str | Path] = (),
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    k: int = DEFAULT_K,
    fps: float = DEFAULT_FPS,
    frame_at: str = DEFAULT_FRAME_AT,
    dtype: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    batch_frames: int | None = None,
    allow_partial: bool = False,
    strict: bool = False,
) -> ExtractSummary:
    """Extract multi-layer CLIP features of videos and queries into one cache file.

    Incremental: videos already cached from an unchanged source (same size and mtime) and
    queries cached with the same text are skipped; changed ones are re-extracted. Files that
    can't be decoded are skipped with a one-line reason (fatal with `strict`). Videos are
    decoded in `workers` processes (forkserver): call this from a script's
    `if __name__ == "__main__":` block, as Python's multiprocessing requires.

    Args:
        inputs: video files and/or folders (searched recursively); video id = file stem.
        out: cache file; default cache/<name of the first input>.h5.
        annotations: QVHighlights-schema jsonl files (`qid`, `query`, optional `vid`, and
            optional `fps`: that video's clips per second, overriding `fps`; all rows of a
            video must agree).
        model: HuggingFace CLIP id or local folder; never replaced by a random model (the
            cache records the hub id + commit, or the folder's absolute path, and a content
            fingerprint of its config and weights).
        revision: hub branch/tag/commit; the resolved commit is recorded in the cache.
        k: number of last CLIP blocks kept.
        fps: clips per second (one frame per clip) of videos whose annotations give none.
        frame_at: "middle" (as the original's ffmpeg fps filter) or "start" of each clip.
        dtype: compute dtype "fp32" | "fp16" | "bf16"; default fp32 on CPU, fp16 on CUDA.
        device: "auto", "cpu", "cuda", ...
        workers: decode processes (0 decodes in this process); default `default_workers()`.
        batch_frames: frames per forward pass; default 32 on CPU, 256 on CUDA.
        allow_partial: keep the decodable prefix of a damaged video (recorded as partial).
        strict: stop at the first video that can't be used (SkipError) instead of skipping.

    Returns:
        ExtractSummary; `summary.usable` is False when every given video failed.

    Raises:
        InputError: missing input, duplicate video id, malformed annotation (file:line: field).
        r2.cache.CacheMismatchError: the cache holds other settings (nothing is modified).
        r2.extract.encode.ModelLoadError: the model can't be loaded.
    """
    began = time.perf_counter()
    _check_options(k, fps, frame_at, dtype, workers, batch_frames)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    annotations = [annotations] if isinstance(annotations, (str, os.PathLike)) else annotations
    scan = scan_inputs(inputs)
    queries = read_queries(list(annotations))
    per_video = video_fps(queries)  # annotation "fps": that video's clips per second
    videos = [replace(v, fps=per_video.get(v.vid)) for v in scan.videos]
    if not videos and not queries:
        raise InputError("nothing to extract: no video files found and no queries given")
    out = Path(out) if out is not None else default_out(inputs, annotations)
    tune_environment()
    from r2.extract.pipeline import run  # torch is imported from here on

    summary = run(
        ExtractSummary(out),
        videos,
        queries,
        model=model,
        revision=revision,
        k=k,
        fps=fps,
        frame_at=frame_at,
        dtype=dtype,
        device=device,
        workers=default_workers() if workers is None else workers,
        batch_frames=batch_frames,
        allow_partial=allow_partial,
        strict=strict,
    )
    summary.files_ignored = scan.skipped_counts()
    summary.queries_without_video = _queries_without_video(queries, videos, out)
    summary.seconds = time.perf_counter() - began
    log.info("%s", summary.report())
    return summary
