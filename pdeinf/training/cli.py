"""`pdeinf train --pde CE --model unet --seed 10 --profile quick [--recipe NAME
[--recipe-setting KEY=VALUE ...]] [--monitor [--monitor-every N]]`.

Trains one run (or resumes it, or reports it done); data-parallel under torchrun
(`pdeinf.training.train`). `--recipe`: a recipe of `pdeinf.training.recipes` (other recipes'
runs go under `<runs>/recipe-<name>/` unless `--out-dir` is given). `--monitor` records the
coherence of a probe batch (the first validation trajectory of every class) every N optimizer
steps (`pdeinf.influence.monitor.CoherenceMonitor`) to `monitor.json|csv` in the run directory.
"""
from __future__ import annotations

import math

from pdeinf.checks import positive_int
from pdeinf.config import MODELS, PDE_SPECS, get_profile
from pdeinf.errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a surrogate (resumes an interrupted run)",
        description="One-step teacher-forced training with scheduled checkpoints; rerun the "
                    "same command after an interruption to resume.")
    parser.add_argument("--pde", required=True, choices=["CE", "NS"])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--seed", type=int, required=True)
    for flag, text in (("--profile", "smoke | quick | paper (default $PDEINF_PROFILE or quick)"),
                       ("--data-root", "data directory (default results/data/<profile>)"),
                       ("--out-dir", "parent of the run directory (default results/runs/<profile>)")):
        parser.add_argument(flag, default=None, help=text)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--recipe", default="one-step",
                        help="one-step | pushforward | noise | multistep | augment | physics")
    parser.add_argument("--recipe-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe setting, e.g. k=2 (pushforward, multistep), sigma=0.01 "
                             "scale=train|batch (noise), d4=true shift=true (augment), weight=0.1 "
                             "(physics); repeatable")
    parser.add_argument("--monitor", action="store_true",
                        help="record the coherence monitor (one hat matrix per record)")
    parser.add_argument("--monitor-every", type=int, default=None, metavar="N",
                        help="optimizer steps between monitor records (default: once per epoch)")
    parser.set_defaults(func=run)


def _monitor(args, profile):
    """CoherenceMonitor on the first validation trajectory of every class."""
    from pdeinf import paths
    from pdeinf.data.datasets import PDEData, influence_batch
    from pdeinf.influence.monitor import CoherenceMonitor

    data = PDEData(args.data_root or paths.data_dir(profile.name), args.pde, t_max=profile.t_max)
    every = args.monitor_every
    if every is None:  # once per epoch
        n_train = sum(len(data.split(c, "train", args.seed)) for c in data.classes)
        every = max(1, math.ceil(n_train * (profile.t_max - 1) / profile.batch_size))
    positive_int(every, "--monitor-every")
    probe = influence_batch(data, args.seed, 0, split="val")
    return CoherenceMonitor(probe.inputs, probe.targets, every=every, pde=args.pde,
                            classes=PDE_SPECS[args.pde].classes)


def run(args) -> int:
    from pdeinf.training.recipes import parse_settings
    from pdeinf.training.train import train

    if args.monitor_every is not None and not args.monitor:
        raise InputError("--monitor-every: given without --monitor")
    profile = get_profile(args.profile)
    if args.out_dir is not None:
        from pdeinf.pipeline.lock import check_writable

        check_writable(args.out_dir, "--out-dir")
    monitor = _monitor(args, profile) if args.monitor else None
    result = train(args.pde, args.model, args.seed, profile, data_root=args.data_root,
                   out_dir=args.out_dir, progress=not args.no_progress, recipe=args.recipe,
                   recipe_settings=parse_settings(args.recipe_setting), monitor=monitor)
    last = result.history[-1] if result.history else {}
    nan = float("nan")
    print(f"{result.run_dir}: epoch {last.get('epoch')}, train SMSE "
          f"{last.get('train_smse', nan):.4e}, val SMSE {last.get('val_smse', nan):.4e}; "
          f"checkpoints at epochs {', '.join(map(str, result.checkpoints))}")
    return 0
