"""Full-space (seed paper) estimator: the block Krylov solver against a one-RHS-at-a-time CG loop and
the subspace engine, side by side in one process.

Rivals, each timed from the batch to the N x N matrix at the paper's tolerances:
- block: `pdeinf.influence.fullspace.full_space_hat_matrix` (default solver: one block Krylov
  space shared by the N right-hand sides, `pdeinf.influence.block_krylov`);
- plain: the structure of the authors' code, one right-hand side at a time, one whole-batch
  JVP + one VJP per CG iteration (same kets, damping and rtol). At the paper's tolerances it
  needs hundreds of iterations per column, so `--plain-columns K` runs it on K evenly spaced
  right-hand sides and scales its time by N / K (the columns' solves are independent, so the
  loop's time is their sum); K = N runs it whole;
- subspace: `pdeinf.influence.hat.hat_matrix` (the follow-up's exact subspace estimator).

Models: `--trained` takes the quick profile's final CE checkpoints (seed 10) and their first
influence batch (`make reproduce` first; `PDEINF_HOME` picks the tree); without it, random-init
quick models on a smooth CE-like batch.

Usage: python benchmarks/bench_fullspace.py --trained --plain-columns 6 --repeats 3 --threads 2 [--write]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import jvp, vjp

from pdeinf.influence import fullspace as fs
from pdeinf.influence import gradients as _grad
from pdeinf.influence.hat import cross_gram, hat_matrix
from pdeinf.influence.normalize import normalize
from pdeinf.models import build, count_parameters

RTOL = {"unet": 1.5e-2, "vit": 5e-2}  # the paper's tolerances (App. B)
DAMPING = 1e-4


def ce_like_batch(n: int, resolution: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random (rho, rho vx, rho vy, E) fields `[n, 4, R, R]` and a nearby target."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(resolution) * resolution
    low = ((k[:, None] ** 2 + k[None, :] ** 2) <= 16).to(torch.float32)

    def smooth(count):
        noise = torch.randn(count, 4, resolution, resolution, generator=g)
        field = torch.fft.ifft2(torch.fft.fft2(noise) * low).real
        return field / field.std(dim=(-2, -1), keepdim=True)

    base = torch.tensor([1.0, 0.0, 0.0, 2.5]).view(1, 4, 1, 1)
    amp = torch.tensor([0.2, 0.1, 0.1, 0.3]).view(1, 4, 1, 1)
    x = base + amp * smooth(n)
    y = x + 0.2 * amp * smooth(n)
    return x, y


def setups(trained: bool, n: int, resolution: int):
    """(label, model, inputs, targets) for the quick UNet and ViT."""
    if trained:
        from pdeinf.config import get_profile
        from pdeinf.pipeline.common import final_epoch
        from pdeinf.pipeline.influence import FileSources

        prof = get_profile("quick")
        for name in ("unet", "vit"):
            src = FileSources(prof, "CE", name)
            model, _ = src.model(prof.seeds[0], final_epoch(prof, "CE"))
            batch = src.batch(prof.seeds[0], 0)
            yield name, f"trained quick CE {name} (seed {prof.seeds[0]}, final epoch, batch 0)", \
                model.eval(), batch.inputs[:n], batch.targets[:n]
        return
    for name in ("unet", "vit"):
        torch.manual_seed(0)
        model = build(name, channels=4, resolution=resolution, size="quick").eval()
        x, y = ce_like_batch(n, resolution)
        yield name, f"random-init quick {name}, CE-like batch", model, x, y


def plain_full_space(model, inputs, targets, *, damping, rtol, maxiter, columns):
    """One right-hand side at a time: CG with one whole-batch JVP and one VJP per iteration.

    Solves only the right-hand sides `columns`; returns their chi `[len(columns), P]`, the kets
    `[N, P]`, iterations per solved column and the matvec count.
    """
    params, layout = _grad.trainable_parameters(model)
    apply = _grad._model_function(model)
    with torch.no_grad():
        pred = model(inputs)
    kets = fs._residual_vjps(model, inputs, fs.smse_residual(pred, targets), params, layout)

    def f(p):
        return apply(p, inputs)

    def matvec(v):
        with _grad.math_attention():
            _, u = jvp(f, (params,), (layout.unflatten(v),))
            _, pull = vjp(f, params)
            return layout.flatten(pull(u)[0]) + damping * v

    chi, iterations, matvecs = torch.zeros(len(columns), kets.shape[1]), [], 0
    for i, m in enumerate(columns):
        b = kets[m]
        x, r = torch.zeros_like(b), b.clone()
        p, rr, b_norm = r.clone(), float(r.double().pow(2).sum()), float(b.double().norm())
        it = 0
        while rr ** 0.5 > rtol * b_norm and it < maxiter:
            ap = matvec(p)
            matvecs += 1
            alpha = rr / float((p.double() * ap.double()).sum())
            x += alpha * p
            r -= alpha * ap
            rr_new = float(r.double().pow(2).sum())
            p = r + (rr_new / rr) * p
            rr, it = rr_new, it + 1
        chi[i], _ = x, iterations.append(it)
    return chi, kets, torch.tensor(iterations), matvecs


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _timed(call, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(args) -> str:
    torch.set_num_threads(args.threads)
    lines = [
        "# Full-space estimator benchmark", "",
        f"Command: `python benchmarks/bench_fullspace.py {' '.join(sys.argv[1:])}`", "",
        (f"torch {torch.__version__}, {args.threads} threads; shared 2-core CPU: block and subspace are "
         f"medians of {args.repeats} runs, the plain loop one run; rivals in one process; compare ratios."),
        (f"damping lambda = {DAMPING}, the paper's tolerances rtol = 1.5e-2 (UNet), 5e-2 (ViT), per-column "
         f"rule ||g_m - A chi_m|| <= rtol ||g_m||; iteration cap {args.maxiter} per column."), "",
    ]
    print("\n".join(lines), flush=True)
    for name, label, model, x, y in setups(args.trained, args.n, args.resolution):
        done = len(lines)
        n, rtol = x.shape[0], RTOL[name]
        k = min(args.plain_columns, n)
        columns = [round(i * (n - 1) / max(k - 1, 1)) for i in range(k)] if k < n else list(range(n))
        kw = {"damping": DAMPING, "rtol": rtol, "maxiter": args.maxiter}
        # each lambda below is called at once, inside this iteration
        t_block, block = _timed(lambda: fs.full_space_hat_matrix(model, x, y, **kw), args.repeats)  # noqa: B023
        print(f"{name} block: {t_block:.2f} s", flush=True)
        t_sub, sub = _timed(lambda: hat_matrix(model, x, y), args.repeats)  # noqa: B023
        print(f"{name} subspace: {t_sub:.2f} s", flush=True)
        t_plain, (chi, kets, plain_it, plain_mv) = _timed(
            lambda: plain_full_space(model, x, y, columns=columns, **kw), 1)  # noqa: B023
        print(f"{name} plain ({k} columns): {t_plain:.2f} s", flush=True)
        t_plain_all = t_plain * n / k
        ref = None
        if args.reference_rtol:
            ref = fs.full_space_hat_matrix(model, x, y, **{**kw, "rtol": args.reference_rtol,
                                                             "maxiter": args.reference_maxiter})
            print(f"{name} reference (block, rtol {args.reference_rtol}): {ref.sweeps} sweeps", flush=True)
        plain_cols = cross_gram(kets, chi) / x[0].numel()  # [N, k]: columns m of H
        block_cols = block.pi[:, columns]
        per_block = block.matvecs / n
        lines += [
            f"## {label}: P = {count_parameters(model)}, N = {n}, M = {x.numel()}, rtol = {rtol}", "",
            "| rival | seconds to the N x N matrix | plain / rival | column matvecs | matvecs per right-hand side |",
            "|---|---|---|---|---|",
            (f"| block Krylov (full_space_hat_matrix) | {t_block:.1f} | **{t_plain_all / t_block:.1f}x** | "
             f"{block.matvecs} | {per_block:.1f} |"),
            (f"| plain CG, one right-hand side at a time | {t_plain_all:.1f}"
             + (f" ({t_plain:.1f} s for {k} of {n} columns, x {n / k:.0f})" if k < n else "")
             + f" | 1.00 | {plain_mv * n / k:.0f}" + (" (scaled)" if k < n else "")
             + f" | {plain_it.double().mean():.1f} (min {int(plain_it.min())}, max {int(plain_it.max())}) |"),
            f"| subspace hat_matrix | {t_sub:.1f} | {t_plain_all / t_sub:.1f}x | - | - |", "",
            (f"- block: {block.sweeps} sweeps, largest true relative residual "
             f"{float(block.residual_norms.max()):.3e}, {int(block.converged.sum())}/{n} columns reached rtol; "
             f"plain: columns {columns}, iterations {plain_it.tolist()}."),
            (f"- block vs plain on those columns (both stopped at rtol), relative Frobenius difference of "
             f"H[:, m]: {_rel(block_cols, plain_cols):.2e}."),
            (f"- full-space (block) vs subspace, standardized matrices: relative difference "
             f"{_rel(normalize(block.pi, 'standard'), normalize(sub.pi, 'standard')):.3f}; raw: "
             f"{_rel(block.pi, sub.pi):.3f}; off-diagonal mass {fs.offdiagonal_mass(block.pi):.3f} "
             f"(full-space) vs {fs.offdiagonal_mass(sub.pi):.3f} (subspace)."), "",
        ]
        if ref is not None:
            ref_cols = ref.pi[:, columns]
            lines += [
                (f"- which is closer to the converged estimator: a reference solve (block, rtol "
                 f"{args.reference_rtol}: {ref.sweeps} sweeps, {ref.matvecs} column matvecs, largest residual "
                 f"{float(ref.residual_norms.max()):.1e}, {int(ref.converged.sum())}/{n} converged). Relative "
                 f"difference of H[:, m] on the plain loop's columns: block {_rel(block_cols, ref_cols):.2e}, "
                 f"plain {_rel(plain_cols, ref_cols):.2e}; whole matrix, block: raw {_rel(block.pi, ref.pi):.2e}, "
                 f"standardized {_rel(normalize(block.pi, 'standard'), normalize(ref.pi, 'standard')):.2e}; "
                 f"off-diagonal mass of the reference {fs.offdiagonal_mass(ref.pi):.3f}."), "",
            ]
        print("\n".join(lines[done:]), flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="batch size N (right-hand sides)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of block and subspace (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--trained", action="store_true", help="the quick profile's trained CE checkpoints")
    parser.add_argument("--plain-columns", type=int, default=6, help="right-hand sides the plain loop solves")
    parser.add_argument("--maxiter", type=int, default=1000, help="iteration cap per right-hand side")
    parser.add_argument("--reference-rtol", type=float, default=1e-3,
                        help="tolerance of a tighter block solve both rivals are compared with (0: none)")
    parser.add_argument("--reference-maxiter", type=int, default=100,
                        help="sweeps per column of the reference solve (reported if it stops there)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_fullspace.md")
    args = parser.parse_args(argv)
    for name in ("n", "repeats", "threads", "resolution", "plain_columns", "maxiter", "reference_maxiter"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected at least 1")
    if not args.reference_rtol >= 0:
        parser.error(f"--reference-rtol={args.reference_rtol}: expected 0 (none) or a positive tolerance")
    table = run(args)
    if args.write:
        out = Path(__file__).with_name("results_fullspace.md")
        out.write_text(table)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
