"""Training throughput of the faithful-size surrogates under rival settings, side by side.

    python benchmarks/bench_throughput.py [--steps 4] [--repeats 5] [--out FILE]

One process times full optimizer steps (forward + SMSE + backward + AdamW) of the authors'
UNet and ViT at the `faithful` size (32x32, CE: 4 channels) under each rival setting,
interleaving the rivals round by round so that they see the same machine load:

- `eager, 1 thread` (the baseline: what a pipeline task runs with two workers on 2 cores);
- `channels_last` (NHWC memory format for the model and its batches);
- `torch.compile` (inductor, default mode; its compile time is reported separately);
- `eager, 2 threads`: one process using both cores. Two one-thread workers train two runs at
  once, so the per-core rate that matters is transitions / s / thread;
- `batch 96`: twice the paper's batch (fewer, larger steps; not the paper's optimisation,
  reported for the throughput alone).

Prints per rival the median wall time per step, transitions per second per thread and the
speed-up over the baseline, and writes the table to a markdown file. The machine is shared:
quote the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pdeinf.atomic import write_text
from pdeinf.config import PDE_CHANNELS
from pdeinf.models import build
from pdeinf.training.loss import smse

RESOLUTION = 32
BATCH = 48
# rival -> (threads, batch, memory format, compiled)
RIVALS = {
    "eager, 1 thread": (1, BATCH, torch.contiguous_format, False),
    "channels_last, 1 thread": (1, BATCH, torch.channels_last, False),
    "torch.compile, 1 thread": (1, BATCH, torch.contiguous_format, True),
    "eager, 2 threads": (2, BATCH, torch.contiguous_format, False),
    "eager, batch 96, 1 thread": (1, 2 * BATCH, torch.contiguous_format, False),
}


def step_timer(model_name: str, threads: int, batch: int, memory_format, compiled: bool):
    """A function `run(steps) -> wall seconds per step` and the compile time (0 in eager)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    channels = PDE_CHANNELS["CE"]
    model = build(model_name, channels=channels, resolution=RESOLUTION, size="faithful")
    model = model.to(memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    x = torch.randn(batch, channels, RESOLUTION, RESOLUTION).contiguous(memory_format=memory_format)
    y = (x + 0.1 * torch.randn_like(x)).contiguous(memory_format=memory_format)
    forward = torch.compile(model) if compiled else model

    def one_step():
        loss = smse(forward(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    one_step()  # compiles when compiled
    compile_s = time.perf_counter() - t0 if compiled else 0.0
    one_step()

    def run(steps: int) -> float:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        for _ in range(steps):
            one_step()
        return (time.perf_counter() - t0) / steps

    return run, compile_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timing round")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (median reported)")
    parser.add_argument("--models", nargs="+", default=["unet", "vit"])
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_throughput.md")))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    lines = [
        "# Training throughput at the faithful size: rival settings",
        "",
        (f"Command: `python benchmarks/bench_throughput.py --steps {args.steps} "
         f"--repeats {args.repeats}`"),
        "",
        (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
         f"{torch.__version__}; float32, CE (4 channels) at {RESOLUTION}x{RESOLUTION}, authors' "
         f"models at the faithful size; median of {args.repeats} rounds of {args.steps} AdamW "
         "steps, rivals interleaved round by round. Per-thread throughput is the rate that counts "
         "when two one-thread workers train two runs at once."),
        "",
        ("| model | rival | median step (s) | transitions / s / thread | speed-up per thread "
         "| compile (s) |"),
        "|---|---|---|---|---|---|",
    ]
    for model_name in args.models:
        timers = {}
        for rival, (threads, batch, fmt, compiled) in RIVALS.items():
            try:
                timers[rival] = (*step_timer(model_name, threads, batch, fmt, compiled), threads,
                                 batch)
            except Exception as err:  # noqa: BLE001 - a rival that cannot run here is reported, not fatal
                print(f"{model_name} {rival}: skipped ({type(err).__name__}: {err})".splitlines()[0])
        samples = {rival: [] for rival in timers}
        for _ in range(args.repeats):
            for rival, (run, *_rest) in timers.items():
                samples[rival].append(run(args.steps))
        base = None
        for rival, (_run, compile_s, threads, batch) in timers.items():
            med = statistics.median(samples[rival])
            per_thread = batch / med / threads
            base = base or per_thread
            lines.append(f"| {model_name} | {rival} | {med:.4f} | {per_thread:.0f} | "
                         f"{per_thread / base:.2f}x | {compile_s:.1f} |")
    lines += ["", f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
