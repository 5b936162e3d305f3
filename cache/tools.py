"""Inspecting and repairing caches: what `r2 cache info`, `check` and `repair` do.

- `describe(path)`: settings, counts, sizes, and the space taken by superseded entries and by
  rows a killed writer left past the committed counts (`compact` reclaims both).
- `check(path)`: opens the cache (which cross-checks attributes, shapes, counts and clip
  counts), then reads every committed video and query and verifies its checksum (format 2;
  format 1 files have none, so only readability is checked). Problems are collected, not
  raised, so one run lists them all.
- `repair(path)`: after an interrupted writer, clears the superblock's "open for write"
  flags (what `h5clear --status` does) so that plain h5py / HDF5 tools open the file again.
  Any r2 command that opens the cache does the same when it can take the writer lock and
  has write permission; `repair` is for files only touched by other tools since.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
from tqdm import tqdm

from . import layout as L
from .locking import acquire_writer_lock, clear_flags_locked, release_lock, superblock_flags
from .reader import FeatureCache
from .records import CacheError

MB = 1e6


def _mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


def describe(path: str | os.PathLike) -> str:
    """A multi-line human description of a cache (the output of `r2 cache info`)."""
    with FeatureCache(path) as cache:
        info = cache.summary()
    s = info["settings"]
    frame = 2 * s["k"] * s["tokens_per_frame"] * s["video_dim"]  # bytes per frame row
    token = 2 * s["k"] * s["text_dim"]
    model = s["model_id"] + (f" @ {s['revision']}" if s["revision"] else "")
    rates = info["video_fps"]
    per_video = ", ".join(f"{x:g}" for x in rates) or "-"
    if len(rates) > 4:
        per_video = f"{len(rates)} different, {rates[0]:g} .. {rates[-1]:g}"
    lines = [
        f"cache: {info['path']} ({_mb(info['file_bytes'])}, format {info['format_version']}, "
        f"written by r2 {info['r2_version']}, created {info['created']})",
        f"model: {model}",
        f"  fingerprint: {s['model_fingerprint'] or 'unknown (made before r2 recorded it)'}",
        f"  tokenizer: {s['tokenizer_fingerprint'] or 'unknown'}",
        f"features: K={s['k']} layers, P={s['tokens_per_frame']} tokens of Dv={s['video_dim']}, "
        f"Dq={s['text_dim']}; {s['dtype']} encoder; {s['image_size']} px; frame at "
        f"{s['frame_at']}; fps {s['fps']:g} (per video: {per_video})",
        f"videos: {info['videos']} ({info['clips']} clips, {_mb(info['clips'] * frame)}, "
        f"{info['partial_videos']} partial)",
        f"queries: {info['queries']} ({info['tokens']} tokens, {_mb(info['tokens'] * token)})",
        f"superseded: {info['superseded_videos']} video entries "
        f"({_mb(info['superseded_frames'] * frame)}), {info['superseded_queries']} query "
        f"entries ({_mb(info['superseded_tokens'] * token)})",
        f"uncommitted rows left by interrupted writers: {info['uncommitted_frames']} frames "
        f"({_mb(info['uncommitted_frames'] * frame)}), {info['uncommitted_tokens']} tokens",
    ]
    waste = (info["superseded_frames"] + info["uncommitted_frames"]) * frame
    if waste:
        lines.append(f"`r2 cache compact {info['path']}` would reclaim about {_mb(waste)}")
    return "\n".join(lines)


@dataclass
class CheckReport:
    """What `check` found."""

    path: Path
    problems: list[str] = field(default_factory=list)  # each one line, naming the item
    notes: list[str] = field(default_factory=list)  # not problems (e.g. no checksums in v1)
    videos: int = 0  # videos read
    queries: int = 0  # queries read

    @property
    def ok(self) -> bool:
        return not self.problems


def check(path: str | os.PathLike, progress: bool = True) -> CheckReport:
    """Open the cache and read (and checksum) every committed item; collect every problem."""
    report = CheckReport(Path(path))
    try:
        cache = FeatureCache(path)
    except CacheError as exc:
        report.problems.append(str(exc))
        return report
    with cache:
        if cache.version < 2:
            report.notes.append(f"format version {cache.version}: no checksums, only "
                                "readability is checked (`r2 cache compact` upgrades)")  # fmt: skip
        if superblock_flags(cache.path):
            report.notes.append("the superblock still says 'open for write' (a writer is "
                                "running, or `r2 cache repair` is needed)")  # fmt: skip
        items = [("video", v) for v in cache.video_ids()]
        items += [("query", q) for q in cache.query_ids()]
        for kind, key in tqdm(items, desc="check", unit="item", disable=None if progress else True):
            try:
                if kind == "video":
                    cache.video(key, verify=True)
                    report.videos += 1
                else:
                    cache.query(key, verify=True)
                    report.queries += 1
            except CacheError as exc:
                report.problems.append(str(exc))
    return report


def repair(path: str | os.PathLike) -> str:
    """Clear the flags an interrupted writer left, so any HDF5 tool opens the file again.

    Returns:
        What was done, one line.

    Raises:
        CacheError: not a cache, a writer is running, or damage the flags do not explain.
    """
    path = Path(path)
    L.check_header(path)
    fd = acquire_writer_lock(path)
    try:
        cleared = clear_flags_locked(path) is not None
    finally:
        release_lock(path, fd)
    try:
        with h5py.File(path, "r", locking=False):
            pass
    except OSError as exc:
        raise CacheError(
            f"{path}: HDF5 still cannot open the file: {exc}; it is damaged "
            "beyond an interrupted write (`r2 cache check` lists what)"
        ) from exc
    FeatureCache(path).close()  # the r2-level checks too
    if cleared:
        return f"{path}: cleared the 'open for write' flags of an interrupted writer"
    return f"{path}: nothing to repair (no interrupted writer)"
