"""Top NTK eigenvalue (seed paper fig. 8): ARPACK with `ntk.LANCZOS_VECTORS` Lanczos vectors per
restart against scipy's default basis (20), side by side in one process.

    python benchmarks/bench_ntk_lanczos.py [--repeats 3] [--threads 1] [--trained]

Models: the quick UNet and ViT at random initialisation on N = 48 random CE-like inputs, or
with `--trained` the quick profile's final CE checkpoints and first influence batch (`make
reproduce` first; `PDEINF_HOME` picks the tree). Both rivals: tolerance 1e-2 (the paper's),
damping 1e-4, the same start vector. Printed: operator products, median seconds, their ratio
and the relative difference of the eigenvalues.
"""
from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from pdeinf.influence import ntk


def setups(trained: bool):
    if trained:
        from pdeinf.config import get_profile
        from pdeinf.pipeline.common import final_epoch
        from pdeinf.pipeline.influence import FileSources

        prof = get_profile("quick")
        for name in ("unet", "vit"):
            src = FileSources(prof, "CE", name)
            model, _ = src.model(prof.seeds[0], final_epoch(prof, "CE"))
            yield f"trained CE {name}", model.eval(), src.batch(prof.seeds[0], 0).inputs
        return
    from pdeinf.models import build

    g = torch.Generator().manual_seed(1)
    x = 1.0 + 0.3 * torch.rand(48, 4, 32, 32, generator=g)
    for name in ("unet", "vit"):
        torch.manual_seed(0)
        yield f"random-init {name}", build(name, channels=4, resolution=32, size="quick").eval(), x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trained", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), {args.repeats} repeats, rivals interleaved; medians")
    print(f"{'model':18s} {'products 20':>11s} {'products 6':>10s} {'s 20':>6s} {'s 6':>6s} "
          f"{'ratio':>6s} {'rel diff':>9s}")
    for label, model, x in setups(args.trained):
        times = {20: [], ntk.LANCZOS_VECTORS: []}
        found = {}
        for _ in range(args.repeats):
            for vectors, record in times.items():
                with mock.patch.object(ntk, "LANCZOS_VECTORS", vectors):
                    t0 = time.perf_counter()
                    found[vectors] = ntk.ntk_top_eigenvalue(model, x)
                    record.append(time.perf_counter() - t0)
        short, default = found[ntk.LANCZOS_VECTORS], found[20]
        t_default = statistics.median(times[20])
        t_short = statistics.median(times[ntk.LANCZOS_VECTORS])
        diff = abs(short["eigenvalue"] - default["eigenvalue"]) / default["eigenvalue"]
        print(f"{label:18s} {default['matvecs']:11d} {short['matvecs']:10d} {t_default:6.2f} "
              f"{t_short:6.2f} {t_default / t_short:6.2f} {diff:9.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
