"""What the estimators' tolerances do to Pi on neural operators users bring, side by side.

For neuraloperator's FNO, TFNO and UNO (tiny, random initialisation, N examples of an 8x8,
2-channel batch; several seeds), in one process:
- subspace: `energy_tol` = 1e-4 against 0 (the default, exact): directions cut, the gradient
  energy they carry, and max |Pi_cut - Pi_exact| / max |Pi_exact| in float64 and float32;
- full-space: the paper's `rtol` = 1.5e-2 against a solve to 1e-10 (`reference_rtol`):
  `converged`, the largest relative residual and the distance max |H - H_ref| / max |H_ref|.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_estimator_defaults.py --seeds 3
"""
from __future__ import annotations

import argparse
import warnings

import torch

from pdeinf.influence import hat_matrix


def make_model(kind: str, seed: int) -> torch.nn.Module:
    from neuralop.models import FNO, TFNO, UNO

    torch.manual_seed(seed)
    if kind == "FNO":
        return FNO(n_modes=(3, 3), in_channels=2, out_channels=2, hidden_channels=4, n_layers=1).eval()
    if kind == "TFNO":
        return TFNO(n_modes=(3, 3), in_channels=2, out_channels=2, hidden_channels=4, n_layers=1,
                    factorization="tucker", rank=0.5).eval()
    return UNO(in_channels=2, out_channels=2, hidden_channels=4, lifting_channels=4, projection_channels=4,
               n_layers=2, uno_out_channels=[4, 4], uno_n_modes=[[3, 3], [3, 3]],
               uno_scalings=[[1, 1], [1, 1]], channel_mlp_skip="linear").eval()


def to_float64(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.data = p.data.to(torch.complex128 if p.is_complex() else torch.float64)
    return model


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def energy_cut_row(kind: str, seed: int, x, y) -> str:
    cells = []
    for dtype in (torch.float64, torch.float32):
        model = make_model(kind, seed)
        if dtype == torch.float64:
            model = to_float64(model)
        exact = hat_matrix(model, x.to(dtype), y.to(dtype))
        cut = hat_matrix(model, x.to(dtype), y.to(dtype), energy_tol=1e-4)
        cells.append(relative(cut.pi, exact.pi))
    return (f"{kind:<5} {seed:>4} {exact.rank:>6} {cut.attrs['cut_directions']:>5} "
            f"{cut.attrs['cut_energy']:>10.2e} {cells[0]:>12.2e} {cells[1]:>12.2e}")


def full_space_row(kind: str, seed: int, x, y) -> str:
    model = to_float64(make_model(kind, seed))
    res = hat_matrix(model, x, y, estimator="full-space", rtol=1.5e-2, reference_rtol=1e-10, maxiter=5000)
    return (f"{kind:<5} {seed:>4} {bool(res.converged.all())!s:>9} {float(res.residual_norms.max()):>10.2e} "
            f"{res.attrs['distance_to_reference']:>10.2e} {res.attrs['reference_converged']!s:>9}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(args.n, 2, 8, 8, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(args.n, 2, 8, 8, generator=g, dtype=torch.float64)
    kinds = ("FNO", "TFNO", "UNO")
    print(f"subspace, energy_tol 1e-4 against 0 (exact), N = {args.n}")
    print(f"{'model':<5} {'seed':>4} {'rank':>6} {'cut':>5} {'cut energy':>10} {'dPi f64':>12} {'dPi f32':>12}")
    for kind in kinds:
        for seed in range(args.seeds):
            print(energy_cut_row(kind, seed, x, y))
    print(f"\nfull-space, rtol 1.5e-2 against 1e-10 (float64), damping 1e-4, N = {args.n}")
    print(f"{'model':<5} {'seed':>4} {'converged':>9} {'max resid':>10} {'distance':>10} {'ref conv':>9}")
    for kind in kinds:
        for seed in range(args.seeds):
            print(full_space_row(kind, seed, x, y))


if __name__ == "__main__":
    main()
