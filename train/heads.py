"""Temporal pyramid, prediction heads, query pooling and the point table (spec §2.5–2.8)."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DownStage(nn.Module):
    """Conv1d(C, C, kernel 2, stride 2) → LayerNorm → ReLU on (B, T, C) -> (B, ⌊T/2⌋, C)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dims, dims, 2, stride=2)
        self.norm = nn.LayerNorm(dims)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2)))


class ConvPyramid(nn.Module):
    """Levels of strides 1, 2, 4, …: stride 1 = ReLU(h); stride 2^m = m down stages."""

    def __init__(self, dims: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.levels = nn.ModuleList(
            nn.ModuleList(DownStage(dims) for _ in range(int(math.log2(s)))) for s in self.strides
        )

    def forward(
        self, h: Tensor, mask: Tensor, inplace_relu: bool = True, padding_invariant: bool = False
    ) -> tuple[list[Tensor], list[Tensor]]:
        """h (B, T, C) decoder output, mask (B, T) bool.

        Returns:
            levels: (B, T_j, C) per built level (levels with stride > T are skipped);
                level 0 is ReLU(h), the tensor the saliency uses.
            masks: (B, T_j) bool valid points. Original: a point is valid if any of its
                clips is (max-pool of the mask). Padding-invariant: only points that also
                exist when the sample is alone, i.e. index < ⌊T_b / stride⌋.
        """
        relu_h = torch.relu(h)
        src = relu_h if inplace_relu else h  # the original ReLUs h in place: all see ReLU(h)
        lengths = mask.sum(1)
        levels, masks = [], []
        for s, stages in zip(self.strides, self.levels, strict=True):
            if h.size(1) < s:
                continue
            x = relu_h if s == 1 else src
            for stage in stages:
                x = stage(x)
            levels.append(x)
            if padding_invariant:
                m = torch.arange(x.size(1), device=h.device)[None] < (lengths // s)[:, None]
            else:
                m = F.max_pool1d(mask[:, None].float(), s, stride=s)[:, 0] > 0
            masks.append(m)
        return levels, masks


class ConvHead(nn.Module):
    """Conv1d(C, C, 3, pad 1) → ReLU → Conv1d(C, out, 3, pad 1), shared by all levels."""

    def __init__(self, dims: int, out_dims: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims, dims, 3, padding=1)
        self.conv2 = nn.Conv1d(dims, out_dims, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, out). With `mask` (padding-invariant mode) invalid points
        are zeroed before each conv, as the zero padding a lone sample would see."""
        x = x.transpose(1, 2)
        keep = None if mask is None else mask[:, None].to(x.dtype)
        if keep is not None:
            x = x * keep
        x = torch.relu(self.conv1(x))
        if keep is not None:
            x = x * keep
        return self.conv2(x).transpose(1, 2)


class QueryPool(nn.Module):
    """Attention pooling over query tokens: softmax_L(w·q) with padded tokens masked."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.att = nn.Linear(dims, 1, bias=False)

    def forward(self, q: Tensor, mask: Tensor) -> Tensor:
        """q (B, L, C), mask (B, L) bool -> (B, C)."""
        a = self.att(q) + torch.where(mask.unsqueeze(2), 0.0, float("-inf"))
        a = a.softmax(dim=1)  # (B, L, 1)
        return torch.matmul(q.transpose(1, 2), a).squeeze(2)


def regression_ranges(strides: tuple[int, ...]) -> list[tuple[float, float]]:
    """Distance range (frames) each level regresses: (0, s1), (s1, s2), …, (s_last, ∞)."""
    bounds = [0.0, *[float(s) for s in strides[1:]], float("inf")]
    return list(itertools.pairwise(bounds))


def point_table(sizes: list[int], strides: tuple[int, ...], device=None) -> Tensor:
    """(N, 4) float32 rows (t = index · stride, range low, range high, stride), levels
    concatenated in order, for levels of the given sizes."""
    rows = []
    for size, s, (lo, hi) in zip(sizes, strides, regression_ranges(strides), strict=False):
        t = torch.arange(0, size * s, s, device=device, dtype=torch.float32)[:, None]
        rest = torch.tensor([lo, hi, float(s)], device=device).expand(size, 3)
        rows.append(torch.cat((t, rest), dim=1))
    return torch.cat(rows)
