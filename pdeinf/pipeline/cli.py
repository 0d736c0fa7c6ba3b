"""`pdeinf influence ...` (under `torchrun --nproc_per_node K -m pdeinf influence ...` its tasks
are sharded across ranks) and `pdeinf reproduce ...`: the orchestration commands."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from pdeinf.checks import positive_int
from pdeinf.config import MODELS, PDE_CLASSES, PROFILE_NAMES
from pdeinf.errors import InputError


def _influence(args) -> int:
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
    """Locally (worker processes), or ``--plan``: print the plan, or ``--executor slurm|node``:
    the graph as Slurm jobs or as local processes with their own GPUs."""
    from pdeinf.pipeline.common import as_profile

    if args.only_pipeline and args.notebooks:
        raise InputError("--notebooks: cannot be combined with --only-pipeline")
    positive_int(args.workers, "--workers", allow_none=True)
    profile = as_profile(args.profile)
    if args.plan:
        from pdeinf.pipeline.planner import format_plan, plan

        print(format_plan(plan(profile, stages=args.stages)))
        return 0
    if args.executor == "local":
        if args.stages:
            raise InputError("--stages: only with --executor slurm, --executor node or --plan")
        from pdeinf.pipeline.reproduce import reproduce

        report = reproduce(profile, notebooks=args.notebooks, only_pipeline=args.only_pipeline,
                           progress=not args.no_progress, workers=args.workers)
        for nb in report.failed:
            print(f"pdeinf reproduce: notebook {nb['notebook']} failed: {nb.get('error')}",
                  file=sys.stderr)
        return 1 if report.failed else 0
    from pdeinf.pipeline.slurm import SlurmOptions, StageFailed, load_options, reproduce_slurm

    options = load_options(args.slurm_config, **{f.name: getattr(args, f.name, None)
                                                 for f in dataclasses.fields(SlurmOptions)})
    try:
        results = reproduce_slurm(profile, options, notebooks=args.notebooks,
                                  only_pipeline=args.only_pipeline, stages=args.stages,
                                  progress=not args.no_progress, executor=args.executor)
    except StageFailed:
        return 1  # each failed job was already named on stderr, with its log
    ran = sum(r.status == "ok" for r in results)
    cached = sum(r.status == "cached" for r in results)
    print(f"pdeinf reproduce --executor {args.executor}: {ran} job(s) ran, {cached} stage(s) "
          "current")
    return 0


def add_influence_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "influence",
        help="influence (hat) matrices for every seed, checkpoint and influence batch of a profile",
    )
    add = parser.add_argument
    add("--pde", required=True, choices=sorted(PDE_CLASSES))
    add("--model", required=True, choices=MODELS)
    add("--profile", default=None, choices=PROFILE_NAMES, help="default: $PDEINF_PROFILE or quick")
    add("--data-root", default=None, help="data sets (default: results/data/<profile>)")
    add("--runs-root", default=None, help="checkpoints (default: results/runs/<profile>)")
    add("--out", default=None, help="output root (default: results/influence/<profile>)")
    add("--grad-chunk", type=int, default=8,  # hat.GRAD_CHUNK (keeps torch out of start-up)
        help="examples per vmapped gradient call")
    add("--jvp-chunk", type=int, default=4,  # hat.JVP_CHUNK
        help="examples per vmapped jvp call (all gradient directions at once)")
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_influence)


def _stage_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated stage names")
    return names


def add_reproduce_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run the cached pipeline and every notebook of a profile",
        description=(
            "Data, training, influence sweeps and rollouts (cached under results/), then every "
            "notebook through papermill (executed copies in results/executed/), then a table "
            "of figures, key numbers and timings."
        ),
    )
    add = parser.add_argument
    add("--profile", choices=PROFILE_NAMES, default=None,
        help="size profile (default: $PDEINF_PROFILE, else quick)")
    add("--only-pipeline", action="store_true", help="run the cached stages only, no notebooks")
    add("--notebooks", default=None, metavar="NN,NN",
        help="comma-separated notebook numbers or names, e.g. 03,04")
    add("--no-progress", action="store_true", help="no progress bars")
    add("--workers", type=int, default=None, metavar="N",
        help="processes for the stages (default: $PDEINF_WORKERS, else 1 with a GPU and 2 on a "
             "CPU; 1 runs them here, in order)")
    add = parser.add_argument_group("cluster (docs/cluster.md)").add_argument
    add("--executor", choices=("local", "slurm", "node"), default="local",
        help="local worker processes (default); one Slurm job per stage; or one local process "
             "per stage on its own GPUs of this node")
    add("--slurm-config", default=None, metavar="FILE",
        help="TOML file of Slurm settings (keys as the flags below, with _)")
    add("--partition", default=None)
    add("--gpus-per-task", type=int, default=None, metavar="N",
        help="GPUs of each training and sweep job (torchrun when > 1)")
    add("--cpus-per-task", type=int, default=None, metavar="N")
    add("--time", dest="time_minutes", type=int, default=None, metavar="MIN",
        help="time limit of each job in minutes (requeued past it)")
    add("--account", default=None)
    add("--mem", default=None, help="memory per job, e.g. 64G")
    add("--sbatch", dest="extra", action="append", default=None, metavar="FLAG",
        help="an extra sbatch flag, e.g. --sbatch=--qos=high (repeatable)")
    add("--stages", type=_stage_list, default=None, metavar="NAME,NAME",
        help="only these stages and those they need (e.g. 'training CE-unet')")
    add("--plan", action="store_true", help="print the estimated GPU-hours, CPU-hours, memory "
        "and output size of every stage and the totals; run nothing")
    parser.set_defaults(func=_reproduce)
