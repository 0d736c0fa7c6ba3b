"""One follow-up sweep task (`labelled_influence`: every variant of one batch) with the JVPs of
the basis vectors against the JVPs of the gradient rows, side by side, on trained checkpoints.

    python benchmarks/bench_basis_jvps.py [--pairs CE-unet NS-vit] [--epochs 1 15] [--repeats 3]

Needs the quick profile's checkpoints and data (`make reproduce` first; `PDEINF_HOME` picks the
tree). Rivals, in one process, interleaved per repeat:
- `rows`: the previous route: the ket metric pushes (and keeps) the N gradient rows and every
  joint bra pushes its own Nb rows (`keep_ket_jvps=True`, no folding);
- `basis`: the present one (`metric_pass` folds each pass into its r basis vectors when fewer;
  the engine keeps the ket JVPs only near full rank, r > 3N/4).
The metric passes' JVPs are the cost of a task, and a trained checkpoint's gradients have
r well below N (energy cut 1e-4). Printed per (pair, epoch): the ket rank, the (direction,
example) JVP pairs of each rival, median seconds, and the ratio rows / basis; also the largest
relative difference of the matrices (two exact routes: rounding only).
"""
from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np
import torch

from pdeinf.config import get_profile
from pdeinf.influence import gradients as grad_mod
from pdeinf.influence import hat as hat_mod
from pdeinf.influence.task import labelled_influence
from pdeinf.pipeline.influence import FileSources


def run_task(model, ckpt, batch, prof, pde, rows: bool):
    """(dataset, JVP (direction, example) pairs, seconds) of one sweep task."""
    count = [0]
    real = grad_mod.output_jvps

    def counting(model, inputs, tangents, **kw):
        count[0] += tangents.shape[0] * inputs.shape[0]
        return real(model, inputs, tangents, **kw)

    patches = [mock.patch.object(grad_mod, "output_jvps", counting)]
    if rows:
        patches += [mock.patch.object(hat_mod, "_fewest_directions", lambda blocks, rank, keep: blocks),
                    mock.patch.object(hat_mod.HatEngine, "_keep_ket_jvps",
                                      lambda self: self._ket_jvps is None)]
    for p in patches:
        p.start()
    try:
        t0 = time.perf_counter()
        ds = labelled_influence(model, ckpt.get("optimizer_state"), batch.inputs, batch.targets,
                                pde=pde, damping=prof.damping, energy_tol=prof.energy_tol)
        return ds, count[0], time.perf_counter() - t0
    finally:
        for p in patches:
            p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["CE-unet", "CE-vit", "NS-unet", "NS-vit"])
    ap.add_argument("--epochs", nargs="+", type=int, default=[1, 15])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prof = get_profile("quick")
    print(f"quick checkpoints, seed {prof.seeds[0]}, influence batch 0, {args.threads} thread(s), "
          f"{args.repeats} repeats")
    print(f"{'pair':8s} {'epoch':>5s} {'r/N':>6s} {'JVPs rows':>10s} {'JVPs basis':>10s} "
          f"{'s rows':>7s} {'s basis':>7s} {'ratio':>6s} {'max rel diff':>12s}")
    for pair in args.pairs:
        pde, model_name = pair.split("-")
        src = FileSources(prof, pde, model_name)
        batch = src.batch(prof.seeds[0], 0)
        for epoch in args.epochs:
            model, ckpt = src.model(prof.seeds[0], epoch)
            model.eval()
            times, last = {True: [], False: []}, {}
            for _ in range(args.repeats):
                for rows, record in times.items():
                    ds, jvps, seconds = run_task(model, ckpt, batch, prof, pde, rows)
                    record.append(seconds)
                    last[rows] = (ds, jvps)
            (ds_rows, n_rows), (ds_basis, n_basis) = last[True], last[False]
            a, b = ds_rows["pi"].values, ds_basis["pi"].values
            diff = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
            t_rows, t_basis = statistics.median(times[True]), statistics.median(times[False])
            print(f"{pair:8s} {epoch:5d} {int(ds_basis['rank'])}/{batch.inputs.shape[0]:<3d} "
                  f"{n_rows:10d} {n_basis:10d} {t_rows:7.2f} {t_basis:7.2f} "
                  f"{t_rows / t_basis:6.2f} {diff:12.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
