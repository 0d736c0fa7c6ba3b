"""Training throughput of each recipe relative to one-step teacher forcing.

    python benchmarks/bench_recipes.py [--model unet] [--steps 3] [--repeats 3] [--threads N] [--out FILE]

The quick-profile model (default UNet, 32x32, CE: 4 channels, batch 48, AdamW) takes full
optimizer steps (recipe loss + backward + AdamW) through `pdeinf.training.recipes` on the same
synthetic trajectories (17 snapshots, so pushforward / multistep have states to unroll), the
recipes interleaved round by round in one process so they see the same machine load. Prints the
median wall and process-CPU time per step and the ratio to one-step. Expected costs: pushforward
1 + k forward passes (k without gradient), multistep k forward and backward passes, augment
the group actions, physics one FFT divergence or two spatial means, noise one randn per batch.
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
from pdeinf.models import build
from pdeinf.training.loss import smse
from pdeinf.training.recipes import RECIPES, StepBatch, make_recipe
from pdeinf.training.train import Transitions

SETTINGS = {"pushforward": {"k": 1}, "multistep": {"k": 2}}


def step_timer(recipe_name: str, model_name: str, pde: str, data: Transitions, batch: int,
               size: str):
    torch.manual_seed(0)
    channels = PDE_CHANNELS[pde]
    model = build(model_name, channels=channels, resolution=data.resolution, size=size)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    recipe = make_recipe(recipe_name, **SETTINGS.get(recipe_name, {}))
    recipe.prepare(data, pde)
    gen = torch.Generator().manual_seed(1)
    counter = {"step": 0}

    def run(steps: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) per optimizer step."""
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            idx = torch.randperm(len(data), generator=gen)[:batch]
            b = StepBatch(data=data, index=idx, global_index=idx, positions=torch.arange(batch),
                          net=model, model=model, loss_fn=smse, device=torch.device("cpu"),
                          seed=0, epoch=1, step=counter["step"])
            counter["step"] += 1
            loss = recipe.per_example_loss(b).sum() / batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    run(1)  # warm-up
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", choices=["unet", "vit"])
    parser.add_argument("--pde", default="CE", choices=["CE", "NS"])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per timing round")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_recipes.md")))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    profile = get_profile("quick")
    res, batch, channels = profile.resolution, profile.batch_size, PDE_CHANNELS[args.pde]
    g = torch.Generator().manual_seed(0)
    # positive, smooth-ish states (a density channel with a nonzero mean for physics)
    traj = 1.0 + 0.1 * torch.randn(6, profile.t_max, channels, res, res, generator=g)
    data = Transitions(traj, torch.arange(6) % 3)
    timers = {name: step_timer(name, args.model, args.pde, data, batch, profile.model_size)
              for name in RECIPES}
    samples = {name: [] for name in timers}
    for _ in range(args.repeats):
        for name, run in timers.items():
            samples[name].append(run(args.steps))
    base = statistics.median(w for w, _ in samples["one-step"])
    base_cpu = statistics.median(c for _, c in samples["one-step"])
    lines = [
        "# Training throughput per recipe",
        "",
        f"Command: `python benchmarks/bench_recipes.py --model {args.model} --pde {args.pde} "
        f"--steps {args.steps} --repeats {args.repeats}"
        + (f" --threads {args.threads}`" if args.threads else "`"),
        (f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads; float32, {args.model} quick size at {res}x{res}, "
         f"{args.pde} ({channels} channels), batch {batch}; median of {args.repeats} rounds of "
         f"{args.steps} AdamW steps, recipes interleaved; settings {SETTINGS} (others default). "
         f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
         f"({os.cpu_count()} CPUs); the machine is shared, ratios move less than absolute times."),
        "",
        "| recipe | median step, wall (s) | median step, CPU (s) | wall / one-step | CPU / one-step |",
        "|---|---|---|---|---|",
    ]
    for name, s in samples.items():
        wall = statistics.median(w for w, _ in s)
        cpu = statistics.median(c for _, c in s)
        lines.append(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / base:.2f} | {cpu / base_cpu:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
