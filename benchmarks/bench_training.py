"""Training throughput of the surrogates (transitions per second) and parameter counts.

    python benchmarks/bench_training.py [--steps 5] [--repeats 3] [--threads N] [--out FILE]

For each model at the quick profile (32x32, batch 48, AdamW, SMSE; CE has 4 channels, NS 2),
both variants (`authors`, the default, and `pdeinf`, residual as it was trained), times full
optimizer steps (forward + backward + AdamW), interleaving the models round by round in one
process so that they see the same machine load; prints medians, the UNet/ViT ratio and the
authors/pdeinf ratio per model,
the estimated time of one quick training run (epochs x transitions per epoch), and the parameter
counts of all sizes. Writes the tables to a markdown file. Process CPU time per step is
reported beside wall time: on a shared machine it tracks the compute cost better than wall time
(with --threads 1 it is the single-core cost; `est. quick run` = CPU per step x steps of one run).
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

from pdeinf.config import PDE_CHANNELS, get_profile
from pdeinf.models import build, count_parameters
from pdeinf.training.loss import smse

RESOLUTION = {"smoke": 16, "quick": 32, "paper": 128}


# label -> (model name, build options)
MODELS = {
    "unet": ("unet", {"variant": "authors"}),
    "vit": ("vit", {"variant": "authors"}),
    "unet pdeinf": ("unet", {"variant": "pdeinf", "residual": True}),
    "vit pdeinf": ("vit", {"variant": "pdeinf", "residual": True}),
}


def step_timer(label: str, channels: int, resolution: int, size: str, batch: int):
    torch.manual_seed(0)
    name, options = MODELS[label]
    model = build(name, channels=channels, resolution=resolution, size=size, **options)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    x = torch.randn(batch, channels, resolution, resolution)
    y = x + 0.1 * torch.randn_like(x)

    def run(steps: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) per optimizer step."""
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = smse(model(x), y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    run(2)  # warm-up
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timing round")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_training.md")))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    profile = get_profile("quick")
    batch = profile.batch_size
    rows = []
    for pde in ("CE", "NS"):
        timers = {m: step_timer(m, PDE_CHANNELS[pde], profile.resolution, profile.model_size, batch)
                  for m in MODELS}
        samples = {m: [] for m in timers}
        for _ in range(args.repeats):
            for m, run in timers.items():
                samples[m].append(run(args.steps))
        # transitions per epoch: 3 classes x round(0.65 n) trajectories x 16 transitions
        per_epoch = 3 * round(profile.split[0] * profile.n_trajectories) * (profile.t_max - 1)
        for m, s in samples.items():
            med = statistics.median(w for w, _ in s)
            cpu = statistics.median(c for _, c in s)
            rows.append((pde, m, med, cpu, batch / med, per_epoch * profile.epochs[pde] * cpu / batch))
        ratio = statistics.median(w for w, _ in samples["unet"]) / statistics.median(
            w for w, _ in samples["vit"])
        rows.append((pde, "unet/vit step-time ratio", ratio, None, None, None))
        for m in ("unet", "vit"):
            ratio = statistics.median(w for w, _ in samples[m]) / statistics.median(
                w for w, _ in samples[f"{m} pdeinf"])
            rows.append((pde, f"{m} authors/pdeinf step-time ratio", ratio, None, None, None))

    lines = [
        "# Training throughput and model sizes",
        "",
        f"Command: `python benchmarks/bench_training.py --steps {args.steps} --repeats {args.repeats}"
        + (f" --threads {args.threads}`" if args.threads else "`"),
        (f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; float32, batch {batch}, quick sizes at "
        f"{profile.resolution}x{profile.resolution}; median of {args.repeats} rounds of "
        f"{args.steps} AdamW steps, models interleaved. The machine is shared: absolute numbers "
        "move with its load, the ratio less so. "
        f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs)."),
        "",
        ("| PDE | model | median step, wall (s) | median step, CPU (s) | transitions / s (wall) "
        "| est. quick run, CPU (s) |"),
        "|---|---|---|---|---|---|",
    ]
    for pde, m, med, cpu, tps, run_s in rows:
        if tps is None:
            lines.append(f"| {pde} | {m} | {med:.2f} | | | |")
        else:
            lines.append(f"| {pde} | {m} | {med:.4f} | {cpu:.4f} | {tps:.0f} | {run_s:.0f} |")
    lines += ["", "Parameter counts (CE: 4 channels, NS: 2 channels):", "",
              "| variant | size | resolution | UNet CE | UNet NS | ViT CE | ViT NS |",
              "|---|---|---|---|---|---|---|"]
    for variant in ("authors", "pdeinf"):
        for size, res in RESOLUTION.items():
            counts = [count_parameters(build(m, channels=PDE_CHANNELS[p], resolution=res, size=size,
                                             variant=variant))
                      for m in ("unet", "vit") for p in ("CE", "NS")]
            lines.append(f"| {variant} | {size} | {res} | "
                         + " | ".join(f"{c:,}" for c in counts) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
