"""Cost of `CoherenceMonitor` in a training loop, side by side with the same loop without it.

Rivals, in one process, each a loop of `--steps` AdamW steps of the smoke UNet on an NS-like
batch ([B, 2, 16, 16]): no monitor; a monitor with `every` = 1, 10 and 100 on a probe of
3 classes x `--times` transitions. Each round runs every rival once (in a shuffled order, so
slow drifts of the machine's load hit all alike); printed: the median seconds per loop over
`--rounds` rounds, the ratio to the loop without a monitor, and the median seconds of one
record as the monitor measures it (the hat matrix alone, without its effect on the loop).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_monitor.py --steps 100 --rounds 3
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from pdeinf.influence import CoherenceMonitor
from pdeinf.training.loss import smse


def make_setup(batch: int, times: int, seed: int = 0):
    """(model, batch inputs, batch targets, probe inputs, probe targets)."""
    from pdeinf.models import build

    torch.manual_seed(seed)
    model = build("unet", channels=2, resolution=16, size="smoke")
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 2, 16, 16, generator=g)
    y = x + 0.1 * torch.randn(batch, 2, 16, 16, generator=g)
    px = torch.randn(3 * times, 2, 16, 16, generator=g)
    py = px + 0.1 * torch.randn(3 * times, 2, 16, 16, generator=g)
    return model, x, y, px, py


def run_loop(model, x, y, steps: int, monitor) -> float:
    """Seconds of `steps` optimizer steps, calling `monitor(model, step)` after each."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        smse(model(x), y).mean().backward()
        optimizer.step()
        if monitor is not None:
            monitor(model, step)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--times", type=int, default=4, help="probe transitions per class")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y, px, py = make_setup(args.batch, args.times)
    print(f"smoke UNet, P = {sum(p.numel() for p in model.parameters())}, batch {args.batch}, "
          f"probe N = {px.shape[0]}, {args.steps} steps, {args.rounds} rounds, {args.threads} thread(s)")
    rivals = {"no monitor": None, "every=1": 1, "every=10": 10, "every=100": 100}
    seconds = {name: [] for name in rivals}
    record_seconds = {name: [] for name in rivals}
    order = list(rivals)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            every = rivals[name]
            monitor = None if every is None else CoherenceMonitor(px, py, every=every, pde="NS")
            seconds[name].append(run_loop(model, x, y, args.steps, monitor))
            if monitor is not None:
                record_seconds[name] += [r["seconds"] for r in monitor.history]
    base = statistics.median(seconds["no monitor"])
    print(f"{'rival':<12} {'median s':>10} {'ratio':>8} {'s/record':>9}")
    for name in rivals:
        med = statistics.median(seconds[name])
        per = f"{statistics.median(record_seconds[name]):.4f}" if record_seconds[name] else "-"
        print(f"{name:<12} {med:>10.3f} {med / base:>8.2f} {per:>9}")


if __name__ == "__main__":
    main()
