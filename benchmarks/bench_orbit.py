"""Orbit influence cost: each extra group element against one ordinary hat matrix.

    python benchmarks/bench_orbit.py [--n 48] [--repeats 3] [--threads 1] [--elements r s sr2]

On the quick-profile UNet (`build("unet", channels=4, resolution=32, size="quick")`, float32)
with N random positive CE-like inputs, in one process:
1. ordinary: `hat_matrix(model, x, y)` (a fresh engine: ket gradients, span, metric);
2. orbit, per extra element: `orbit_influence` on one shared `HatEngine` (as
   `orbit_influence` builds it) that has already served the identity (ket gradients, span and
   metric cached), timed element by element: each costs its bra gradients at (g.x, g.y), the
   JVPs of its joint basis and the joint eigendecomposition. At random initialisation the
   gradients have full rank r = N: the engine keeps the ket JVPs (its rule: r > 3N/4) and an
   element pushes min(N, joint rank) directions, the ordinary matrix N. `--trained` (the
   quick CE-UNet after training, r about N/2): nothing is kept, the ordinary matrix pushes
   its r basis vectors and an element its joint basis (about N), so the ratio is higher
   although neither costs more than before the basis folding.
Prints medians over `--repeats` and the ratio (median extra element) / (median ordinary);
the target is <= 1.2. The machine is shared and noisy: trust the ratio, not the seconds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from pdeinf.influence import HatEngine, hat_matrix
from pdeinf.symmetry import orbit_influence


def make_setup(n: int, seed: int = 0):
    from pdeinf.models import build

    torch.manual_seed(seed)
    model = build("unet", channels=4, resolution=32, size="quick").eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = 1.0 + 0.3 * torch.rand(n, 4, 32, 32, generator=g)
    y = x + 0.05 * torch.randn(n, 4, 32, 32, generator=g)
    return model, x, y


def trained_setup(epoch: int | None):
    """The quick profile's CE-UNet checkpoint (first seed; `epoch` None: the final one) and its
    first influence batch: needs `make reproduce` first (`PDEINF_HOME` picks the tree)."""
    from pdeinf.config import get_profile
    from pdeinf.pipeline.common import final_epoch
    from pdeinf.pipeline.influence import FileSources

    prof = get_profile("quick")
    src = FileSources(prof, "CE", "unet")
    model, _ = src.model(prof.seeds[0], epoch or final_epoch(prof, "CE"))
    batch = src.batch(prof.seeds[0], 0)
    return model.eval(), batch.inputs, batch.targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--elements", nargs="+", default=["r", "s", "sr2"])
    parser.add_argument("--trained", action="store_true",
                        help="the quick CE-UNet's trained checkpoint and batch instead of random ones")
    parser.add_argument("--epoch", type=int, default=None, help="with --trained: the checkpoint")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x, y = trained_setup(args.epoch) if args.trained else make_setup(args.n)
    args.n = x.shape[0]
    setup = "trained quick CE-UNet checkpoint" if args.trained else "quick UNet at random init"
    print(f"{setup}, N = {args.n}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{args.threads} thread(s), {args.repeats} repeats")

    hat_matrix(model, x[:4], y[:4])  # warm-up (first vmap traces, allocator), not timed
    ordinary, first, extra, ranks = [], [], [], {}
    for _ in range(args.repeats):  # rivals interleaved, so drifts of a shared machine hit both
        t0 = time.perf_counter()
        hat_matrix(model, x, y)
        ordinary.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine = HatEngine(model, x, y)  # as orbit_influence builds it (the engine's keep rule)
        ranks["e"] = int(orbit_influence(model, x, y, ["e"], pde="CE", engine=engine)["rank"][0])
        first.append(time.perf_counter() - t0)
        for element in args.elements:
            t0 = time.perf_counter()
            found = orbit_influence(model, x, y, [element], pde="CE", engine=engine)
            extra.append(time.perf_counter() - t0)
            ranks[element] = int(found["rank"][0])

    med_ordinary, med_first, med_extra = (statistics.median(v) for v in (ordinary, first, extra))
    print(f"ordinary hat_matrix           median {med_ordinary:8.2f} s  ({len(ordinary)} runs)")
    print(f"orbit, identity (first)       median {med_first:8.2f} s  ({len(first)} runs)")
    print(f"orbit, each extra element     median {med_extra:8.2f} s  ({len(extra)} runs: {', '.join(args.elements)})")
    print("basis rank (ket span for e, joint basis otherwise): "
          + ", ".join(f"{g} {r}" for g, r in ranks.items()))
    ratio = med_extra / med_ordinary
    print(f"ratio extra element / ordinary = {ratio:.2f}  (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
