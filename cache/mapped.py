"""Features served from the cache file's own pages, mapped into memory (`--preload ram`).

Reading 7 GB of features into a fresh block of RAM costs the read of the file plus the
first touch of 7 GB of new memory, which on the VM we measure on runs at 1.2-3 GB/s: such a
preload ran at 0.5-0.6 x the plain read of the file. Mapping the file instead makes the
kernel's page cache the one copy: `populate` reads each needed byte range in once
(`MADV_POPULATE_READ`, at the speed of a plain read; 2 threads keep the disk busy) and maps
it; nothing else is allocated, and the processes of one machine (a torchrun job) share the
pages. Only the rows a run uses are read: the byte ranges come from `DirectRows.plan`
(cache/direct.py), so the memory is the feature bytes plus at most a page per range.

Mapped pages are clean file pages: under memory pressure the kernel may drop some instead
of failing, and they are read from the file again when next used (slower, the same bytes;
the cache's rows are never rewritten in place). Ids whose rows cannot be mapped (a layout
`plan` refuses, rows past the end of the mapping, a file system that cannot map: logged)
are listed in `unmapped_videos` and `unmapped_queries` for the caller to read the ordinary
way.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .direct import Plan
from .records import CacheError

log = logging.getLogger(__name__)

MADV_POPULATE_READ = 22  # Linux >= 5.14: fault a range's pages in, reading them from the file
PAGE = mmap.PAGESIZE  # bytes
POPULATE_THREADS = 2  # one range is read while another is mapped (3.6 vs 2.4 GB/s with one)


class MappedFeatures:
    """Rows of some videos and queries, served from a read-only mapping of the cache file.

    Args:
        path: the cache file (for messages).
        fd: an open descriptor of it (the mapping keeps its own duplicate).
        videos / queries: id -> the plan of all its rows (last k layers) and its row count.
        unmapped: video ids and query ids the caller must read otherwise (no plan).
    """

    def __init__(self, path, fd: int, videos: dict[str, tuple[Plan, int]],
                 queries: dict[str, tuple[Plan, int]],
                 unmapped: tuple[set[str], set[str]] = (set(), set())):  # fmt: skip
        self.path = path
        self.unmapped_videos, self.unmapped_queries = set(unmapped[0]), set(unmapped[1])
        size = os.fstat(fd).st_size if videos or queries else 0  # nothing to map: no mmap
        self._mm = None
        try:
            self._mm = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        except (OSError, ValueError, TypeError) as exc:  # e.g. a file system without mmap
            log.warning("%s: cannot map the file (%s); its features are copied into RAM "
                        "instead", path, exc)  # fmt: skip
            size = 0  # every id unmapped below
        self._bytes = np.frombuffer(self._mm, np.uint8) if size else np.empty(0, np.uint8)
        self.videos, self.queries = {}, {}
        for src, dst, left in ((videos, self.videos, self.unmapped_videos),
                               (queries, self.queries, self.unmapped_queries)):  # fmt: skip
            for ident, (plan, rows) in src.items():
                if all(off + n <= size for off, n in plan.ranges):
                    dst[ident] = (plan, rows)
                else:  # committed after the file was measured: not in this mapping
                    left.add(ident)

    @property
    def nbytes(self) -> int:
        """Feature bytes served from the mapping."""
        return sum(p.nbytes for p, _ in (*self.videos.values(), *self.queries.values()))

    def populate(self, progress: Callable[[int], object] | None = None) -> None:
        """Read every mapped range into memory now (videos in file order), calling
        `progress(nbytes)` after each id.

        Raises:
            CacheError: the file could not be read.
        """
        plans = sorted((p for p, _ in (*self.videos.values(), *self.queries.values())),
                       key=lambda p: p.ranges[0][0])  # fmt: skip

        def load(plan: Plan) -> int:
            for offset, size in plan.ranges:
                self._populate_range(offset, size)
            return plan.nbytes

        with ThreadPoolExecutor(POPULATE_THREADS, "r2-populate") as pool:
            for n in pool.map(load, plans):
                if progress is not None:
                    progress(n)

    def _populate_range(self, offset: int, size: int) -> None:
        start = offset - offset % PAGE
        try:
            self._mm.madvise(MADV_POPULATE_READ, start, offset + size - start)
        except OSError as exc:
            if exc.errno not in (22, 95):  # EINVAL (older kernel), EOPNOTSUPP
                raise CacheError(f"{self.path}: cannot read bytes {offset}-{offset + size}: "
                                 f"{exc.strerror}") from exc  # fmt: skip
            int(self._bytes[start : offset + size : PAGE].max())  # fault each page in
        except (AttributeError, ValueError):  # no madvise on this platform
            int(self._bytes[start : offset + size : PAGE].max())

    def read_video_into(self, vid: str, out: np.ndarray) -> None:
        """The first len(out) clips of `vid` into `out` ((n, k, P, Dv) float16)."""
        self._read_into(self.videos[vid], out, f"video {vid!r}")

    def read_query_into(self, qid: str, out: np.ndarray) -> None:
        """The first len(out) tokens of `qid` into `out` ((L, k, Dq) float16)."""
        self._read_into(self.queries[qid], out, f"query {qid!r}")

    def video(self, vid: str, shape: tuple[int, ...]) -> np.ndarray:
        """All rows of `vid` as a new (T, *shape) float16 array."""
        return self._array(self.videos[vid], shape)

    def query(self, qid: str, shape: tuple[int, ...]) -> np.ndarray:
        """All rows of `qid` as a new (L, *shape) float16 array."""
        return self._array(self.queries[qid], shape)

    def _array(self, entry: tuple[Plan, int], shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty((entry[1], *shape), np.float16)
        self._read_into(entry, out, "rows")
        return out

    def _read_into(self, entry: tuple[Plan, int], out: np.ndarray, what: str) -> None:
        plan, rows = entry
        row_bytes = plan.nbytes // max(rows, 1)
        if (out.dtype != np.float16 or not out.flags.c_contiguous or len(out) > rows
                or (len(out) and out[0].nbytes != row_bytes)):  # fmt: skip
            raise ValueError(f"{what}: cannot copy into {out.dtype} {tuple(out.shape)} "
                             f"({rows} rows of {row_bytes} bytes mapped)")  # fmt: skip
        dst = out.reshape(-1).view(np.uint8)
        at, want = 0, out.nbytes
        for offset, size in plan.ranges:
            if at >= want:
                break
            n = min(size, want - at)
            dst[at : at + n] = self._bytes[offset : offset + n]
            at += n
