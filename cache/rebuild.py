"""Rebuilding caches: `compact` (drop superseded rows, upgrade format 1) and `merge` (shards).

Both build a new cache beside the destination under a temporary name (`.<name>.tmp-<pid>-
<hex>`), copying each item's rows in bounded chunks (memory does not grow with a video's
length) and checking every copied item against its stored checksum, then put it in place
atomically: `compact` replaces the cache with `os.replace` while holding its writer lock (so
no writer appends meanwhile; readers that opened the old file keep reading it), `merge`
hard-links the result to `--out` (never replacing an existing file). A killed rebuild
leaves the original untouched and no output; its temporary file is deleted by the next
rebuild in that folder. The result is a plain single-run cache: items lie contiguously,
so reading it is exactly as fast as reading a cache written in one run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from r2.files import remove_stale_temps, temp_path

from . import layout as L
from .locking import acquire_writer_lock, clear_flags_locked, release_lock
from .reader import FeatureCache
from .records import CacheError, CacheSettings
from .writer import CacheWriter

COPY_BYTES = 64 * 2**20  # rows read and written at once when copying an item
QUERY_BATCH = 1024  # queries per commit when copying
DUPLICATE_POLICIES = ("error", "first", "last")
MAX_LISTED = 5

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    """What `compact` or `merge` did."""

    out: Path
    videos: int = 0
    queries: int = 0
    bytes_before: int = 0  # total size of the input file(s)
    bytes_after: int = 0
    duplicates: list[str] = field(default_factory=list)  # ids resolved by the policy
    identical: int = 0  # ids found in several inputs with identical features (kept once)


def _copy_video(src: FeatureCache, vid: str, writer: CacheWriter) -> None:
    entry = src.index.videos[vid]
    s = src.settings
    per_chunk = max(1, COPY_BYTES // (2 * s.k * s.tokens_per_frame * s.video_dim))
    crc = 0
    with writer.video_stream(entry.record) as stream:
        for at in range(0, entry.record.n_clips, per_chunk):
            n = min(per_chunk, entry.record.n_clips - at)
            rows = src._rows(L.VIDEO_FRAMES, entry.start + at, n, f"video {vid!r}")
            crc = L.crc32(rows, crc)
            stream.write(rows)
        if entry.crc is not None and crc != entry.crc:
            raise CacheError(f"{src.path}: video {vid!r} fails its checksum (corrupt); "
                             "nothing was replaced")  # fmt: skip


def _copy_queries(src: FeatureCache, qids: list[str], writer: CacheWriter) -> None:
    for at in range(0, len(qids), QUERY_BATCH):
        part = qids[at : at + QUERY_BATCH]
        writer.add_queries([src.query_record(q) for q in part],
                           [src.query(q, verify=True) for q in part])  # fmt: skip


def _build(tmp: Path, settings: CacheSettings, attrs: dict, items: Iterable[tuple]) -> None:
    """Write `items` ((source cache, "video"|"query", ids), ...) into a new cache `tmp`."""
    L.create_cache_file(tmp, settings, attrs)
    items = list(items)
    total = sum(len(ids) for _, _, ids in items)
    with CacheWriter(tmp, settings) as writer, tqdm(
        total=total, desc="copy", unit="item", disable=None
    ) as bar:  # fmt: skip
        for src, kind, ids in items:
            if kind == "video":
                for vid in ids:
                    _copy_video(src, vid, writer)
                    bar.update(1)
            else:
                _copy_queries(src, ids, writer)
                bar.update(len(ids))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def compact(path: str | os.PathLike) -> RebuildReport:
    """Rewrite a cache with only its newest entries, in format version 2 (crash-safe).

    Raises:
        CacheError: not a readable cache, a writer is running, or an item fails its checksum
            (the original is then left as it was).
    """
    path = Path(path)
    L.check_header(path)
    remove_stale_temps(path.parent)
    fd = acquire_writer_lock(path)  # no writer may append while we copy
    tmp = temp_path(path)
    try:
        clear_flags_locked(path)  # we hold the lock: flags left set are stale
        with FeatureCache(path) as src:
            report = RebuildReport(path, len(src.video_ids()), len(src.query_ids()))
            report.bytes_before = path.stat().st_size
            attrs = {"created": src.attrs.get("created", "")}
            _build(tmp, src.settings, attrs,
                   [(src, "video", src.video_ids()), (src, "query", src.query_ids())])  # fmt: skip
        with FeatureCache(tmp) as done:
            if (len(done.video_ids()), len(done.query_ids())) != (report.videos, report.queries):
                raise CacheError(f"{path}: the compacted copy lost items; nothing was replaced")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        report.bytes_after = path.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)
        release_lock(path, fd)
    log.info("compacted %s: %d videos, %d queries, %.1f MB -> %.1f MB", path, report.videos,
             report.queries, report.bytes_before / 1e6, report.bytes_after / 1e6)  # fmt: skip
    return report


def _settings_of(caches: list[FeatureCache]) -> CacheSettings:
    """The common settings of the inputs, or UsageError listing every difference."""
    first = caches[0]
    problems = []
    for i, other in enumerate(caches[1:], 1):
        for ref in caches[:i]:  # every pair: "unknown" fingerprints match by name only
            diffs = ref.settings.mismatches(other.settings)
            if diffs:
                problems.append(f"{other.path} differs from {ref.path}: " + "; ".join(diffs))
                break
    if problems:
        raise CacheError("cannot merge caches made with other settings:\n  - "
                         + "\n  - ".join(problems))  # fmt: skip
    known = [c.settings for c in caches if c.settings.model_fingerprint]
    return known[0] if known else first.settings


def _same_video(a: FeatureCache, b: FeatureCache, vid: str) -> bool:
    ra, rb = a.video_record(vid), b.video_record(vid)
    if (ra.n_clips, ra.duration, ra.partial) != (rb.n_clips, rb.duration, rb.partial):
        return False
    if a.video_fps(vid) != b.video_fps(vid):
        return False
    return _crc(a, "video", vid) == _crc(b, "video", vid)


def _same_query(a: FeatureCache, b: FeatureCache, qid: str) -> bool:
    if a.query_record(qid) != b.query_record(qid):
        return False
    return _crc(a, "query", qid) == _crc(b, "query", qid)


def _crc(cache: FeatureCache, kind: str, key: str) -> int:
    entry = (cache.index.videos if kind == "video" else cache.index.queries)[key]
    if entry.crc is not None:
        return entry.crc
    return L.crc32(cache.video(key) if kind == "video" else cache.query(key))


def _assign(caches: list[FeatureCache], kind: str, policy: str, report: RebuildReport):
    """For each input, the ids it contributes; conflicting duplicates follow `policy`."""
    owner: dict[str, int] = {}
    conflicts: list[str] = []
    same = _same_video if kind == "video" else _same_query
    for i, cache in enumerate(caches):
        for key in cache.video_ids() if kind == "video" else cache.query_ids():
            if key not in owner:
                owner[key] = i
            elif same(caches[owner[key]], cache, key):
                report.identical += 1
            else:
                conflicts.append(f"{kind} {key!r} in {caches[owner[key]].path} and {cache.path}")
                if policy == "last":
                    owner[key] = i
    if conflicts and policy == "error":
        raise CacheError(
            f"{len(conflicts)} id(s) are in several inputs with different features, e.g. "
            + "; ".join(conflicts[:MAX_LISTED])
            + ". Choose --on-duplicate first|last to keep one of them."
        )
    report.duplicates += conflicts
    ids: list[list[str]] = [[] for _ in caches]
    for key, i in owner.items():
        ids[i].append(key)
    return ids


def merge(
    inputs: list[str | os.PathLike], out: str | os.PathLike, on_duplicate: str = "error"
) -> RebuildReport:
    """Merge caches with the same settings into a new cache `out` (atomic; see module doc).

    Args:
        inputs: two or more caches (e.g. the shards of `r2 extract --shard I/N`).
        out: the merged cache; must not exist yet.
        on_duplicate: an id in several inputs with different features is an "error"
            (default), or taken from the "first" or the "last" input holding it. Ids with
            identical features in several inputs are always kept once.

    Raises:
        CacheError: unreadable input, settings differ (every difference listed), conflicting
            duplicates under "error", `out` exists or is one of the inputs.
    """
    if on_duplicate not in DUPLICATE_POLICIES:
        raise CacheError(f"--on-duplicate must be one of {', '.join(DUPLICATE_POLICIES)}, "
                         f"got {on_duplicate!r}")  # fmt: skip
    out, paths = Path(out), [Path(p) for p in inputs]
    if len(paths) < 2:
        raise CacheError("merge needs at least two input caches")
    if out.exists() or any(p.resolve() == out.resolve() for p in paths):
        raise CacheError(f"{out}: already exists; merge writes a new file (choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)
    caches = [FeatureCache(p) for p in paths]
    report = RebuildReport(out, bytes_before=sum(p.stat().st_size for p in paths))
    tmp = temp_path(out)
    try:
        settings = _settings_of(caches)
        videos = _assign(caches, "video", on_duplicate, report)
        queries = _assign(caches, "query", on_duplicate, report)
        items = [(c, "video", v) for c, v in zip(caches, videos, strict=True)]
        items += [(c, "query", q) for c, q in zip(caches, queries, strict=True)]
        _build(tmp, settings, {}, items)
        report.videos, report.queries = sum(map(len, videos)), sum(map(len, queries))
        try:
            os.link(tmp, out)  # atomic; never replaces a file created meanwhile
        except FileExistsError:
            raise CacheError(f"{out}: was created by another process meanwhile") from None
        _fsync_dir(out.parent)
        report.bytes_after = out.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)
        for cache in caches:
            cache.close()
    return report
