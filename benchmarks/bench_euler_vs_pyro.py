"""Our batched Euler solver against pyro-hydro on the four-quadrant Riemann problem.

Problem: Lax & Liu (1998) configuration 3 (pyro's `quad` defaults), corner at (0.5, 0.5),
periodic unit square, gamma = 1.4, 64 x 64 cells, t = 0.25, float64. pyro-hydro runs its
`compressible` solver (unsplit CTU, HLLC, its default CFL 0.8) one trajectory at a time;
ours runs `--batch` trajectories in one `solve` call (MUSCL-MC + HLLC + SSP-RK3, CFL 0.4).
Both in this one process, `--threads` torch threads (pyro's numba kernels are single-threaded).

Prints wall time per trajectory (median over `--repeats`), the throughput ratio, and L1
density distances at t = 0.25: ours vs pyro, and both vs ours at 256 x 256 block-averaged
to 64 x 64 (for scale). `--write` stores the table in benchmarks/results_euler.md.

    python benchmarks/bench_euler_vs_pyro.py --repeats 3 --write
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pdeinf.solvers import euler
from pdeinf.solvers.euler import conserved_to_primitive, primitive_to_conserved, solve

GAMMA, T_END = 1.4, 0.25
# pyro's quad.py defaults (quadrants 1..4 = NE, NW, SW, SE) as (rho, vx, vy, p)
QUADRANTS = {
    1: (1.5, 0.0, 0.0, 1.5),
    2: (0.532258064516129, 1.206045378311055, 0.0, 0.3),
    3: (0.137992831541219, 1.206045378311055, 1.206045378311055, 0.029032258064516),
    4: (0.532258064516129, 0.0, 1.206045378311055, 0.3),
}


def our_initial_state(n: int) -> torch.Tensor:
    """`[1, 4, n, n]` conserved, x along the last axis."""
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x, y = centres[None, :].expand(n, n), centres[:, None].expand(n, n)
    east, north = x >= 0.5, y >= 0.5
    fields = []
    for i in range(4):
        q = {k: v[i] for k, v in QUADRANTS.items()}
        fields.append(torch.where(north, torch.where(east, q[1], q[2]), torch.where(east, q[4], q[3])))
    return primitive_to_conserved(*fields, gamma=GAMMA)[None]


def run_pyro(n: int) -> tuple[float, np.ndarray, int]:
    """One pyro-hydro run; returns (seconds, density [n (y), n (x)], steps)."""
    from pyro import Pyro

    params = {
        "mesh.nx": n, "mesh.ny": n, "mesh.xmax": 1.0, "mesh.ymax": 1.0,
        "driver.tmax": T_END, "driver.max_steps": 10**7, "eos.gamma": GAMMA,
        "quadrant.cx": 0.5, "quadrant.cy": 0.5,
    }
    for edge in ("xlboundary", "xrboundary", "ylboundary", "yrboundary"):
        params[f"mesh.{edge}"] = "periodic"
    for k, (rho, vx, vy, p) in QUADRANTS.items():
        params.update({f"quadrant.rho{k}": rho, f"quadrant.u{k}": vx, f"quadrant.v{k}": vy, f"quadrant.p{k}": p})
    sim = Pyro("compressible")
    sim.initialize_problem("quad", inputs_dict=params)
    start = time.perf_counter()
    sim.run_sim()
    seconds = time.perf_counter() - start
    assert abs(sim.sim.cc_data.t - T_END) < 1e-12, sim.sim.cc_data.t
    density = np.array(sim.get_var("density").v(), dtype=np.float64).T  # pyro is [x, y]
    return seconds, density, sim.sim.n


def run_ours(n: int, batch: int) -> tuple[float, np.ndarray, int]:
    """One batched call; returns (seconds, density of member 0 [n (y), n (x)], steps)."""
    u0 = our_initial_state(n).repeat(batch, 1, 1, 1)
    steps = 0
    step = euler._ssp_rk3_step

    def counted_step(*args):  # count time steps without touching the solver
        nonlocal steps
        steps += 1
        return step(*args)

    euler._ssp_rk3_step = counted_step
    try:
        start = time.perf_counter()
        out = solve(u0, [0.0, T_END], gamma=GAMMA, progress=False)
        seconds = time.perf_counter() - start
    finally:
        euler._ssp_rk3_step = step
    rho = conserved_to_primitive(out[:, -1], GAMMA)[0]
    assert torch.allclose(rho, rho[:1].expand_as(rho), rtol=0, atol=1e-12)  # batch members agree
    return seconds, rho[0].numpy(), steps


def block_average(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ref-n", type=int, default=256, help="our reference grid (0 to skip)")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results_euler.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:  # pyro writes inputs.auto into the cwd
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            run_pyro(args.n)  # numba compilation, not timed
            pyro_runs = [run_pyro(args.n) for _ in range(args.repeats)]
        finally:
            os.chdir(cwd)
    run_ours(args.n, 1)  # warm-up
    our_runs = [run_ours(args.n, args.batch) for _ in range(args.repeats)]

    pyro_s = statistics.median(r[0] for r in pyro_runs)
    ours_s = statistics.median(r[0] for r in our_runs) / args.batch
    rho_pyro, rho_ours = pyro_runs[0][1], our_runs[0][1]
    lines = [
        (f"four-quadrant (Lax-Liu 3), periodic, {args.n}x{args.n}, t = {T_END}, float64, "
         f"torch threads = {args.threads}, median of {args.repeats}"),
        "",
        "| solver | wall s / trajectory | trajectories / s | steps |",
        "|---|---|---|---|",
        f"| pyro-hydro {_pyro_version()} compressible (1 per run) | {pyro_s:.4f} | {1 / pyro_s:.2f} | {pyro_runs[0][2]} |",
        f"| pdeinf euler (batch {args.batch} per call) | {ours_s:.4f} | {1 / ours_s:.2f} | {our_runs[0][2]} (x 3 RK stages) |",
        "",
        f"throughput ratio ours / pyro: **{pyro_s / ours_s:.1f}x**",
        "",
        "| L1 density distance at t = 0.25 (mean over cells) | value |",
        "|---|---|",
        f"| ours 64 vs pyro 64 | {np.abs(rho_ours - rho_pyro).mean():.4e} |",
    ]
    if args.ref_n:
        start = time.perf_counter()
        _, rho_ref, _ = run_ours(args.ref_n, 1)
        ref_s = time.perf_counter() - start
        ref = block_average(rho_ref, args.ref_n // args.n)
        lines += [
            f"| ours 64 vs ours {args.ref_n} (block-averaged) | {np.abs(rho_ours - ref).mean():.4e} |",
            f"| pyro 64 vs ours {args.ref_n} (block-averaged) | {np.abs(rho_pyro - ref).mean():.4e} |",
            "",
            f"(ours at {args.ref_n}x{args.ref_n}: {ref_s:.1f} s for one trajectory)",
        ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = "python benchmarks/bench_euler_vs_pyro.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        text = (
            "# Euler solver vs pyro-hydro\n\n"
            f"Command: `{command}`\n\n"
            f"Machine: {os.cpu_count()} CPU cores, shared with other jobs while this ran "
            f"(load average {os.getloadavg()[0]:.1f}), so absolute times are noisy; both solvers ran "
            "one after the other in this one process.\n\n" + table + "\n"
        )
        target = Path(__file__).with_name("results_euler.md")
        tmp = target.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return table


def _pyro_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyro-hydro")
    except Exception:  # noqa: BLE001 - version string is cosmetic
        return ""


if __name__ == "__main__":
    main()
