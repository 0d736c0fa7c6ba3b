"""Full-space (seed paper) estimator: batched CG against a one-RHS-at-a-time CG loop and the
subspace engine, side by side in one process (issue 10).

Rivals, each timed from the batch to the N x N matrix:
- batched: `pdeinf.influence.fullspace.full_space_hat_matrix` (N CG recurrences, one vmapped
  JVP + VJP sweep over the active right-hand sides per iteration, per-RHS stopping);
- plain: the structure of the authors' code, one right-hand side at a time, one whole-batch
  JVP + one VJP per CG iteration (same kets, bras, damping, rtol and iteration cap);
- subspace: `pdeinf.influence.hat.hat_matrix` (the follow-up's exact subspace estimator).

Usage: python benchmarks/bench_fullspace.py --n 48 --repeats 3 --threads 2 [--maxiter K] [--write]
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


def plain_full_space(model, inputs, targets, *, damping, rtol, maxiter):
    """One right-hand side at a time: CG with one whole-batch JVP and one VJP per iteration."""
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

    chi, iterations, matvecs = torch.zeros_like(kets), [], 0
    for m in range(kets.shape[0]):
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
        chi[m], _ = x, iterations.append(it)
    pi = cross_gram(kets, chi) / inputs[0].numel()
    return pi, torch.tensor(iterations), matvecs


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def run(args) -> str:
    torch.set_num_threads(args.threads)
    lines = [
        "# Full-space estimator benchmark (issue 10)", "",
        f"Command: `python benchmarks/bench_fullspace.py {' '.join(sys.argv[1:])}`", "",
        (f"torch {torch.__version__}, {args.threads} threads; shared 2-core CPU (noisy): medians of "
        f"{args.repeats} runs, rivals interleaved in one process; compare ratios, not absolute times."),
        (f"damping lambda = {DAMPING}, paper tolerances rtol = 1.5e-2 (UNet), 5e-2 (ViT); "
        f"CG iteration cap per right-hand side = {args.maxiter} (both full-space rivals)."), "",
    ]
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name, channels=4, resolution=args.resolution, size="quick").eval()
        x, y = ce_like_batch(args.n, args.resolution)
        rtol = RTOL[name]
        kw = {"damping": DAMPING, "rtol": rtol, "maxiter": args.maxiter}
        rivals = {
            "batched CG (full_space_hat_matrix)": lambda m=model, x=x, y=y, kw=kw: fs.full_space_hat_matrix(m, x, y, **kw),
            "plain CG, one RHS at a time": lambda m=model, x=x, y=y, kw=kw: plain_full_space(m, x, y, **kw),
            "subspace hat_matrix": lambda m=model, x=x, y=y: hat_matrix(m, x, y),
        }
        times = {k: [] for k in rivals}
        outputs = {}
        for _ in range(args.repeats):
            for key, call in rivals.items():
                start = time.perf_counter()
                outputs[key] = call()
                times[key].append(time.perf_counter() - start)
                print(f"{name} {key}: {times[key][-1]:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        batched, (plain_pi, plain_it, plain_mv), sub = outputs.values()
        keys = list(rivals)
        m_out = x.numel()
        per_b, per_p = med[keys[0]] / batched.matvecs, med[keys[1]] / max(plain_mv, 1)
        lines += [
            (f"## quick {name}: P = {count_parameters(model)}, N = {args.n}, M = {m_out} "
            f"(P/M = {count_parameters(model) / m_out:.2f}), rtol = {rtol}"), "",
            ("| rival | median s | ratio plain/rival | CG iterations per RHS (mean, max) | column matvecs "
            "| ms per column matvec | ratio per matvec |"),
            "|---|---|---|---|---|---|---|",
            (f"| {keys[0]} | {med[keys[0]]:.2f} | {med[keys[1]] / med[keys[0]]:.2f} | "
             f"{batched.iterations.double().mean():.1f}, {int(batched.iterations.max())} | {batched.matvecs} "
             f"| {per_b * 1e3:.1f} | {per_p / per_b:.2f} |"),
            (f"| {keys[1]} | {med[keys[1]]:.2f} | 1.00 | {plain_it.double().mean():.1f}, {int(plain_it.max())} "
             f"| {plain_mv} | {per_p * 1e3:.1f} | 1.00 |"),
            f"| {keys[2]} | {med[keys[2]]:.2f} | {med[keys[1]] / med[keys[2]]:.2f} | - | - | - | - |", "",
            (f"- batched: largest true relative residual {float(batched.residual_norms.max()):.3e}, "
            f"{int(batched.converged.sum())}/{args.n} right-hand sides reached rtol "
            f"({batched.sweeps} batched operator sweeps; its matvecs include one true-residual check per RHS)."),
            ("- batched vs plain (same estimator, both stopped at rtol or the cap), relative Frobenius "
             f"difference of H: {_rel(batched.pi, plain_pi):.2e} (plain stops on the recursive residual, "
             "batched on the true one, restarting CG where they disagree)"),
            (f"- full-space vs subspace, standardized matrices: relative difference "
            f"{_rel(normalize(batched.pi, 'standard'), normalize(sub.pi, 'standard')):.3f}; raw: "
            f"{_rel(batched.pi, sub.pi):.3f}; off-diagonal mass {fs.offdiagonal_mass(batched.pi):.3f} "
            f"(full-space) vs {fs.offdiagonal_mass(sub.pi):.3f} (subspace)"), "",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="batch size N (right-hand sides)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--models", default="unet,vit")
    parser.add_argument("--maxiter", type=int, default=1000, help="CG iteration cap per right-hand side")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_fullspace.md")
    args = parser.parse_args(argv)
    table = run(args)
    print(table)
    if args.write:
        out = Path(__file__).with_name("results_fullspace.md")
        out.write_text(table)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
