"""`r2 data import-release`: the R²-Tuning feature release into one r2 cache + unified jsonl.

No video and no CLIP is needed. :func:`import_release` reads a release folder (layout in
release_anno.py), checks its annotations first, then streams every feature file into a
cache written with the settings the features were made with (`release_settings`), and
finally writes `{dataset}_{split}.jsonl` (+ `{dataset}_report.json`) next to the cache.

- **Identity.** The original extracted the features with OpenAI's `clip` package, ViT-B/32
  (the weights HuggingFace publishes as `openai/clip-vit-base-patch32`), K = 4 blocks,
  fp32, frames chosen by ffmpeg's fps filter (the clip's middle), 224-px bicubic resize and
  centre crop, CLIP's mean/std. r2 never saw those model files, so by default the cache
  records `model_id = "openai/clip-vit-base-patch32"`, no revision, and as fingerprint the
  release marker `RELEASE_FINGERPRINT` (r2.cache.identity: markers compare exactly, and
  by name against real models, with a warning). With `clip=` (a local folder or hub id of
  that model) its files are checked to be a ViT-B/32 CLIP and their content fingerprints
  are recorded instead: checkpoints then match that model by its files. The tokenizer
  fingerprint stays unknown (not compared) unless `clip=` gives it; the original cleaned
  texts exactly as r2 does (ftfy, html.unescape twice, whitespace).
- **Checks.** Every file is opened with `np.load(..., allow_pickle=False)` (npy.py) and
  refused, naming it, when its dtype is not float16 or its shape not (T, 4, 50, 768) /
  (L, 4, 512), when it is truncated, holds NaN/inf or no rows. A refused file is skipped
  and counted (the summary lists the first few); when the first `ABORT_AFTER` files are
  all refused, the folder is not the documented release and the import stops.
- **Clip counts.** A video's cached duration is the annotated one when T = round(duration
  × fps) ± 1 (the cache's rule), else T / fps (counted in the report; the annotation rows
  keep their duration); videos without annotation get T / fps.
- **Streaming and resuming.** Features are memory-mapped and written `VIDEO_CHUNK` clips at
  a time; queries are committed in batches of at most `QUERY_BATCH_BYTES`. Memory does not
  grow with the number of files (benchmarks/import_release.py). Every video and query
  batch is committed when written, so a killed import keeps them, and a re-run skips every
  video whose file has the same size and mtime and every query cached with the same text
  (like `r2 extract`).
- **Rows.** Rows whose video or query has no feature file (or a refused one) are dropped
  from the unified jsonl and counted: the jsonl and the cache agree, `r2 train` needs no
  `--skip-missing`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from r2.errors import UsageError

from .common import ReleaseError
from .npy import FeatureFile, FeatureFileError, chunks, list_features, open_features
from .release_anno import (
    QUERY_DIR,
    VIDEO_DIR,
    ReleaseAnnotations,
    ReleaseLayout,
    get_layout,
    read_release_annotations,
    video_id,
)

log = logging.getLogger(__name__)

RELEASE_MODEL = "openai/clip-vit-base-patch32"  # HF copy of the weights the release used
RELEASE_FINGERPRINT = "release:R2-Tuning/clip_b32"  # r2.cache.identity.RELEASE_PREFIX marker
K, TOKENS, VIDEO_DIM, TEXT_DIM, IMAGE_SIZE = 4, 50, 768, 512, 224  # ViT-B/32, last 4 blocks
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_TOKENS = 77  # a query of 77 tokens filled CLIP's context: it may have been cut
VIDEO_CHUNK = 32  # clips per write (32 x 307 KB = 9.8 MB)
QUERY_BATCH_BYTES = 4 * 2**20  # query features per commit (held twice while committing)
ABORT_AFTER = 5  # refused files before any was imported: not the documented release
MAX_LISTED = 5


@dataclass
class ImportResult:
    """What an import did (counts, timing, outputs)."""

    dataset: str
    cache: Path
    files: dict[str, Path] = field(default_factory=dict)  # split -> jsonl
    report: Path | None = None
    imported: dict[str, int] = field(default_factory=lambda: {"video": 0, "query": 0})
    skipped: dict[str, int] = field(default_factory=lambda: {"video": 0, "query": 0})
    refused: list[tuple[Path, str]] = field(default_factory=list)
    unannotated_queries: int = 0  # query files no annotation row names (no text: not imported)
    bytes_read: int = 0
    seconds: float = 0.0
    clips: dict[str, int] = field(default_factory=dict)  # video id -> T (imported or current)
    queries: set[str] = field(default_factory=set)  # qids now in the cache
    summary_lines: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return bool(self.clips) and bool(self.queries)

    def speed(self) -> str:
        n = sum(self.imported.values())
        s = max(self.seconds, 1e-9)
        return (
            f"{n:,} files, {self.bytes_read / 2**20:,.1f} MiB in {self.seconds:.1f} s: "
            f"{n / s:,.0f} files/s, {self.bytes_read / 2**20 / s:,.0f} MiB/s"
        )


def release_settings(layout: ReleaseLayout, clip: str | None = None):
    """The CacheSettings the release's features were made with (module docstring)."""
    from r2.cache import CacheSettings

    values = dict(
        model_id=RELEASE_MODEL,
        revision=None,
        k=K,
        fps=layout.fps,
        frame_at="middle",
        image_size=IMAGE_SIZE,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        dtype="fp32",
        tokens_per_frame=TOKENS,
        video_dim=VIDEO_DIM,
        text_dim=TEXT_DIM,
        model_fingerprint=RELEASE_FINGERPRINT,
        tokenizer_fingerprint=None,
    )
    if clip is not None:
        values.update(_probe_clip(clip))
    return CacheSettings(**values)


def _probe_clip(clip: str) -> dict:
    """Identity of a local copy of the release's model; refused unless it is a ViT-B/32."""
    from r2.extract.loading import probe_model

    src = probe_model(clip, None, None, False)
    v, t = src.config.vision_config, src.config.text_config
    found = {
        "vision width": v.hidden_size,
        "patch size": v.patch_size,
        "image size": src.image_size,
        "text width": t.hidden_size,
    }
    wanted = {
        "vision width": VIDEO_DIM,
        "patch size": 32,
        "image size": IMAGE_SIZE,
        "text width": TEXT_DIM,
    }
    bad = [f"{k} {found[k]} (ViT-B/32: {wanted[k]})" for k in wanted if found[k] != wanted[k]]
    if not np.allclose(src.mean, CLIP_MEAN) or not np.allclose(src.std, CLIP_STD):
        bad.append(f"mean/std {src.mean}/{src.std} (CLIP's {CLIP_MEAN}/{CLIP_STD})")
    if bad:
        raise ReleaseError(
            f"--clip {clip}: not the ViT-B/32 CLIP the release was made with: " + "; ".join(bad)
        )
    log.info(
        "recording %s (%s) as the CLIP of the release's features: it is taken to hold "
        "OpenAI's ViT-B/32 weights",
        src.model_id,
        src.model_fingerprint,
    )
    return {
        "model_id": src.model_id,
        "revision": src.commit,
        "model_fingerprint": src.model_fingerprint,
        "tokenizer_fingerprint": src.tokenizer_fingerprint,
    }


def import_release(
    folder: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    *,
    splits: str | os.PathLike | None = None,
    clip: str | None = None,
) -> ImportResult:
    """Import a release folder into the cache `out` and `{dataset}_{split}.jsonl` beside it.

    Args:
        folder: the dataset's release folder (clip_b32_vid_k4/, clip_b32_txt_k4/, annotations).
        dataset: qvhighlights | ego4d | charades | tacos | youtube | tvsum (preset aliases too).
        out: the cache file to create or complete (a killed import resumes).
        splits: YouTube / TVSum: a domain_splits.json-style file (default: shipped lists).
        clip: a local copy (folder or hub id) of the release's CLIP, to record its identity.

    Returns:
        Counts, speed and the written files; `usable` is False when nothing was imported.

    Raises:
        ReleaseError, AnnotationError: missing or malformed release files (before any
            feature is read), or a folder whose first files all contradict the release.
        CacheMismatchError: `out` is a cache of other settings.
    """
    from r2.cache import CacheWriter
    from r2.files import ensure_writable

    folder, out = Path(folder), Path(out)
    layout = get_layout(dataset)
    dirs = [folder / VIDEO_DIR, folder / QUERY_DIR]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ReleaseError(f"{folder}: not a feature release folder: {', '.join(missing)} missing")
    anno = read_release_annotations(folder, layout, splits)
    _check_outputs(anno, layout, out)
    settings = release_settings(layout, clip)
    ensure_writable(out, "cache")
    result, start = ImportResult(layout.dataset, out), time.perf_counter()
    with CacheWriter(out, settings) as writer:
        _import_videos(writer, list(list_features(dirs[0])), layout, anno, result)
        _import_queries(writer, list(list_features(dirs[1])), anno, result)
    result.seconds = time.perf_counter() - start
    if result.usable:
        _write_rows(anno, layout, out.parent, result)
    result.summary_lines = _summary(result, anno)
    return result


def _check_outputs(anno: ReleaseAnnotations, layout: ReleaseLayout, out: Path) -> None:
    inputs = {p.resolve() for p in anno.inputs}
    clash = [out.parent / f"{layout.dataset}_{s}.jsonl" for s in anno.rows]
    clash = [p for p in clash if p.resolve() in inputs]
    if clash or out.resolve() in inputs:
        raise UsageError(
            f"{clash[0] if clash else out}: the unified jsonl would overwrite the "
            "release's own annotation file: put the cache in another folder"
        )


class _Refusals:
    """Refused files: counted, the first few kept; the import stops if nothing works."""

    def __init__(self, result: ImportResult) -> None:
        self.result = result

    def add(self, path: Path, exc: Exception) -> None:
        reason = str(exc).removeprefix(f"{path}: ")
        self.result.refused.append((path, reason))
        log.warning("skipped %s: %s", path, reason)
        r = self.result
        if len(r.refused) >= ABORT_AFTER and not (r.clips or r.queries):
            raise ReleaseError(
                f"the first {len(r.refused)} feature files were all refused, "
                f"e.g. {r.refused[0][0]}: {r.refused[0][1]}"
            )


def _cached_duration(info, t: int, fps: float, anno: ReleaseAnnotations, vid: str) -> float:
    """The annotated duration when it agrees with T (± 1 clip), else T / fps (counted)."""
    from r2.cache.index import CLIP_TOLERANCE, expected_clips

    duration = info.duration if info is not None else None
    if duration is not None and abs(expected_clips(duration, fps) - t) <= CLIP_TOLERANCE:
        return duration
    if duration is not None:
        anno.result.repairs.add(
            "cache",
            "annotated duration is not T / fps (± 1 clip): cached duration = T / fps",
            "fixed",
            f"{vid} ({duration:g} s, T={t})",
        )
    return t / fps


def _import_videos(writer, files: list[FeatureFile], layout, anno, result) -> None:
    from tqdm import tqdm

    from r2.cache import VideoRecord

    refusals = _Refusals(result)
    for f in tqdm(files, desc="videos", unit="file", disable=None, dynamic_ncols=True):
        info = anno.videos.get(f.key)
        fps = info.fps if info is not None else None
        try:
            with open_features(f.path, (K, TOKENS, VIDEO_DIM), "video") as array:
                t = len(array)
                if writer.video_is_current(f.key, f.size, f.mtime, fps):
                    result.skipped["video"] += 1
                    result.clips[f.key] = t
                    continue
                duration = _cached_duration(info, t, fps or layout.fps, anno, f.key)
                record = VideoRecord(
                    f.key, duration, t, str(f.path.resolve()), f.size, f.mtime, False, fps
                )
                with writer.video_stream(record) as stream:
                    for chunk in chunks(array, VIDEO_CHUNK):
                        stream.write(chunk)
        except (FeatureFileError, TypeError, ValueError) as exc:
            refusals.add(f.path, exc)
            continue
        result.imported["video"] += 1
        result.bytes_read += t * K * TOKENS * VIDEO_DIM * 2
        result.clips[f.key] = t


def _import_queries(writer, files: list[FeatureFile], anno, result) -> None:
    from tqdm import tqdm

    refusals, batch = _Refusals(result), []
    for f in tqdm(files, desc="queries", unit="file", disable=None, dynamic_ncols=True):
        text = anno.texts.get(f.key)
        if text is None:
            result.unannotated_queries += 1
            continue
        if writer.has_query(f.key, text):
            result.skipped["query"] += 1
            result.queries.add(f.key)
            continue
        try:
            with open_features(f.path, (K, TEXT_DIM), "query") as array:
                feats = np.array(array)
            if not np.isfinite(feats).all():
                raise FeatureFileError(f"{f.path}: features contain NaN or infinity")
        except FeatureFileError as exc:
            refusals.add(f.path, exc)
            continue
        batch.append((f.key, text, feats))
        if sum(x[2].nbytes for x in batch) >= QUERY_BATCH_BYTES:
            _add_queries(writer, batch, result)
    _add_queries(writer, batch, result)


def _add_queries(writer, batch: list, result: ImportResult) -> None:
    """Commit a batch of (qid, text, features) and empty it."""
    from r2.cache import QueryRecord

    if not batch:
        return
    records = [QueryRecord(q, text, len(f), len(f) >= CONTEXT_TOKENS) for q, text, f in batch]
    writer.add_queries(records, [f for _, _, f in batch])
    result.imported["query"] += len(batch)
    result.bytes_read += sum(f.nbytes for _, _, f in batch)
    result.queries.update(q for q, _, _ in batch)
    batch.clear()


def _write_rows(anno: ReleaseAnnotations, layout, folder: Path, result: ImportResult) -> None:
    """The unified jsonl: rows whose features are all in the cache (others counted)."""
    from .common import write_splits

    repairs, splits = anno.result.repairs, {}
    for split, rows in anno.rows.items():
        kept = []
        for row in rows:
            vid, qid = video_id(layout, str(row["vid"])), str(row["qid"])
            if vid not in result.clips:
                repairs.add(split, "no video features in the release", "dropped", f"qid {qid}")
            elif qid not in result.queries:
                repairs.add(split, "no query features in the release", "dropped", f"qid {qid}")
            elif row.get("duration") is None:  # TVSum without a length: T clips of 2 s
                kept.append({**row, "duration": result.clips[vid] / layout.fps})
            else:
                kept.append(row)
        splits[split] = kept
    written = write_splits(layout.dataset, folder, splits, anno.result)
    result.files, result.report = written.files, written.report


def _summary(result: ImportResult, anno: ReleaseAnnotations) -> list[str]:
    lines = [
        f"{result.dataset}: cache {result.cache}: imported {result.imported['video']:,} "
        f"videos and {result.imported['query']:,} queries ({result.speed()}); already "
        f"there: {result.skipped['video']:,} videos, {result.skipped['query']:,} "
        f"queries"
    ]
    if result.refused:
        first = "; ".join(f"{p}: {why}" for p, why in result.refused[:MAX_LISTED])
        lines.append(f"refused {len(result.refused):,} feature files (first: {first})")
    if result.unannotated_queries:
        lines.append(
            f"{result.unannotated_queries:,} query files have no annotation row "
            "(no text to record): not imported"
        )
    lines += [
        f"{split}: {anno.result.rows[split]:,} rows -> {path}"
        for split, path in result.files.items()
    ]
    lines += [f"note: {n}" for n in anno.result.notes]
    lines.append(anno.result.repairs.table())
    return lines
