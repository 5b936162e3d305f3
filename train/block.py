"""The R² block (spec §2.1–2.4): query-modulated spatial pooling + recurrent refinement.

For step k = 1..K, using CLIP layer n (deepest first by default):
    v = video_map([tokens ‖ tef])             (B, T, P, C)
    q = query_map(query tokens)               (B, L, C)
    a = softmax_P((Wq q)(Wv v)ᵀ / √C)          (B, T, L, P)
    o = max_L(a·v + q)                         (B, T, C)
    e = v_CLS + tanh(s_k) · o;  e = σ(g_k) · e + (1 − σ(g_k)) · h   (from step 2 on)
    h = DecoderLayer(e, q)                     (B, T, C)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import pooling
from .attention import TemporalRefiner, position_encoding
from .config import R2Config
from .fused import Dropout, map_tokens

INFER_CHUNK_TOKENS = 32768
"""Video tokens (B·frames·P) mapped and pooled together when no gradient is recorded:
the (tokens, C) float32 intermediates stay near 32 MB whatever the video's length."""


def _mlp(in_dims: int, dims: int, dropout: float) -> nn.Sequential:
    """LayerNorm → Dropout → Linear → ReLU → LayerNorm → Dropout → Linear (the original's
    `video_map` / `query_map`, indices 0..6 kept for checkpoint compatibility)."""
    return nn.Sequential(
        nn.LayerNorm(in_dims),
        Dropout(dropout),
        nn.Linear(in_dims, dims),
        nn.ReLU(inplace=True),
        nn.LayerNorm(dims),
        Dropout(dropout),
        nn.Linear(dims, dims),
    )


def endpoint_features(mask: Tensor, padding_invariant: bool = False) -> Tensor:
    """Temporal endpoint features [i/T, (i+1)/T] per clip, (B, T, 2) float32.

    The original computes `arange(0, 1, 1/T)` of the PADDED length T for every sample;
    with `padding_invariant` each sample uses its own valid length (padding rows 0).
    """
    b, t = mask.shape

    def tef(n: int) -> Tensor:
        start = torch.arange(0, 1, 1 / n, device=mask.device)[:n]
        return torch.stack((start, start + 1.0 / n), dim=1)  # (n, 2)

    if not padding_invariant:
        return tef(t).unsqueeze(0).expand(b, t, 2)
    out = torch.zeros(b, t, 2, device=mask.device)
    for i, n in enumerate(mask.sum(1).tolist()):
        out[i, :n] = tef(n)
    return out


class R2Step(nn.Module):
    """The weights of one refinement step (shared by all steps in the released model)."""

    def __init__(self, cfg: R2Config) -> None:
        super().__init__()
        c = cfg.dims
        self.video_map = _mlp(cfg.video_dim + (2 if cfg.use_tef else 0), c, cfg.dropout)
        self.query_map = _mlp(cfg.query_dim, c, cfg.dropout)
        self.v_map = nn.Linear(c, c)
        self.q_map = nn.Linear(c, c)
        self.temporal = TemporalRefiner(
            c, cfg.heads, cfg.ffn_ratio, cfg.droppath, cfg.attention_order, cfg.temporal_layers
        )

    def map_video(self, frames: Tensor, tef: Tensor | None) -> tuple[Tensor, Tensor]:
        """`video_map` of (F, P, Dv) frame tokens (+ (F, 2) tef) WITHOUT its last Linear:
        u (F, P, C) with video_map(x) = last(u) (see `pool`), and its [CLS] tokens u[:, 0]
        (F, C). float32, bfloat16 under bfloat16 autocast."""
        return map_tokens(frames, tef, self.video_map)  # chunk-wise, memory-lean

    def pool(
        self, u: Tensor, q: Tensor, query_mask: Tensor, mask_max: bool, u_cls: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Query-modulated spatial pooling of the mapped tokens v = last(u).

        Args:
            u: (B, T, P, C) video tokens before `video_map`'s last Linear W6, b6; B may be 1
                for Q queries about one video (broadcast).
            q: (B or Q, L, C) mapped query tokens.
            u_cls: (B, T, C) = u[:, :, 0] as its own tensor (`map_video`), or None.

        Returns:
            v_cls (B, T, C), the mapped [CLS] tokens, and o (B or Q, T, C) = max_L(a·v + q).

        Identical function, far fewer operations than the literal form: the scores
        (Wq q)·(Wv v + bv) are ((Wq q) Wv W6)·u + a per-query constant, and a·v =
        W6 (a·u) + b6 as the attention rows sum to 1, so neither `v_map` nor W6 runs on
        all B·T·P tokens (when L < P; otherwise v is formed first). The rest runs in one
        autograd node (pooling.py).
        """
        p = u.size(2)
        last = self.video_map[6]
        u_cls = u[:, :, 0] if u_cls is None else u_cls
        qm = self.q_map(q)  # (B, L, C)
        q_eff = qm @ self.v_map.weight  # (B, L, C): scores = q_eff·v + qm·bv
        q_const = (qm * self.v_map.bias).sum(-1)  # (B, L), constant over the P tokens
        w6 = b6 = None
        if q.size(1) < p:  # apply W6 after pooling (fewer rows)
            q_const = q_const + (q_eff * last.bias).sum(-1)
            q_eff, w6, b6 = q_eff @ last.weight, last.weight, last.bias
        else:  # or before
            u = last(u)
        o = pooling.pool(u, q_eff.float(), q_const.float(), w6, b6, q.float(),
                         query_mask if mask_max else None)  # fmt: skip
        return last(u_cls), o


@dataclass
class BlockOutput:
    """What the R² block hands to the pyramid, heads and calibration losses."""

    hidden: Tensor  # (B, T, C) last decoder output h (before any ReLU)
    query: Tensor  # (B, L, C) last step's mapped query tokens
    step_cls: list[Tensor]  # per step (B, T, C): mapped [CLS] tokens v[:, :, 0]
    step_query: list[Tensor]  # per step (B, L, C): mapped query tokens


class R2Block(nn.Module):
    """K refinement steps over the last K CLIP layers (see module docstring)."""

    def __init__(self, cfg: R2Config) -> None:
        super().__init__()
        self.cfg = cfg
        n_modules = 1 if cfg.shared_block or cfg.num_steps == 1 else cfg.k
        self.steps = nn.ModuleList(R2Step(cfg) for _ in range(n_modules))
        if cfg.num_steps > 1:
            self.gate = nn.Parameter(torch.zeros(cfg.num_steps - 1))
        self.scale = nn.Parameter(torch.zeros(cfg.num_steps))

    def _layer_order(self) -> list[int]:
        """Indices 0..K−1 of the kept layers (0 = shallowest) in step order."""
        if self.cfg.fusion != "recurrent":
            return [0]
        order = list(range(self.cfg.k))
        return order[::-1] if self.cfg.direction == "reversed" else order

    def _inputs(self, video: Tensor, query: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's (B, T, P, Dv) video tokens (stored dtype, a view) and (B, L, Dq) float
        query; for mean fusion the (B, T, K, P, Dv) view of all K layers (averaged per chunk
        in `_map_pool`) and the mean query."""
        first = video.size(2) - self.cfg.k  # feature index of the K-th layer from the end
        if self.cfg.fusion == "mean":
            return video[:, :, first:], query[:, :, first:].float().mean(2)
        return video[:, :, first + i], query[:, :, first + i].float()

    def forward(
        self, video: Tensor, query: Tensor, video_mask: Tensor, query_mask: Tensor
    ) -> BlockOutput:
        """video (B, T, Kf, P, Dv), query (B, L, Kf, Dq) with Kf ≥ K; masks (B, T), (B, L).

        One video asked Q questions: video (1, T, Kf, P, Dv) is broadcast over the Q queries
        (masks (Q, T), (Q, L)); it is mapped once, and padded query tokens are left out of
        the max over tokens, so each query gets what it would alone.
        """
        cfg = self.cfg
        if video.size(2) < cfg.k or query.size(2) < cfg.k:
            raise ValueError(
                f"the features hold {video.size(2)} video / {query.size(2)} query "
                f"layers but the model uses k={cfg.k}"
            )
        shared = video.size(0) != query.size(0)
        if shared and video.size(0) != 1:
            raise ValueError(f"{video.size(0)} videos for {query.size(0)} queries")
        inv = cfg.padding_invariant
        tef = None  # (1 or B, T, 2)
        if cfg.use_tef:
            tef = endpoint_features(video_mask[: video.size(0)], inv)
        pe = position_encoding(video_mask, cfg.dims, inv)  # (B, T, C), same every step
        h, step_cls, step_query = None, [], []
        for j, i in enumerate(self._layer_order()):
            step = self.steps[i if len(self.steps) > 1 else 0]
            frames, q_in = self._inputs(video, query, i)  # (B, T, P, Dv), (B, L, Dq)
            v_cls, o, q = self._map_pool(step, frames, tef, q_in, query_mask, inv or shared)
            step_cls.append(v_cls)
            step_query.append(q)
            e = v_cls + o * self.scale[i].tanh()
            if j > 0:
                g = self.gate[i if cfg.direction == "reversed" else i - 1].sigmoid()
                e = g * e + (1 - g) * h
            h = step.temporal(e, q, pe, video_mask, query_mask)
        return BlockOutput(hidden=h, query=q, step_cls=step_cls, step_query=step_query)

    def _map_pool(
        self,
        step: R2Step,
        frames: Tensor,
        tef: Tensor | None,
        q_in: Tensor,
        query_mask: Tensor,
        mask_max: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`video_map` of frames (B, T, [K,] P, Dv), `query_map` of q_in (B, L, Dq), then the
        query-modulated pooling: v_cls (B, T, C), o (B, T, C) and the mapped query (B, L, C).

        Mapping and pooling are per frame, so without autograd they run chunk by chunk of
        frames and the (B, T, P, C) mapped tokens never exist at once: memory stays flat in
        T beyond the features. With autograd the whole batch goes at once (backward needs it
        anyway). The video is mapped before the query either way (the original's order of
        dropout draws).
        """
        b, t, p = max(frames.size(0), q_in.size(0)), frames.shape[1], frames.shape[-2]
        n = t if torch.is_grad_enabled() else max(1, INFER_CHUNK_TOKENS // (b * p))
        q = v_cls = o = None  # v_cls, o: (B, T, C), filled chunk by chunk (no parts + cat)
        for s in range(0, t, n):
            x = frames[:, s : s + n]  # (B, n, P, Dv), or (B, n, K, P, Dv) for mean fusion
            x = x.float().mean(2) if x.dim() == 5 else x
            e = None if tef is None else tef[:, s : s + n].reshape(-1, 2)
            u, u_cls = step.map_video(x.flatten(0, 1), e)
            u, u_cls = u.view(x.size(0), x.size(1), p, -1), u_cls.view(x.size(0), x.size(1), -1)
            q = step.query_map(q_in) if q is None else q  # (B, L, C)
            part_cls, part_o = step.pool(
                u, q, query_mask, mask_max, u_cls
            )  # (1|B, n, C), (B, n, C)
            if n >= t:
                return part_cls, part_o, q
            if v_cls is None:
                v_cls = part_cls.new_empty(part_cls.size(0), t, part_cls.size(-1))
                o = part_o.new_empty(b, t, part_o.size(-1))
            v_cls[:, s : s + n], o[:, s : s + n] = part_cls, part_o
        return v_cls, o, q
