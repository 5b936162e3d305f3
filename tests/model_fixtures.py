"""Helpers for the model tests: a tiny config and random samples (not a test module)."""

from __future__ import annotations

import pytest
import torch

from r2.train.batch import Sample, collate
from r2.train.config import R2Config

P_TOKENS = 5  # tokens per frame of the tiny features
K_FEATURES = 4  # layers stored per token
FPS = 0.5
TINY = dict(video_dim=16, query_dim=12, dims=32, heads=4)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model tests on one thread: on a loaded machine every small op
    of a multi-threaded run waits for a second core. Restores the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**changes) -> R2Config:
    """A small model (seconds per test) with the released structure."""
    return R2Config(**{**TINY, **changes})


def sample(
    t: int,
    length: int,
    seed: int,
    cfg: R2Config | None = None,
    k: int = K_FEATURES,
    dtype=torch.float16,
) -> Sample:
    """A random sample with T = t clips, L = length tokens, one or two windows."""
    cfg = cfg or tiny_config()
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(t, k, P_TOKENS, cfg.video_dim, generator=g).to(dtype)
    query = torch.randn(length, k, cfg.query_dim, generator=g).to(dtype)
    start = int(torch.randint(0, max(1, t - 3), (1,), generator=g))
    end = min(t, start + 1 + int(torch.randint(1, 6, (1,), generator=g)))
    boundary = [[start / FPS, end / FPS]]
    if t > 8:
        boundary.append([0.0, 3.0 / FPS])
    saliency = torch.zeros(t)
    saliency[start:end] = torch.rand(end - start, generator=g) * 0.9 + 0.1
    return Sample(
        qid=f"q{seed}",
        vid=f"v{seed}",
        video=video,
        query=query,
        fps=FPS,
        duration=t / FPS,
        boundary=torch.tensor(boundary),
        saliency=saliency,
        pos_clip=start,
    )


def batch_of(lengths: list[tuple[int, int]], cfg: R2Config | None = None, seed: int = 0, **kw):
    """A collated batch of samples with the given (T, L) sizes."""
    return collate([sample(t, n, seed + i, cfg, **kw) for i, (t, n) in enumerate(lengths)])


def perturbed(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Add noise to every parameter so that zero-initialised gates and scales are live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model
