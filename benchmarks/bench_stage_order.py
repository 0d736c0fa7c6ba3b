"""The order in which ready stages start, replayed on a profile's real graph with the stage times
of a real run: the stage table's order against the longest-chain-first order
(`schedule.critical_path_order`) that `pdeinf reproduce` uses on more than one worker.

    python benchmarks/bench_stage_order.py --profile faithful [--workers 2] [--log run.log ...]

Stage seconds come from the `[pdeinf] <stage>: <seconds> s ok` lines of the logs (a resumed run
spans several; each stage's largest time counts, a cached check being ~0 s), or, without logs,
from `results/reproduce_<profile>.json`. The replay starts ready tasks exactly as
`schedule._run_graph` does (an exclusive task alone, `workers` at a time, in list order) and each
takes its measured seconds. Rivals, on the same graph and times:
- `table`: the stage table's priority order (`stages.priority_order`);
- `planned`: longest chain first by the planner's estimates (`reproduce.stage_eta`), as a run
  from scratch orders them;
- `oracle`: longest chain first by the measured times themselves.
Printed: each rival's wall time, its ratio to `table`, and two lower bounds (the summed work over
`workers`, the longest chain).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pdeinf import paths
from pdeinf.config import get_profile
from pdeinf.pipeline import stage_tasks
from pdeinf.pipeline.reproduce import report_path, stage_eta
from pdeinf.pipeline.schedule import critical_path_order, format_duration

LINE = re.compile(r"^\[pdeinf\] (.+?): ([0-9.]+) s ok")


def measured_seconds(logs: list[Path], profile) -> dict[str, float]:
    """{stage: seconds}: the largest time of each stage over the logs, else the last report."""
    seconds: dict[str, float] = {}
    if logs:
        for log in logs:
            for line in log.read_text(errors="replace").splitlines():
                if match := LINE.match(line):
                    seconds[match[1]] = max(seconds.get(match[1], 0.0), float(match[2]))
        return seconds
    report = json.loads(report_path(profile).read_text())
    return {t["stage"]: float(t["seconds"]) for t in report["timings"] if t["status"] == "ok"}


def replay(tasks, seconds: dict[str, float], workers: int) -> float:
    """The wall time of running `tasks` as `schedule._run_graph` starts them, each taking
    `seconds[name]`."""
    clock, done, pending, running = 0.0, set(), list(tasks), []
    while pending or running:
        for task in [t for t in pending if all(a in done for a in t.after)]:
            here = task.exclusive or workers == 1
            if running and (here or len(running) >= workers):
                break
            pending.remove(task)
            running.append((clock + seconds[task.name], task.name))
            if here:
                break
        end, name = min(running)
        running.remove((end, name))
        clock = end
        done.add(name)
    return clock


def longest_chain(tasks, seconds: dict[str, float]) -> float:
    first = critical_path_order(tasks, seconds)[0]
    chain, name = 0.0, first.name
    while True:  # follow the heaviest successor down from the heaviest head
        chain += seconds[name]
        later = [t for t in critical_path_order(tasks, seconds) if name in t.after]
        if not later:
            return chain
        name = later[0].name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="faithful")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    profile = get_profile(args.profile)
    tasks = stage_tasks(profile, progress=False)
    seconds = measured_seconds(args.log, profile)
    if missing := [t.name for t in tasks if t.name not in seconds]:
        sys.exit(f"no measured time for {len(missing)} stage(s), e.g. {missing[0]!r} "
                 f"(results under {paths.results_dir()})")
    eta = stage_eta(profile, args.workers, {})
    rivals = {"table": tasks, "oracle": critical_path_order(tasks, seconds)}
    if eta is not None:
        rivals["planned"] = critical_path_order(tasks, eta.estimates)
    walls = {name: replay(order, seconds, args.workers) for name, order in rivals.items()}
    print(f"{args.profile}: {len(tasks)} stages, {format_duration(sum(seconds[t.name] for t in tasks))}"
          f" of stage time on {args.workers} worker(s)")
    print("| order | wall | / table |\n|---|---|---|")
    for name, wall in walls.items():
        print(f"| {name} | {format_duration(wall)} | {wall / walls['table']:.3f} |")
    work = sum(seconds[t.name] for t in tasks) / args.workers
    print(f"lower bounds: work / workers {format_duration(work)}, "
          f"longest chain {format_duration(longest_chain(tasks, seconds))}")
    for name in ("table", "planned"):
        if name in rivals:
            print(f"{name} order starts: " + ", ".join(t.name for t in rivals[name][:8]) + ", ...")


if __name__ == "__main__":
    main()
