"""The cluster options of `pdeinf reproduce`: ``--executor slurm`` (and its sbatch settings),
``--stages`` (a part of the stage graph) and ``--plan`` (the cost estimate, nothing run)."""
from __future__ import annotations

import argparse

from pdeinf.errors import InputError


def _stage_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated stage names")
    return names


def add_cluster_arguments(parser) -> None:
    """Register the executor, Slurm, stage-selection and plan options on `parser`."""
    group = parser.add_argument_group("cluster (docs/cluster.md)")
    group.add_argument("--executor", choices=("local", "slurm", "node"), default="local",
                       help="local worker processes (default); one Slurm job per stage; or one "
                            "local process per stage on its own GPUs of this node")
    group.add_argument("--slurm-config", default=None, metavar="FILE",
                       help="TOML file of Slurm settings (keys as the flags below, with _)")
    group.add_argument("--partition", default=None)
    group.add_argument("--gpus-per-task", type=int, default=None, metavar="N",
                       help="GPUs of each training and sweep job (torchrun when > 1)")
    group.add_argument("--cpus-per-task", type=int, default=None, metavar="N")
    group.add_argument("--time", dest="time_minutes", type=int, default=None, metavar="MIN",
                       help="time limit of each job in minutes (requeued past it)")
    group.add_argument("--account", default=None)
    group.add_argument("--mem", default=None, help="memory per job, e.g. 64G")
    group.add_argument("--sbatch", dest="extra", action="append", default=None, metavar="FLAG",
                       help="an extra sbatch flag, e.g. --sbatch=--qos=high (repeatable)")
    group.add_argument("--stages", type=_stage_list, default=None, metavar="NAME,NAME",
                       help="only these stages and those they need (e.g. 'training CE-unet')")
    group.add_argument("--plan", action="store_true",
                       help="print the estimated GPU-hours, CPU-hours, memory and output size "
                            "of every stage and the totals; run nothing")


def slurm_options(args):
    """`SlurmOptions` from ``--slurm-config`` and the flags (flags win)."""
    from pdeinf.pipeline.slurm import load_options

    return load_options(args.slurm_config, partition=args.partition,
                        gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                        time_minutes=args.time_minutes, account=args.account, mem=args.mem,
                        extra=tuple(args.extra) if args.extra else None)


def reproduce_elsewhere(args) -> int:
    """``--plan``: print the plan. ``--executor slurm|node``: run the graph as Slurm jobs or as
    local processes with their own GPUs."""
    from pdeinf.pipeline.common import as_profile

    profile = as_profile(args.profile)
    if args.plan:
        from pdeinf.pipeline.planner import format_plan, plan

        print(format_plan(plan(profile, stages=args.stages)))
        return 0
    if args.executor == "local":
        raise InputError("--stages: only with --executor slurm, --executor node or --plan")
    from pdeinf.pipeline.slurm import StageFailed, reproduce_slurm

    options = slurm_options(args)
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
