"""One extraction run: open the cache, encode the queries it lacks, then the videos.

Videos are decoded in worker processes (`workers.DecodeSource`) while this process runs the
CLIP forward pass (`videos.run_videos`) and streams each video's features into the cache.
This process is the only cache writer. torch is imported lazily (through `encode`), after
the workers exist. On any error or Ctrl-C the workers are stopped at once and the video
being streamed is discarded; everything committed before stays in the cache.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from r2.extract import spill, workers
from r2.extract.defaults import CPU_BATCH_FRAMES, GPU_BATCH_FRAMES, QUERY_CHUNK
from r2.extract.inputs import VideoInput
from r2.extract.options import ExtractOptions, usable_cores
from r2.extract.videos import SkipError, VideoStats, run_videos
from r2.extract.workers import DecodeOptions, DecodeSource

__all__ = ["SkipError", "VideoStats", "run", "run_queries", "run_videos"]

log = logging.getLogger(__name__)


def run_queries(encoder, writer, queries: list, chunk: int) -> list[str]:
    """Encode and write queries, one commit per `chunk` queries. Returns the truncated qids."""
    from tqdm import tqdm

    from r2.cache import QueryRecord

    truncated = []
    bar = tqdm(total=len(queries), unit="query", desc="queries", disable=None, dynamic_ncols=True)
    try:
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            encoded = encoder.encode_texts([q.text for q in part])
            records = [QueryRecord(q.qid, q.text, e.n_tokens, e.truncated)
                       for q, e in zip(part, encoded, strict=True)]  # fmt: skip
            writer.add_queries(records, [e.features for e in encoded])
            truncated += [r.qid for r in records if r.truncated]
            bar.update(len(part))
    finally:
        bar.close()
    return truncated


def _settings(opts: ExtractOptions, device: str):
    """(CacheSettings, encoder-load keywords) from a settings-only load of the model."""
    from r2.cache import CacheSettings
    from r2.extract.encode import ClipEncoder

    load = {"k": opts.k, "device": device, "dtype": opts.dtype}
    s = ClipEncoder.load(opts.model, revision=opts.revision, towers=(), **load).settings
    settings = CacheSettings(s.model_id, s.revision, s.k, float(opts.fps), opts.frame_at,
                             s.image_size, s.mean, s.std, s.dtype, s.tokens_per_frame,
                             s.video_dim, s.text_dim, s.model_fingerprint,
                             s.tokenizer_fingerprint)  # fmt: skip
    return settings, {**load, "revision": s.revision}  # pinned to the resolved commit


def _todo(writer, summary, videos: list[VideoInput], queries: list):
    """The videos and queries the cache lacks (or holds from another source / text)."""
    current = {v.vid for v in videos if writer.video_is_current(v.vid, v.size, v.mtime, v.fps)}
    todo = [v for v in videos if v.vid not in current]
    summary.videos_cached = [v.vid for v in videos if v.vid in current]
    new_queries = [q for q in queries if not writer.has_query(q.qid, q.text)]
    summary.queries_cached = len(queries) - len(new_queries)
    log.info("writing %s: %d video(s) to extract (%d already cached), %d quer(ies) to encode "
             "(%d already cached)", summary.cache, len(todo), len(summary.videos_cached),
             len(new_queries), summary.queries_cached)  # fmt: skip
    return todo, new_queries


def run(summary, videos: list[VideoInput], queries: list, opts: ExtractOptions):
    """Open the cache, then encode the queries and videos it lacks; fills `summary`."""
    import torch

    from r2.cache import CacheWriter
    from r2.extract.encode import ClipEncoder
    from r2.extract.shard import cuda_device

    torch.set_num_threads(opts.n_threads)
    settings, load = _settings(opts, cuda_device(opts.device))
    with CacheWriter(summary.cache, settings) as writer:
        todo, new_queries = _todo(writer, summary, videos, queries)
        towers = ("vision",) * bool(todo) + ("text",) * bool(new_queries)
        if not towers:
            return summary
        spill_dir = _spill_dir(summary.cache)  # guarded by the cache's lock: ours alone
        decode = DecodeOptions(float(opts.fps), settings.image_size, opts.frame_at,
                               opts.allow_partial, str(spill_dir), spill.SPILL_BYTES,
                               workers.DECODE_NICE,
                               workers.decoder_threads(opts.n_workers, usable_cores()))  # fmt: skip
        source = DecodeSource(todo, decode, opts.n_workers)
        try:
            source.prime()  # decoding overlaps the model load and the queries
            encoder = ClipEncoder.load(opts.model, towers=towers, **load)
            if new_queries:
                summary.queries_truncated = run_queries(encoder, writer, new_queries, QUERY_CHUNK)
                summary.queries_done = len(new_queries)
            if todo:
                _videos(summary, encoder, writer, source, opts)
        except BaseException:
            source.close(kill=True)  # Ctrl-C or an error: stop decoding now
            raise
        finally:
            source.close()
            shutil.rmtree(spill_dir, ignore_errors=True)
    return summary


def _videos(summary, encoder, writer, source: DecodeSource, opts: ExtractOptions) -> None:
    default = GPU_BATCH_FRAMES if encoder.device.type == "cuda" else CPU_BATCH_FRAMES
    stats = run_videos(encoder, writer, source, batch_frames=opts.batch_frames or default,
                       strict=opts.strict)  # fmt: skip
    summary.videos_done, summary.videos_skipped = stats.done, stats.skipped
    summary.videos_partial, summary.frames = stats.partial, stats.frames


def _spill_dir(cache: Path) -> Path:
    """`<cache>.frames/` for long videos' decoded frames (next to the cache, not in a /tmp
    that may be RAM); leftovers of a killed run are removed first."""
    folder = Path(cache).with_name(Path(cache).name + ".frames")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
