"""Look-alike data generation throughput: trajectories per second for each of the six data sets.

Runs `pdeinf.data.generate.generate` in this one process, for every data set, at the stored
resolution R with the solver at R (factor 1) and at the default 2R (factor 2), `batch_size`
trajectories per solver call, 21 snapshots on t in [0, 1]. Prints a table (median of
`--repeats` runs, and the 2R/R slowdown) and writes it to benchmarks/results_generation.md
with the command that produced it.

    python benchmarks/bench_generation.py --n-trajectories 4 --batch-size 4 --resolution 64
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pdeinf.config import DATASETS
from pdeinf.data.generate import generate


def measure(dataset: str, n: int, resolution: int, factor: int, batch_size: int, dtype, device) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(dataset, n, resolution, tmp, seed=0, solver_resolution=factor * resolution,
                 batch_size=batch_size, dtype=dtype, device=device, progress=False)
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trajectories", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_generation.md")))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    rows = []
    for dataset in args.datasets:
        seconds = {}
        for factor in args.factors:
            runs = [measure(dataset, args.n_trajectories, args.resolution, factor, args.batch_size, dtype, args.device)
                    for _ in range(args.repeats)]
            seconds[factor] = statistics.median(runs)
            print(f"{dataset:9s} solver {factor * args.resolution:4d}: {seconds[factor]:8.2f} s "
                  f"({args.n_trajectories / seconds[factor]:.3f} traj/s)", flush=True)
        rows.append((dataset, seconds))

    header = "| data set | " + " | ".join(
        f"solver {f * args.resolution}^2: s / traj/s" for f in args.factors
    ) + (" | slowdown 2R vs R |" if {1, 2} <= set(args.factors) else " |")
    lines = [header, "|" + "---|" * (len(args.factors) + 1 + ({1, 2} <= set(args.factors)))]
    for dataset, seconds in rows:
        cells = [f"{seconds[f]:.2f} / {args.n_trajectories / seconds[f]:.3f}" for f in args.factors]
        if {1, 2} <= set(args.factors):
            cells.append(f"{seconds[2] / seconds[1]:.1f}x")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)

    command = "python benchmarks/bench_generation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    threads = torch.get_num_threads()
    text = (
        "# Look-alike data generation throughput\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(shared with other jobs while measured), torch {torch.__version__} ({threads} threads), "
        f"device {args.device}, dtype {args.dtype}.\n"
        f"{args.n_trajectories} trajectories per data set, batch size {args.batch_size}, stored "
        f"{args.resolution}^2, 21 snapshots on t in [0, 1]; median of {args.repeats} run(s); "
        "wall time includes initial-condition sampling (NS-BB: its pre-evolution from t = -0.5), "
        "block averaging and writing the netCDF file.\n\n"
        f"{table}\n"
    )
    out = Path(args.out)
    temporary = out.with_name(f".{out.name}.partial")
    temporary.write_text(text)
    os.replace(temporary, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
