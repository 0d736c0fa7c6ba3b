"""`pdeinf influence --pde CE --model unet --profile quick [--no-progress]`.

Under `torchrun --nproc_per_node K -m pdeinf influence ...` the tasks are sharded across ranks.
"""
from __future__ import annotations

from pdeinf.config import MODELS, PDE_CLASSES, PROFILE_NAMES


def _run(args) -> int:
    from pdeinf.influence.sweep import run_sweep, variants_for

    files = run_sweep(
        args.profile, args.pde, args.model, data_root=args.data_root, runs_root=args.runs_root,
        out_root=args.out, progress=not args.no_progress, grad_chunk=args.grad_chunk,
        jvp_chunk=args.jvp_chunk,
    )
    where = files[0].parent if files else "(no tasks for this rank)"
    print(f"influence {args.pde}-{args.model} ({args.profile}): {len(files)} task files "
          f"[{', '.join(variants_for(args.pde))}] in {where}")
    return 0


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "influence",
        help="influence (hat) matrices for every seed, checkpoint and influence batch of a profile",
    )
    parser.add_argument("--pde", required=True, choices=sorted(PDE_CLASSES))
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--profile", default=None, choices=PROFILE_NAMES,
                        help="default: $PDEINF_PROFILE or quick")
    parser.add_argument("--data-root", default=None, help="data sets (default: results/data/<profile>)")
    parser.add_argument("--runs-root", default=None, help="checkpoints (default: results/runs/<profile>)")
    parser.add_argument("--out", default=None, help="output root (default: results/influence/<profile>)")
    parser.add_argument("--grad-chunk", type=int, default=8,  # hat.GRAD_CHUNK (not imported: keeps torch out of CLI start-up)
                        help="examples per vmapped gradient call")
    parser.add_argument("--jvp-chunk", type=int, default=4,  # hat.JVP_CHUNK
                        help="examples per vmapped jvp call (all gradient directions at once)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
    return parser
