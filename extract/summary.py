"""What one extraction run did (`ExtractSummary`), and its human report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from r2.extract.shard import Shard


@dataclass
class ExtractSummary:
    """What one `extract` run did."""

    cache: Path  # the cache file written (this shard's, for a sharded run)
    shard: Shard | None = None  # the shard this run extracted (None: everything)
    videos_done: list[str] = field(default_factory=list)  # vids extracted by this run
    videos_cached: list[str] = field(default_factory=list)  # vids already current in the cache
    videos_skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    videos_partial: list[str] = field(default_factory=list)  # vids stored from a damaged file
    videos_other_shards: int = 0  # input videos left to the other shards
    queries_done: int = 0  # queries encoded by this run
    queries_cached: int = 0  # queries already in the cache with the same text
    queries_other_shards: int = 0  # queries left to the other shards
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
        if not given and not queries:  # a shard that got nothing: not a failure
            return self.videos_other_shards + self.queries_other_shards > 0
        return videos > 0 if given else queries > 0

    def report(self) -> str:
        """Multi-line human summary (counts, then one line per skipped file)."""
        lines = [f"cache: {self.cache}"]
        if self.shard is not None:
            lines.append(f"shard {self.shard} ({self.shard.source}): "
                         f"{self.videos_other_shards} video(s) and {self.queries_other_shards} "
                         "quer(ies) left to the other shards")  # fmt: skip
        lines += [
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
