"""Time full R² training steps (forward, backward, clip, AdamW) against the original's data flow.

QVHighlights-shaped batch: B = 32 samples, T = 75 clips, L = 20 query tokens, ViT-B/32
feature sizes (P = 50 tokens per frame, Dv = 768, Dq = 512), K = 4 layers, features float16
as stored in the cache, train mode (dropout on). In ONE process, per thread count, the
variants run one step each in turn, round after round (so they see the same machine load):

- original: the R² block computed literally as the original does (benchmarks/
  original_block.py: same weights and function, plain torch ops, float32) — the anchor;
- r2 fp32: r2's float32 step (what `r2 train` runs on CPU by default);
- r2 bf16: the same under bfloat16 autocast (`r2 train --amp bf16`).

Prints per variant the median and best wall time per step, CPU time per thread and the
peak resident memory during its steps, then the speed-ups over the anchor; and, before the
timings, what bf16 costs in accuracy: the loss and gradient differences of the same step
(same weights, batch and dropout masks) in bf16 vs fp32, and the fp32 step vs the original
data flow (eval mode: no dropout, so the same function exactly).

    python benchmarks/train.py [--threads 1 2] [--rounds 3] [--batch 32]

Run it alone on the machine (`flock -x /tmp/r2-cpu.lock ...` on shared machines).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import threading
import time
from contextlib import nullcontext
from functools import partial

import torch
from original_block import original_block_forward

from r2.train import fused
from r2.train.batch import Sample, collate
from r2.train.config import R2Config
from r2.train.model import R2Model

T_CLIPS, L_TOKENS, P_TOKENS, K_LAYERS, DV, DQ, FPS = 75, 20, 50, 4, 768, 512, 0.5
VARIANTS = ("original", "r2 fp32", "r2 bf16")
PAGE = os.sysconf("SC_PAGE_SIZE")


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


class PeakRss:
    """Peak resident memory of this process while in the `with` block (sampled every 5 ms)."""

    def __enter__(self):
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def make_variant(name: str, base: R2Model):
    """(model, optimizer, autocast context factory) of one variant; weights copied from base."""
    model = copy.deepcopy(base).train()
    if name == "original":
        model.block.forward = partial(original_block_forward, model.block)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    amp = partial(torch.autocast, "cpu", dtype=torch.bfloat16) if name == "r2 bf16" else nullcontext
    return model, opt, amp


def step(model, opt, amp, batch) -> float:
    """One training step as `r2 train` runs it; returns the loss."""
    opt.zero_grad(set_to_none=True)
    with amp():
        loss = sum(model.losses(model(batch), batch).values())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
    opt.step()
    return loss.item()


def loss_and_grads(model, amp, batch, seed: int) -> tuple[dict, torch.Tensor]:
    """Losses and the flattened gradient of one forward/backward (dropout draws seeded)."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    with amp():
        losses = model.losses(model(batch), batch)
    sum(losses.values()).backward()
    grads = [p.grad.flatten().double() for p in model.parameters() if p.grad is not None]
    values = {k: v.item() for k, v in losses.items()}
    values["total"] = sum(values.values())
    return values, torch.cat(grads)


def compare(name: str, a: tuple[dict, torch.Tensor], b: tuple[dict, torch.Tensor]) -> None:
    (la, ga), (lb, gb) = a, b
    rel = {k: abs(lb[k] - la[k]) / max(abs(la[k]), 1e-12) for k in la}
    cos = torch.nn.functional.cosine_similarity(ga, gb, dim=0).item()
    norm = (gb.norm() / ga.norm()).item()
    worst = max((k for k in rel if k != "total"), key=rel.get)
    print(
        f"  {name}: loss {la['total']:.6f} vs {lb['total']:.6f} (relative difference "
        f"{rel['total']:.2e}; largest term {worst} {rel[worst]:.2e}); gradient cosine "
        f"{cos:.6f}, norm ratio {norm:.5f}"
    )


def accuracy_report(base: R2Model, batch) -> None:
    """bf16 vs fp32 (train mode, same dropout masks) and fp32 vs the original (eval mode)."""
    print("accuracy (one step, same weights and batch):")
    fp32, _, _ = make_variant("r2 fp32", base)
    bf16, _, amp = make_variant("r2 bf16", base)
    ref = loss_and_grads(fp32, nullcontext, batch, 1)
    compare("r2 bf16 vs r2 fp32, train mode (same dropout masks)", ref,
            loss_and_grads(bf16, amp, batch, 1))  # fmt: skip
    orig, _, _ = make_variant("original", base)
    fp32.eval(), bf16.eval(), orig.eval()
    ref = loss_and_grads(orig, nullcontext, batch, 1)
    compare("r2 fp32 vs original, eval mode", ref, loss_and_grads(fp32, nullcontext, batch, 1))
    compare("r2 bf16 vs original, eval mode", ref, loss_and_grads(bf16, amp, batch, 1))


def time_variants(base: R2Model, batch, threads: int, rounds: int) -> dict[str, dict]:
    """Alternate the variants' steps (1 warm-up each); per variant the wall/CPU times, RSS."""
    torch.set_num_threads(threads)
    runs = {name: make_variant(name, base) for name in VARIANTS}
    stats = {name: {"wall": [], "cpu": [], "rss": 0.0} for name in VARIANTS}
    for r in range(rounds + 1):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate: no variant always goes first
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            with PeakRss() as rss:
                loss = step(*runs[name], batch)
            wall, cpu = time.perf_counter() - t0, (time.process_time() - c0) / threads
            print(f"  threads={threads} round {r}{' (warm-up)' if r == 0 else ''} {name}: "
                  f"{wall:.2f} s wall, {cpu:.2f} s CPU/thread, loss {loss:.4f}")  # fmt: skip
            if r > 0:
                s = stats[name]
                s["wall"].append(wall), s["cpu"].append(cpu)
                s["rss"] = max(s["rss"], rss.peak)
    return stats


def report(stats: dict[str, dict], threads: int, batch_size: int) -> None:
    print(f"\nthreads={threads} B={batch_size} T={T_CLIPS} L={L_TOKENS} K={K_LAYERS} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")  # fmt: skip
    anchor = stats["original"]
    for name, s in stats.items():
        wall, cpu = statistics.median(s["wall"]), statistics.median(s["cpu"])
        line = (
            f"  {name:9s} {wall:6.2f} s/step wall (best {min(s['wall']):.2f}), "
            f"{cpu:6.2f} s CPU/thread, peak RSS {s['rss']:,.0f} MB"
        )
        if name != "original":
            line += (
                f"  -> {statistics.median(anchor['wall']) / wall:.2f}x the original "
                f"(CPU time {statistics.median(anchor['cpu']) / cpu:.2f}x)"
            )
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=None, help="tokens per chunk (tuning)")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the accuracy comparison")
    ap.add_argument("--no-timing", action="store_true", help="only the accuracy comparison")
    args = ap.parse_args()
    if args.chunk:
        fused.CHUNK_TOKENS = args.chunk
    torch.manual_seed(0)
    batch = make_batch(args.batch)
    print(f"batch: video {tuple(batch.video.shape)} {batch.video.dtype}, RSS {_rss_mb():.0f} MB")
    base = R2Model(R2Config())
    if not args.no_accuracy:
        torch.set_num_threads(max(args.threads))
        accuracy_report(base, batch)
    if args.no_timing:
        return
    results = {th: time_variants(base, batch, th, args.rounds) for th in args.threads}
    for th, stats in results.items():
        report(stats, th, args.batch)


if __name__ == "__main__":
    main()
