"""Cost of joint-basis bras (orbit influence) against one ordinary hat matrix, side by side.

Rivals, in one process on the quick UNet (CE-like batch, [N, 4, 32, 32]):
- `plain`: `hat_matrix(model, x, y)` (SMSE bra: N gradients, N x N JVPs, solve);
- `joint, kept ket JVPs` (`keep_ket_jvps=True`): one `HatEngine`,
  `engine.pi(response_transform=g)` for the D4 elements g != e (the symmetry study's loop); the
  ket gradients and J G^T are computed at the first element and reused; per element: N bra
  gradients, min(N, joint rank) x N JVPs, the joint solve;
- `joint, nothing kept` (`keep_ket_jvps=False`): each element pushes its joint basis itself
  (joint rank x N JVPs, the rank at most 2N);
- `ket-span bra` (`bra_basis="ket"`): bra gradients and a projection only.
Printed: median seconds per element over the elements after the first (steady state), the
first element's seconds (it carries the ket work), and ratios to `plain`; a plain call is
timed before each rival in each round, so slow drifts of the machine's load hit all alike.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_joint_bra.py --n 16 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pdeinf.influence import hat_matrix
from pdeinf.influence.hat import HatEngine


def make_setup(n: int, seed: int = 0):
    from pdeinf.models import build

    torch.manual_seed(seed)
    model = build("unet", channels=4, resolution=32, size="quick").eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = 1.0 + 0.3 * torch.rand(n, 4, 32, 32, generator=g)
    y = x + 0.05 * torch.randn(n, 4, 32, 32, generator=g)
    return model, x, y


def d4_elements():
    """r^k and s r^k on (H, W) without vector-component signs (a cost study, not physics)."""
    rot = [lambda t, k=k: torch.rot90(t, k, dims=(-2, -1)) for k in range(4)]
    flip = [lambda t, f=f: torch.flip(f(t), dims=(-2,)) for f in rot]
    return rot[1:] + flip


def per_element(engine_kwargs, pi_kwargs, model, x, y, elements):
    engine = HatEngine(model, x, y, **engine_kwargs)
    times = []
    for g in elements:
        t0 = time.perf_counter()
        engine.pi(response_transform=g, **pi_kwargs)
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of all rivals")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = make_setup(args.n)
    hat_matrix(model, x[:4], y[:4])  # warm-up of the torch.func paths
    elements = d4_elements()
    rivals = [
        ("joint, kept ket JVPs", {"keep_ket_jvps": True}, {}),
        ("joint, nothing kept", {"keep_ket_jvps": False}, {}),
        ("ket-span bra", {}, {"bra_basis": "ket"}),
    ]
    plain, firsts, steadies = [], {r[0]: [] for r in rivals}, {r[0]: [] for r in rivals}
    for _ in range(args.repeats):  # rounds interleave the rivals: load drifts hit all alike
        for name, ek, pk in rivals:
            t0 = time.perf_counter()
            hat_matrix(model, x, y)
            plain.append(time.perf_counter() - t0)
            first, steady = per_element(ek, pk, model, x, y, elements)
            firsts[name].append(first)
            steadies[name].append(steady)
    t_plain = statistics.median(plain)
    print(f"quick UNet, N = {args.n}, {args.threads} thread(s), torch {torch.__version__}; "
          f"{len(elements)} D4 elements, {args.repeats} interleaved round(s); medians")
    print(f"{'rival':32s} {'first element s':>16s} {'per element s':>14s} {'ratio to plain':>15s}")
    print(f"{'plain hat_matrix':32s} {'':>16s} {t_plain:14.2f} {1.0:15.2f}")
    for name, _, _ in rivals:
        steady = statistics.median(steadies[name])
        print(f"{name:32s} {statistics.median(firsts[name]):16.2f} {steady:14.2f} {steady / t_plain:15.2f}")


if __name__ == "__main__":
    main()
