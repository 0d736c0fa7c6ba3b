"""`pdeinf influence ...` and `pdeinf reproduce ...`: the orchestration commands.

Under `torchrun --nproc_per_node K -m pdeinf influence ...` the influence tasks are sharded
across ranks.
"""
from __future__ import annotations

import sys

from pdeinf.config import MODELS, PDE_CLASSES, PROFILE_NAMES
from pdeinf.errors import InputError


def _influence(args) -> int:
    from pdeinf.checks import positive_int
    from pdeinf.influence.variants import variants_for
    from pdeinf.pipeline.influence import FileSources, run_sweep
    from pdeinf.pipeline.lock import check_writable

    positive_int(args.grad_chunk, "--grad-chunk")
    positive_int(args.jvp_chunk, "--jvp-chunk")
    if args.out is not None:
        check_writable(args.out, "--out")
    sources = FileSources(args.profile, args.pde, args.model, runs_root=args.runs_root,
                          data_root=args.data_root)
    files = run_sweep(args.profile, args.pde, args.model, sources=sources, out_root=args.out,
                      progress=not args.no_progress, grad_chunk=args.grad_chunk,
                      jvp_chunk=args.jvp_chunk)
    where = files[0].parent if files else "(no tasks for this rank)"
    print(f"influence {args.pde}-{args.model} ({args.profile}): {len(files)} task files "
          f"[{', '.join(variants_for(args.pde))}] in {where}")
    return 0


def _reproduce(args) -> int:
    from pdeinf.pipeline.common import as_profile
    from pdeinf.pipeline.reproduce import reproduce

    if args.only_pipeline and args.notebooks:
        raise InputError("--notebooks: cannot be combined with --only-pipeline")
    if args.plan or args.executor != "local" or args.stages:
        from pdeinf.pipeline.slurm_cli import reproduce_elsewhere

        return reproduce_elsewhere(args)
    report = reproduce(as_profile(args.profile), notebooks=args.notebooks,
                       only_pipeline=args.only_pipeline, progress=not args.no_progress,
                       workers=args.workers)
    for nb in report.failed:
        print(f"pdeinf reproduce: notebook {nb['notebook']} failed: {nb.get('error')}", file=sys.stderr)
    return 1 if report.failed else 0


def add_influence_parser(subparsers):
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
    parser.add_argument("--grad-chunk", type=int, default=8,  # hat.GRAD_CHUNK (keeps torch out of start-up)
                        help="examples per vmapped gradient call")
    parser.add_argument("--jvp-chunk", type=int, default=4,  # hat.JVP_CHUNK
                        help="examples per vmapped jvp call (all gradient directions at once)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_influence)
    return parser


def _positive_workers(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_reproduce_parser(subparsers):
    parser = subparsers.add_parser(
        "reproduce",
        help="run the cached pipeline and every notebook of a profile",
        description=(
            "Data, training, influence sweeps and rollouts (cached under results/), then every "
            "notebook through papermill (executed copies in results/executed/), then a table "
            "of figures, key numbers and timings."
        ),
    )
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                        help="size profile (default: $PDEINF_PROFILE, else quick)")
    parser.add_argument("--only-pipeline", action="store_true",
                        help="run the cached stages only, no notebooks")
    parser.add_argument("--notebooks", default=None, metavar="NN,NN",
                        help="comma-separated notebook numbers or names, e.g. 03,04")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--workers", type=_positive_workers, default=None, metavar="N",
                        help="processes for the stages (default: $PDEINF_WORKERS, else 1 with a "
                             "GPU and 2 on a CPU; 1 runs them here, in order)")
    from pdeinf.pipeline.slurm_cli import add_cluster_arguments

    add_cluster_arguments(parser)
    parser.set_defaults(func=_reproduce)
    return parser
