"""The Python API: load a trained checkpoint once, encode videos once, ask many questions.

    from r2.api import R2Predictor

    predictor = R2Predictor.from_pretrained("runs/qv/best.safetensors")
    video = predictor.encode_video("kitchen.mp4")           # decoded + CLIP-encoded once
    for question in ["a man opens the fridge", "someone washes dishes"]:
        result = predictor.predict(video, question)
        print(result.moments[:3])                            # [Moment(start, end, score), ...]
        print(result.saliency)                               # one score in [0, 1] per clip

Memory: frames are decoded and CLIP-encoded a batch at a time into one
preallocated (T, K, P, Dv) float16 array, and without autograd the model maps and pools
frames in chunks and attends in chunks of rows (r2.train.block / r2.train.attention), so
only the features and the model's per-clip states (about 16 KB per clip at hidden size
256, against 300 KB of ViT-B/32 features) grow with the video's length; there is no
maximum length. `benchmarks/long_video.py` measures it on 15-minute to 2-hour videos.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from r2.cache import CacheSettings
from r2.cache.identity import by_name_warning, model_difference, tokenizer_difference
from r2.evaluate.postprocess import postprocess_windows
from r2.extract.decode import VideoError, iter_clip_frames
from r2.extract.defaults import CPU_BATCH_FRAMES, GPU_BATCH_FRAMES
from r2.extract.encode import ClipEncoder, ModelLoadError
from r2.extract.identity import is_local, looks_like_path
from r2.train.batch import one_video_batch
from r2.train.checkpoint import load_checkpoint, resolve_path

log = logging.getLogger(__name__)

QUERIES_PER_PASS = 8  # queries sharing one forward pass over a video, at most ...
CLIP_QUERIES_PER_PASS = 16384  # ... and clips × queries per pass: a pass holds per-clip
# states (about 16 KB per clip and query) for each of its queries, so long videos take fewer
FRAMES_PER_CHUNK: int | None = None
"""Frames decoded and CLIP-encoded together (bounds memory); None: the extraction defaults,
32 frames on CPU (about 130 MB of ViT-B/32 activations) and 256 on CUDA."""


@dataclass(frozen=True)
class Moment:
    """One predicted moment: seconds from the video's first frame, and its confidence in [0, 1]."""

    start: float
    end: float
    score: float


@dataclass
class VideoFeatures:
    """A video encoded once by the checkpoint's CLIP settings; reusable for many queries."""

    path: str
    features: np.ndarray  # (T, K, P, Dv) float16
    duration: float  # seconds the features cover
    fps: float  # clips per second
    partial: bool = False  # a damaged file: only its decodable first `duration` seconds


@dataclass
class Prediction:
    """Moments (best first) and per-clip saliency for one query."""

    query: str
    duration: float
    fps: float
    moments: list[Moment]
    saliency: np.ndarray  # (T,) in [0, 1]: how well each clip matches the query
    truncated: bool = False  # the query was cut to CLIP's context length (77 tokens)


class R2Predictor:
    """A trained R² model plus the frozen CLIP that produced its training features."""

    def __init__(self, model: torch.nn.Module, meta: dict, encoder: ClipEncoder, device: str):
        self.model = model.eval()
        self.meta = meta
        self.encoder = encoder
        self.device = device
        settings = meta["cache_settings"]
        self.fps = float(settings["fps"])
        self.frame_at = str(settings["frame_at"])
        self.image_size = int(settings["image_size"])
        preset = meta["preset"]
        self.unit = preset.get("unit")
        self.nms = preset.get("nms", "normal")
        self.nms_threshold = float(preset.get("nms_threshold", 0.7))
        self.checkpoint: Path | None = None  # the weights file, set by from_pretrained

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        *,
        device: str = "auto",
        clip_model: str | None = None,
        clip_dtype: str | None = None,
    ) -> R2Predictor:
        """Load a checkpoint and the CLIP model its cache was extracted with.

        The checkpoint records its CLIP as a hub id + commit, or a local folder's absolute
        path, plus a content fingerprint, so it is found from any working directory. A model
        found elsewhere (`clip_model`) is verified by that fingerprint.

        Args:
            checkpoint: `runs/NAME/best.safetensors` (its `.json` sits beside it), the run
                folder, or `official:NAME` for a released checkpoint (r2.zoo; `r2 models`).
            device: "auto" (CUDA when available), "cpu" or "cuda[:i]".
            clip_model: where the CLIP weights are now (a moved folder, another copy, or a hub
                id); it must be the same model (same fingerprint) as the recorded one.
            clip_dtype: compute dtype of the CLIP forward in `encode_video`: None (default) =
                the dtype the training features were extracted with (fp32 on CPU: the
                released features' numbers); "bf16" = bfloat16, about 3x faster on CPUs
                with bfloat16 instructions, at a measured cost in accuracy (README, "bf16
                CLIP encoding"); "fp32" / "fp16" explicitly.

        Returns:
            A predictor ready for `encode_video` and `predict`.

        Raises:
            ModelLoadError: the recorded model is not there (pass `clip_model`) or cannot load.
            ValueError: `clip_model` is another model than the checkpoint's.
        """
        device = _resolve_device(device)
        path = resolve_path(checkpoint)
        model, meta = load_checkpoint(path, device=device)
        settings = meta["cache_settings"]
        recorded = settings["model_id"]
        if clip_model is None and looks_like_path(recorded) and not is_local(recorded):
            raise ModelLoadError(
                f"{checkpoint}: its CLIP model {recorded!r} is not there (moved or deleted?); "
                "pass --clip PATH (clip_model=PATH) to where it is now: it is verified by its "
                "fingerprint"
            )
        encoder = ClipEncoder.load(
            clip_model or recorded,
            revision=None if clip_model else settings.get("revision"),
            k=int(settings["k"]),
            device=device,
            dtype=clip_dtype or settings.get("dtype"),
        )
        mismatches = _settings_mismatches(encoder, settings, clip_model)
        if mismatches:
            raise ValueError(
                f"CLIP model {clip_model or recorded} does not match the checkpoint's "
                f"training features: {'; '.join(mismatches)}"
            )
        log.info("loaded %s with CLIP %s on %s", checkpoint, encoder.settings.model_id, device)
        predictor = cls(model, meta, encoder, device)
        predictor.checkpoint = path
        return predictor

    def encode_video(
        self,
        path: str | Path,
        *,
        allow_partial: bool = False,
        progress: Callable[[int, int], None] | None = None,
        fps: float | None = None,
    ) -> VideoFeatures:
        """Decode and CLIP-encode a video in chunks (memory bounded by the features).

        Args:
            path: a video file any FFmpeg build reads.
            allow_partial: for a file that fails to decode midway, keep the clips decoded so
                far (`partial` is then True) instead of raising.
            progress: called as progress(clips_done, clips_total) after each chunk.
            fps: clips per second for this video (e.g. a dataset's per-video rate); default
                the checkpoint's. Moments, saliency times and plots follow it.

        Raises:
            VideoError: the file cannot be opened or decoded; one line naming it and why.
        """
        fps = float(fps or self.fps)
        clips = iter_clip_frames(
            path, fps, self.image_size, frame_at=self.frame_at, allow_partial=allow_partial
        )
        s = self.encoder.settings
        shape = (clips.probe.n_clips, s.k, s.tokens_per_frame, s.video_dim)
        features = np.empty(shape, np.float16)  # filled in place: never held twice
        chunk = FRAMES_PER_CHUNK or (
            GPU_BATCH_FRAMES if self.encoder.device.type == "cuda" else CPU_BATCH_FRAMES
        )
        buffer = np.empty((chunk, self.image_size, self.image_size, 3), np.uint8)
        n = filled = 0
        bar = tqdm(total=shape[0], unit="clip", desc=Path(path).name, disable=None, leave=False)
        with bar:
            for frame in clips:
                buffer[n] = frame
                n += 1
                if n == chunk:
                    features = _put(features, filled, self.encoder.encode_frames(buffer))
                    filled, n = filled + n, 0
                    bar.update(chunk)
                    if progress is not None:
                        progress(filled, max(shape[0], filled))
            if n:
                features = _put(features, filled, self.encoder.encode_frames(buffer[:n]))
                filled += n
                if progress is not None:
                    progress(filled, max(shape[0], filled))
        if filled == 0:
            raise VideoError(f"{path}: no frames could be decoded")
        features = features[:filled]  # (T, K, P, Dv) float16
        duration = float(clips.duration)
        if clips.partial:
            duration = min(duration, filled / fps)
        return VideoFeatures(str(path), features, duration, fps, bool(clips.partial))

    def predict(
        self, video: VideoFeatures | str | Path, query: str, top: int | None = None
    ) -> Prediction:
        """Find the moments of `video` that match `query` and score every clip.

        Args:
            video: features from `encode_video`, or a video path (encoded on the fly).
            query: a sentence in natural language.
            top: keep only the best `top` moments (all, up to 50, by default).

        Returns:
            The post-processed moments (spec §4) and the saliency per clip in [0, 1]. The raw
            saliency of R²-Tuning is sigmoid(class score) × cosine(clip, query), which is negative
            when the clip's embedding points away from the query; such clips are reported as 0
            (not relevant), which keeps the order of every relevant clip.
        """
        return self.predict_many(video, [query], top)[0]

    @torch.inference_mode()
    def predict_many(
        self, video: VideoFeatures | str | Path, queries: Sequence[str], top: int | None = None
    ) -> list[Prediction]:
        """`predict` for several queries about one video, up to `QUERIES_PER_PASS` per forward
        pass (fewer for long videos, see `CLIP_QUERIES_PER_PASS`): the video's tokens are
        mapped once per pass (about half the cost of a query with ViT-B/32 features). Each
        result equals `predict(video, query)`."""
        if isinstance(queries, str):
            raise TypeError("predict_many takes a list of queries (use predict for one)")
        queries = check_queries(queries)
        if not isinstance(video, VideoFeatures):
            video = self.encode_video(video)
        return self.predict_encoded(video, queries, self.encoder.encode_texts(queries), top)

    @torch.inference_mode()
    def predict_encoded(
        self, video: VideoFeatures, queries: Sequence[str], texts: Sequence, top: int | None = None
    ) -> list[Prediction]:
        """`predict_many` with the queries already encoded (`self.encoder.encode_texts`), for
        callers asking the same queries of many videos (r2.batch)."""
        duration = min(video.duration, video.features.shape[0] / video.fps)
        feats = torch.from_numpy(video.features)  # (T, K, P, Dv), no copy
        per_pass = max(1, min(QUERIES_PER_PASS, CLIP_QUERIES_PER_PASS // len(feats)))
        results = []
        for g in range(0, len(queries), per_pass):
            group = [torch.from_numpy(t.features) for t in texts[g : g + per_pass]]
            batch = one_video_batch(feats, group, video.fps, duration, Path(video.path).stem)
            batch = batch.to(self.device)
            raws = self.model.predict(self.model(batch), batch)
            for query, text, raw in zip(
                queries[g : g + per_pass], texts[g : g + per_pass], raws, strict=True
            ):
                result = self._result(query, raw, duration, video.fps, top)
                result.truncated = bool(text.truncated)
                results.append(result)
        return results

    def _result(self, query: str, raw, duration: float, fps: float, top: int | None):
        windows = postprocess_windows(
            np.asarray(raw.boundary, dtype=np.float64),
            duration,
            self.unit,
            self.nms,
            self.nms_threshold,
        )
        moments = [Moment(float(s), float(e), float(c)) for s, e, c in windows if c > 0]
        saliency = np.clip(np.asarray(raw.saliency, dtype=np.float64), 0.0, 1.0)
        return Prediction(query, duration, fps, moments[:top] if top else moments, saliency)


def check_queries(queries: Sequence[str]) -> list[str]:
    """The queries as a list; raises ValueError for none at all or an empty/blank one."""
    queries = list(queries)
    if not queries:
        raise ValueError("no query given: predict_many needs at least one query")
    for i, query in enumerate(queries, 1):
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query {i} is empty or blank: give a sentence to search for")
    return queries


def _put(features: np.ndarray, at: int, part: np.ndarray) -> np.ndarray:
    """Write `part` at row `at`, growing `features` if decoding found more clips than probed."""
    if at + len(part) > len(features):
        grown = np.empty((max(2 * len(features), at + len(part)), *features.shape[1:]), np.float16)
        grown[:at] = features[:at]
        features = grown
    features[at : at + len(part)] = part
    return features


def _resolve_device(device: str) -> str:
    from r2.device import resolve_device  # one-line DeviceError for "gpu", CUDA-less torch

    return str(resolve_device(device))


def _settings_mismatches(encoder: ClipEncoder, settings: dict, clip_model: str | None) -> list[str]:
    """Differences between the loaded CLIP and the checkpoint's record of its features."""
    ours = encoder.settings
    problems = []
    for name in ("k", "image_size", "tokens_per_frame", "video_dim", "text_dim"):
        if name in settings and int(getattr(ours, name)) != int(settings[name]):
            problems.append(f"{name}: checkpoint {settings[name]} vs model {getattr(ours, name)}")
    known = {f.name for f in dataclasses.fields(CacheSettings)}
    recorded = CacheSettings(**{k: v for k, v in settings.items() if k in known})
    difference = model_difference(recorded, ours)
    by_name = by_name_warning(recorded, ours, ("checkpoint", "loaded model"))
    if by_name:
        log.warning("%s", by_name)
        if clip_model is not None and difference:
            log.warning("--clip %s is trusted to be the checkpoint's CLIP model (%s): it "
                        "cannot be verified", clip_model, recorded.model_id)  # fmt: skip
            difference = None
    if difference:
        problems.append(f"{difference} (checkpoint vs loaded model)")
    tokenizer = tokenizer_difference(recorded, ours)
    if tokenizer:
        problems.append(f"{tokenizer} (checkpoint vs loaded model)")
    return problems
