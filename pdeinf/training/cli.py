"""`pdeinf train --pde CE --model unet --seed 10 --profile quick`.

Trains one run (or resumes it, or reports it done). Under torchrun it trains data-parallel
(see pdeinf.training.ddp for the paper-profile command).
"""
from __future__ import annotations

import sys


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a surrogate (resumes an interrupted run)",
        description="One-step teacher-forced training with scheduled checkpoints; rerun the "
                    "same command after an interruption to resume.")
    parser.add_argument("--pde", required=True, choices=["CE", "NS"])
    parser.add_argument("--model", required=True, choices=["unet", "vit"])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--profile", default=None, help="smoke | quick | paper (default $PDEINF_PROFILE or quick)")
    parser.add_argument("--data-root", default=None, help="data directory (default results/data/<profile>)")
    parser.add_argument("--out-dir", default=None, help="parent of the run directory (default results/runs/<profile>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from pdeinf.training.train import TrainingError, train

    try:
        result = train(args.pde, args.model, args.seed, args.profile, data_root=args.data_root,
                       out_dir=args.out_dir, progress=not args.no_progress)
    except TrainingError as err:
        print(f"pdeinf train: error: {err}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    print(f"{result.run_dir}: epoch {last.get('epoch')}, train SMSE {last.get('train_smse', float('nan')):.4e}, "
          f"val SMSE {last.get('val_smse', float('nan')):.4e}; checkpoints at epochs "
          f"{', '.join(map(str, result.checkpoints))}")
    return 0
