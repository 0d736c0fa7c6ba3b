"""`pdeinf data generate ...` and `pdeinf data inspect PATH`."""
from __future__ import annotations

from pathlib import Path

from pdeinf.errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="generate or inspect PDEGym-layout data")
    sub = parser.add_subparsers(dest="data_command", required=True)

    gen = sub.add_parser("generate", help="generate look-alike PDEGym data (one data set)")
    gen.add_argument("--dataset", required=True, help="CE-RP, CE-CRP, CE-RPUI, NS-BB, NS-Gauss or NS-Sines")
    gen.add_argument("--n-trajectories", type=int, required=True)
    gen.add_argument("--resolution", type=int, required=True, help="stored grid (H = W), at least 8")
    gen.add_argument("--out", required=True, help="root directory; files go to OUT/DATASET/")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--solver-resolution", type=int, default=None, help="default 2 x resolution")
    gen.add_argument("--chunk-size", type=int, default=None, help="trajectories per file")
    gen.add_argument("--batch-size", type=int, default=8, help="trajectories per solver call")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--no-progress", action="store_true")
    gen.set_defaults(func=_generate)

    ins = sub.add_parser("inspect", help="print shape, classes and statistics of data files")
    ins.add_argument("path", help="a .nc/.hdf5 file, a chunk directory, or a data root")
    ins.add_argument("--max-samples", type=int, default=64,
                     help="statistics over the first N samples of each class (default 64)")
    ins.add_argument("--validate", action="store_true",
                     help="also check every value (float dtype, finite, CE density/pressure/energy "
                          "positive, magnitudes plausible)")
    ins.set_defaults(func=_inspect)


def _generate(args) -> int:
    from pdeinf.data.generate import generate

    for path in generate(args.dataset, args.n_trajectories, args.resolution, args.out, seed=args.seed,
                         solver_resolution=args.solver_resolution, chunk_size=args.chunk_size,
                         batch_size=args.batch_size, device=args.device, progress=not args.no_progress):
        print(path)
    return 0


def _inspect(args) -> int:
    import pandas as pd

    from pdeinf.checks import positive_int
    from pdeinf.config import PDE_CLASSES, pde_spec
    from pdeinf.data.pdegym import chunk_files, open_dataset
    from pdeinf.data.statistics import class_readers, class_statistics, compare_to_pdegym
    from pdeinf.data.validation import POSITIVE_VARIABLES
    from pdeinf.data.well import open_well

    positive_int(args.max_samples, "--max-samples")
    path = Path(args.path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.suffix in (".hdf5", ".h5"):
        readers = {path.stem: open_well(path)}
    elif path.is_dir() and not chunk_files(path):
        readers = class_readers(path, PDE_CLASSES)
        if not readers:
            raise InputError(f"{path}: no PDEGym files, class directories or class files")
    else:
        readers = {path.name if path.is_dir() else path.stem: open_dataset(path)}
    for name, reader in readers.items():
        print(f"{name}: {reader!r}")
        print(f"  samples {reader.n_samples}, times {reader.n_times}, model channels {reader.channels}, "
              f"resolution (H, W) {reader.resolution}")
        if args.validate:
            reader.validate(progress=True)
            positive = [n for n in pde_spec(reader.pde).stored_variables if n in POSITIVE_VARIABLES]
            print("  validated: all values finite"
                  + (f"; {', '.join(positive)} positive" if positive else ""))
    table = class_statistics(readers, max_samples=args.max_samples)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(float_format=lambda v: f"{v:.5g}"))
        comparison = compare_to_pdegym(table)
        if len(comparison):
            print(comparison.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0
