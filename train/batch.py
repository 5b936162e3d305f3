"""One training/inference sample and the padded batch the model consumes.

`collate` reproduces the original's padded layout: video and query features zero-padded
at the end to the batch's max T and max L (the original pads with +inf, takes the masks
from the finite entries, then zeroes the padding; the result is the same), boundaries
padded with +inf rows, saliency padded with 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Sample:
    """One (video, query) pair with its labels; features as stored (float16 or float32)."""

    qid: str
    vid: str
    video: Tensor  # (T, K, P, Dv)
    query: Tensor  # (L, K, Dq)
    fps: float
    duration: float
    boundary: Tensor | None = None  # (N, 2) seconds, cleaned (labels.clean_windows)
    saliency: Tensor | None = None  # (T,)
    pos_clip: int | None = None
    pad_to: tuple[int, int] | None = None  # (T, L) to pad to (a distributed run's batch)


@dataclass
class Batch:
    """A padded batch. Padded video clips / query tokens are zero features."""

    video: Tensor  # (B, T, K, P, Dv) floating (float16 kept as stored; upcast in the model)
    video_mask: Tensor  # (B, T) bool
    query: Tensor  # (B, L, K, Dq)
    query_mask: Tensor  # (B, L) bool
    fps: Tensor  # (B,) float32
    duration: Tensor  # (B,) float32
    boundary: Tensor | None = None  # (B, N, 2) seconds, +inf rows for padding
    saliency: Tensor | None = None  # (B, T) float32, 0 on padding
    pos_clip: Tensor | None = None  # (B,) int64
    qids: list[str] = field(default_factory=list)
    vids: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of samples B."""
        return self.video.size(0)

    @property
    def lengths(self) -> Tensor:
        """(B,) int64 valid clips per sample."""
        return self.video_mask.sum(1)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on `device`."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            video=move(self.video),
            video_mask=move(self.video_mask),
            query=move(self.query),
            query_mask=move(self.query_mask),
            fps=move(self.fps),
            duration=move(self.duration),
            boundary=move(self.boundary),
            saliency=move(self.saliency),
            pos_clip=move(self.pos_clip),
            qids=list(self.qids),
            vids=list(self.vids),
        )


def _pad_stack(tensors: Sequence[Tensor], value: float, length: int | None = None) -> Tensor:
    """Stack tensors of equal trailing shape, padding dim 0 at the end with `value` to
    `length` (default: the longest). A single tensor needing no padding is returned as a
    view (a long video's features are never copied)."""
    n = max(t.size(0) for t in tensors) if length is None else length
    if len(tensors) == 1 and tensors[0].size(0) == n:
        return tensors[0].unsqueeze(0)
    out = tensors[0].new_full((len(tensors), n, *tensors[0].shape[1:]), value)
    for i, t in enumerate(tensors):
        out[i, : t.size(0)] = t
    return out


def _check(samples: Sequence[Sample]) -> None:
    """Refuse samples that cannot share a batch, naming the offending sample."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    ref = samples[0]
    for s in samples:
        if s.video.dim() != 4 or s.query.dim() != 3:
            raise ValueError(
                f"qid {s.qid}: video must be (T,K,P,Dv) and query (L,K,Dq), got "
                f"{tuple(s.video.shape)} and {tuple(s.query.shape)}"
            )
        if s.video.size(0) < 1 or s.query.size(0) < 1:
            raise ValueError(
                f"qid {s.qid}: empty video ({s.video.size(0)} clips) or query "
                f"({s.query.size(0)} tokens)"
            )
        if s.video.shape[1:] != ref.video.shape[1:] or s.query.shape[1:] != ref.query.shape[1:]:
            raise ValueError(
                f"qid {s.qid}: feature shape {tuple(s.video.shape[1:])}/"
                f"{tuple(s.query.shape[1:])} differs from qid {ref.qid}'s "
                f"{tuple(ref.video.shape[1:])}/{tuple(ref.query.shape[1:])}"
            )
        for name in ("boundary", "saliency", "pos_clip"):
            if (getattr(s, name) is None) != (getattr(ref, name) is None):
                raise ValueError(f"qid {s.qid}: {name} is given for some samples only")
        if s.saliency is not None and s.saliency.size(0) != s.video.size(0):
            raise ValueError(
                f"qid {s.qid}: saliency has {s.saliency.size(0)} values for {s.video.size(0)} clips"
            )
        if s.pos_clip is not None and not 0 <= s.pos_clip < s.video.size(0):
            raise ValueError(f"qid {s.qid}: pos_clip {s.pos_clip} outside 0..{s.video.size(0) - 1}")


def collate(samples: list[Sample]) -> Batch:
    """Pad and stack samples into a `Batch` (the original's layout, see module doc)."""
    _check(samples)
    video = _pad_stack([s.video for s in samples], 0.0)
    query = _pad_stack([s.query for s in samples], 0.0)
    return _batch(samples, video, query)


def padded_batch(samples: list[Sample], video: Tensor, query: Tensor) -> Batch:
    """The `Batch` of samples whose features are already in place: `video` (B, T, ...) and
    `query` (B, L, ...) hold sample i's features in their first rows and zeros after (T and
    L at least every sample's length). Equal to `collate(samples)` when T and L are the
    samples' maxima (r2.train.loader builds batches this way, in reused buffers)."""
    _check(samples)
    if video.size(0) != len(samples) or query.size(0) != len(samples):
        raise ValueError(f"{len(samples)} samples for buffers of {video.size(0)}/{query.size(0)}")
    return _batch(samples, video, query)


def _batch(samples: Sequence[Sample], video: Tensor, query: Tensor) -> Batch:
    """Masks, labels and metadata around the padded features."""
    t_len = torch.tensor([s.video.size(0) for s in samples])
    l_len = torch.tensor([s.query.size(0) for s in samples])
    video_mask = torch.arange(video.size(1))[None] < t_len[:, None]
    query_mask = torch.arange(query.size(1))[None] < l_len[:, None]
    ref = samples[0]
    boundary = saliency = pos_clip = None
    if ref.boundary is not None:
        boundary = _pad_stack([s.boundary.float().reshape(-1, 2) for s in samples], float("inf"))
    if ref.saliency is not None:
        saliency = _pad_stack([s.saliency.float() for s in samples], 0.0, video.size(1))
    if ref.pos_clip is not None:
        pos_clip = torch.tensor([int(s.pos_clip) for s in samples], dtype=torch.long)
    return Batch(
        video=video,
        video_mask=video_mask,
        query=query,
        query_mask=query_mask,
        fps=torch.tensor([float(s.fps) for s in samples], dtype=torch.float32),
        duration=torch.tensor([float(s.duration) for s in samples], dtype=torch.float32),
        boundary=boundary,
        saliency=saliency,
        pos_clip=pos_clip,
        qids=[str(s.qid) for s in samples],
        vids=[str(s.vid) for s in samples],
    )


def one_video_batch(
    video: Tensor, queries: Sequence[Tensor], fps: float, duration: float, vid: str = ""
) -> Batch:
    """Q queries about one video, for inference: the video stays (1, T, K, P, Dv) (no copy;
    the model broadcasts it over the queries), the queries are zero-padded to (Q, L, K, Dq).

    Args:
        video: (T, K, P, Dv) features.
        queries: Q tensors (L_i, K, Dq).
        fps, duration: the video's clip rate and length in seconds.
        vid: the video id given to every row.
    """
    if not queries:
        raise ValueError("one_video_batch needs at least one query")
    lengths = torch.tensor([q.size(0) for q in queries])
    query = _pad_stack(list(queries), 0.0)
    n, t = len(queries), video.size(0)
    return Batch(
        video=video.unsqueeze(0),
        video_mask=torch.ones(n, t, dtype=torch.bool),
        query=query,
        query_mask=torch.arange(query.size(1))[None] < lengths[:, None],
        fps=torch.full((n,), float(fps), dtype=torch.float32),
        duration=torch.full((n,), float(duration), dtype=torch.float32),
        qids=[str(i) for i in range(n)],
        vids=[vid] * n,
    )
