"""Batch prediction: `r2 predict DIR_OR_FILES... --queries FILE --out results.jsonl`.

Queries: a text file (one query per line, asked of every video; blank lines are skipped;
qid = line number) or QVHighlights-schema JSON Lines (`qid`, `query`, `vid`: each query is
asked of its video; a row without `vid` is asked of every video). Detected by the `.jsonl`
/ `.json` extension or a first line starting with `{`.

Every video is decoded and CLIP-encoded once by the extraction pipeline (decode worker
processes overlapping the CLIP forward passes, r2.extract.pipeline), then all its queries
are answered in shared passes; each query text is CLIP-encoded once for the whole batch.

Output: one JSON line per (video, query), schema in r2.export (submission keys + timing).
Resumable: rows already in `--out` (same video, qid and query text) are not computed again,
and videos whose rows are all there are not even decoded. The file only ever grows by whole
lines: each video's rows are appended in one write and fsync'ed; a tail cut by a crash
(power loss) is removed on the next run and said so. A sidecar `<out>.run.json` records the
checkpoint's SHA-256 and `top`, and a re-run with another checkpoint is refused.
Damaged videos are skipped with their reason and counted (`--allow-partial` keeps the
decodable part).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from r2.errors import UsageError
from r2.export import batch_row
from r2.extract.inputs import VideoInput, find_videos, read_queries

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class BatchQuery:
    """One query of the queries file."""

    qid: int | str
    text: str
    vid: str | None  # None: asked of every video


@dataclass
class BatchSummary:
    """What one batch run did."""

    out: Path
    rows_written: int = 0
    rows_existing: int = 0
    videos_done: list[str] = field(default_factory=list)
    videos_finished_before: int = 0  # every row already in --out: not decoded
    videos_without_queries: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    partial: list[str] = field(default_factory=list)
    queries_unmatched: int = 0  # jsonl rows naming a video that was not given
    truncated: int = 0  # rows whose query was cut to CLIP's context
    torn_lines_removed: int = 0
    seconds: float = 0.0

    def report(self) -> str:
        minutes = max(self.seconds, 1e-9) / 60
        lines = [
            f"results: {self.out} ({self.rows_written} rows written, "
            f"{self.rows_existing} already there)",
            f"videos: {len(self.videos_done)} predicted, {self.videos_finished_before} already "
            f"done, {len(self.skipped)} skipped"
            + (f", {len(self.partial)} partial" if self.partial else "")
            + (
                f", {len(self.videos_without_queries)} without queries"
                if self.videos_without_queries
                else ""
            ),
            f"{len(self.videos_done) / minutes:.1f} videos/min over {self.seconds:.1f} s",
        ]
        if self.queries_unmatched:
            lines.append(f"queries: {self.queries_unmatched} name videos that were not given")
        if self.truncated:
            lines.append(f"queries: {self.truncated} rows cut to CLIP's 77-token context")
        if self.torn_lines_removed:
            lines.append(f"removed {self.torn_lines_removed} incomplete line from {self.out}")
        lines += [f"  skipped: {reason}" for _, reason in self.skipped]
        return "\n".join(lines)


def _qid(value: str) -> int | str:
    return int(value) if value.isdigit() and str(int(value)) == value else value


def read_query_file(path: str | os.PathLike) -> list[BatchQuery]:
    """The queries of a text or jsonl file (module docstring); UsageError names file:line."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; --queries must be a text or jsonl file")
    if not path.is_file():
        raise UsageError(f"{path}: queries file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read the queries file ({err})") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if path.suffix.lower() in JSONL_SUFFIXES or first.lstrip().startswith("{"):
        queries = [BatchQuery(_qid(q.qid), q.text, q.vid) for q in read_queries([path])]
    else:
        queries = [
            BatchQuery(no, line.strip(), None)
            for no, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    if not queries:
        raise UsageError(f"{path}: no queries in the file")
    return queries


class ResultsFile:
    """An append-only JSONL file written in whole lines (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> tuple[dict[tuple[str, str], str], int]:
        """({(vid, qid): query} of the rows present, incomplete tail lines removed)."""
        if not self.path.exists():
            return {}, 0
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        torn = int(len(whole) != len(data))
        if torn:
            os.truncate(self.path, len(whole))
            log.warning("%s: removed an incomplete last line (a crash while writing)", self.path)
        done = {}
        for no, line in enumerate(whole.decode("utf-8", "replace").splitlines(), 1):
            try:
                row = json.loads(line)
                done[(str(row["vid"]), str(row["qid"]))] = str(row["query"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(
                    f"{self.path}:{no}: not a result row of r2 predict; choose another --out"
                ) from None
        return done, torn

    def append(self, rows: list[dict]) -> None:
        """Append rows as whole lines (one write, fsync); on failure the file is restored."""
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # never leave part of a line behind
                raise
        finally:
            os.close(fd)


def check_run_identity(out: Path, identity: dict) -> None:
    """Refuse to extend results made with another checkpoint or `top` (sidecar .run.json)."""
    from r2.files import write_text_atomic

    sidecar = out.with_name(out.name + ".run.json")
    if out.exists() and out.stat().st_size and sidecar.exists():
        before = json.loads(sidecar.read_text())
        diffs = [
            f"{k}: {before.get(k)!r} then, {v!r} now"
            for k, v in identity.items()
            if before.get(k) != v
        ]
        if diffs:
            raise UsageError(
                f"{out} holds results of another run ({'; '.join(diffs)}); "
                "choose another --out or delete it"
            )
    write_text_atomic(sidecar, json.dumps(identity, indent=1) + "\n")


def plan(videos: list[VideoInput], queries: list[BatchQuery], summary: BatchSummary):
    """{vid: [BatchQuery]} for every video, counting queries that name no given video."""
    given = {v.vid for v in videos}
    common = [q for q in queries if q.vid is None]
    per_video: dict[str, list[BatchQuery]] = {v.vid: list(common) for v in videos}
    for q in queries:
        if q.vid is not None:
            if q.vid in given:
                per_video[q.vid].append(q)
            else:
                summary.queries_unmatched += 1
    summary.videos_without_queries = [vid for vid, qs in per_video.items() if not qs]
    return per_video


class _TimedEncoder:
    """The CLIP encoder, timing its forward passes (for each video's share of them)."""

    def __init__(self, encoder):
        self.encoder, self.seconds, self.frames = encoder, 0.0, 0
        self.settings, self.device = encoder.settings, encoder.device

    def encode_frames(self, frames, batch: int):
        began = time.perf_counter()
        out = self.encoder.encode_frames(frames, batch=batch)
        self.seconds += time.perf_counter() - began
        self.frames += len(frames)
        return out

    def per_frame(self) -> float:
        return self.seconds / max(self.frames, 1)


class _Collect:
    """A video's features gathered from the pipeline's stream (the model needs all of them:
    memory holds one video's features, (T, K, P, Dv) float16, plus the model's own)."""

    def __init__(self, owner: _Predicting, record, shape: tuple[int, ...]):
        import numpy as np

        self.owner, self.record, self.rows = owner, record, 0
        self.features = np.empty(shape, np.float16)  # filled in place: never held twice

    def write(self, chunk) -> None:
        self.features[self.rows : self.rows + len(chunk)] = chunk
        self.rows += len(chunk)

    def update(self, **changes) -> None:
        self.record = replace(self.record, **changes)

    def commit(self) -> None:
        record = replace(self.record, n_clips=self.rows)
        self.owner.add_video(record, self.features[: self.rows])
        self.features = None

    def abort(self) -> None:
        self.features = None


class _Predicting:
    """Takes the place of the cache writer in the extraction pipeline: each encoded video
    is answered at once and its rows appended to the results file."""

    def __init__(self, predictor, todo, texts, results, encoder, top, summary):
        self.predictor, self.todo, self.texts = predictor, todo, texts
        self.results, self.encoder, self.top, self.summary = results, encoder, top, summary

    def video_stream(self, record) -> _Collect:
        """The pipeline's sink interface (as `CacheWriter.video_stream`)."""
        s = self.encoder.settings
        return _Collect(self, record, (record.n_clips, s.k, s.tokens_per_frame, s.video_dim))

    def add_video(self, record, features) -> None:
        from r2.api import VideoFeatures

        queries = self.todo[record.vid]
        fps = getattr(record, "fps", None) or self.predictor.fps
        video = VideoFeatures(record.source, features, record.duration, fps, record.partial)
        began = time.perf_counter()
        texts = [q.text for q in queries]
        preds = self.predictor.predict_encoded(
            video, texts, [self.texts[t] for t in texts], self.top
        )
        each = (time.perf_counter() - began) / len(queries)
        encode_s = len(features) * self.encoder.per_frame()
        rows = [
            batch_row(p, q.qid, record.vid, encode_s, each)
            for q, p in zip(queries, preds, strict=True)
        ]
        self.results.append(rows)
        self.summary.rows_written += len(rows)
        self.summary.truncated += sum(p.truncated for p in preds)


def _todo(per_video, done, summary) -> dict[str, list[BatchQuery]]:
    """Queries still to answer per video; a changed query text is an error."""
    todo = {}
    for vid, queries in per_video.items():
        left = []
        for q in queries:
            before = done.get((vid, str(q.qid)))
            if before is None:
                left.append(q)
            elif before != q.text:
                raise UsageError(
                    f"{summary.out} has qid {q.qid} of {vid} for the query {before!r}, now "
                    f"{q.text!r}; choose another --out or delete it"
                )
            else:
                summary.rows_existing += 1
        if left:
            todo[vid] = left
        elif queries:
            summary.videos_finished_before += 1
    return todo


def _run_pipeline(predictor, encoder, writer, pending, out: Path, workers, allow_partial):
    """Decode `pending` in worker processes while `encoder` runs; `writer` gets each video."""
    from r2.extract.defaults import CPU_BATCH_FRAMES, GPU_BATCH_FRAMES
    from r2.extract.options import default_workers
    from r2.extract.spill import SPILL_BYTES
    from r2.extract.videos import run_videos
    from r2.extract.workers import DecodeOptions, DecodeSource

    spill_dir = out.with_name(f".{out.name}.frames-{os.getpid()}")  # long videos' frames
    opts = DecodeOptions(
        predictor.fps,
        predictor.image_size,
        predictor.frame_at,
        allow_partial,
        str(spill_dir),
        SPILL_BYTES,
    )
    source = DecodeSource(pending, opts, default_workers() if workers is None else workers)
    try:
        spill_dir.mkdir(parents=True, exist_ok=True)
        source.prime()
        batch = GPU_BATCH_FRAMES if encoder.device.type == "cuda" else CPU_BATCH_FRAMES
        return run_videos(encoder, writer, source, batch_frames=batch, strict=False)
    except BaseException:
        source.close(kill=True)  # Ctrl-C or an error: stop the decode workers now
        raise
    finally:
        source.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


def predict_batch(
    predictor,
    inputs,
    queries_file,
    out,
    *,
    top: int = 10,
    workers: int | None = None,
    allow_partial: bool = False,
    identity: dict | None = None,
) -> BatchSummary:
    """Answer every query of `queries_file` about every video of `inputs` into `out`.

    Returns:
        BatchSummary (its `report()` is what the command prints).

    Raises:
        UsageError: missing inputs, a malformed queries file or results file, results of
            another run in `out`.
    """
    began = time.perf_counter()
    out = Path(out)
    summary = BatchSummary(out)
    videos = find_videos(list(inputs))
    if not videos:
        raise UsageError(f"no video files found in {', '.join(map(str, inputs))}")
    per_video = plan(videos, read_query_file(queries_file), summary)
    check_run_identity(out, {**(identity or {}), "top": top})
    results = ResultsFile(out)
    done, summary.torn_lines_removed = results.load()
    todo = _todo(per_video, done, summary)
    texts = sorted({q.text for qs in todo.values() for q in qs})
    encoded = dict(zip(texts, predictor.encoder.encode_texts(texts), strict=True)) if texts else {}
    encoder = _TimedEncoder(predictor.encoder)
    writer = _Predicting(predictor, todo, encoded, results, encoder, top, summary)
    pending = [v for v in videos if v.vid in todo]
    stats = _run_pipeline(predictor, encoder, writer, pending, out, workers, allow_partial)
    summary.videos_done, summary.skipped, summary.partial = stats.done, stats.skipped, stats.partial
    summary.seconds = time.perf_counter() - began
    return summary
