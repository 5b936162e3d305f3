"""Time one full R² training step (forward, backward, AdamW) on QVHighlights-shaped data.

B = 32 samples, T = 75 clips, L = 20 query tokens, ViT-B/32 feature sizes (P = 50 tokens
per frame, Dv = 768, Dq = 512), K = 4 layers, features float16 as stored in the cache,
float32 compute, 2 threads, train mode (dropout on). Prints seconds per step and the
process's peak resident memory. The machine may be shared: besides wall time the script
prints the CPU time per thread (process CPU time / threads), which is far less sensitive
to other processes, and the load average.

For scale: the original implementation takes about 22 s per such step with a peak of
about 10 GB resident on the project machines.

    python benchmarks/train.py [--steps 3] [--threads 2] [--batch 32] [--original]

`--original` computes the R² block literally as the original does (same weights and
results, see benchmarks/original_block.py) to compare both under the same machine load.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from functools import partial

import torch

from r2.train import fused
from r2.train.batch import Sample, collate
from r2.train.config import R2Config
from r2.train.model import R2Model

T_CLIPS, L_TOKENS, P_TOKENS, K_LAYERS, DV, DQ, FPS = 75, 20, 50, 4, 768, 512, 0.5


def make_batch(batch_size: int, seed: int = 0):
    """A random QVHighlights-shaped batch (full-length videos, one GT window each)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(batch_size):
        video = torch.randn(T_CLIPS, K_LAYERS, P_TOKENS, DV, generator=g).half()
        query = torch.randn(L_TOKENS, K_LAYERS, DQ, generator=g).half()
        start = float(torch.randint(0, T_CLIPS - 10, (1,), generator=g)) / FPS
        saliency = torch.zeros(T_CLIPS)
        saliency[int(start * FPS) : int(start * FPS) + 5] = torch.rand(5, generator=g) + 0.1
        samples.append(
            Sample(
                qid=str(i),
                vid=f"v{i}",
                video=video,
                query=query,
                fps=FPS,
                duration=T_CLIPS / FPS,
                boundary=torch.tensor([[start, start + 10.0]]),
                saliency=saliency,
                pos_clip=int(start * FPS) + 2,
            )
        )
    return collate(samples)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--original",
        action="store_true",
        help="run the R² block the way the original computes it (A/B baseline)",
    )
    ap.add_argument("--chunk", type=int, default=None, help="tokens per chunk (tuning)")
    args = ap.parse_args()
    if args.chunk:
        fused.CHUNK_TOKENS = args.chunk
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = make_batch(args.batch)
    print(
        f"batch ready: video {tuple(batch.video.shape)} {batch.video.dtype}, "
        f"peak RSS so far {peak_rss_mb():.0f} MB"
    )
    model = R2Model(R2Config()).train()
    if args.original:
        from original_block import original_block_forward

        model.block.forward = partial(original_block_forward, model.block)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    times = []
    for step in range(args.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        out = model(batch)
        loss = sum(model.losses(out, batch).values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()
        dt, cpu = time.perf_counter() - t0, (time.process_time() - c0) / args.threads
        times.append((dt, cpu))
        print(
            f"step {step}{' (warm-up)' if step == 0 else ''}: {dt:.2f} s wall, "
            f"{cpu:.2f} s CPU/thread, loss {loss.item():.4f}"
        )
    timed = times[1:] or times
    wall, cpu = (sum(t[i] for t in timed) / len(timed) for i in (0, 1))
    print(
        f"{'original-style' if args.original else 'r2'} "
        f"threads={args.threads} B={args.batch} T={T_CLIPS} L={L_TOKENS} K={K_LAYERS}: "
        f"{wall:.2f} s/step wall (min {min(t[0] for t in timed):.2f}), "
        f"{cpu:.2f} s/step CPU per thread, peak RSS {peak_rss_mb():.0f} MB, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
