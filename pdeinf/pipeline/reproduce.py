"""`pdeinf reproduce`: every cached stage of a profile, every notebook, then a closing table of
figures, key numbers and stage times; one run per results root at a time (a lock)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdeinf import paths
from pdeinf.atomic import write_json
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile
from pdeinf.pipeline.interrupt import guarded_run
from pdeinf.pipeline.notebooks import (
    _executed_is_current,
    executed_dir,
    findings_rows,
    list_notebooks,
    notebook_cache_key,
    notebooks_source,
    run_notebook,
    summarize_notebook,
)
from pdeinf.pipeline.publish import portable_text, publish_notebooks
from pdeinf.pipeline.schedule import (
    EtaClock,
    Task,
    critical_path_order,
    default_workers,
    format_duration,
    run_tasks,
    task_threads,
)


@dataclass
class StageTiming:
    stage: str
    seconds: float
    status: str = "ok"
    key: str = ""  # `slurm.stage_keys`: the next run expects a stage that ended ok under it current


@dataclass
class ReproduceReport:
    """What `reproduce` did: per-stage wall times and the per-notebook results."""

    profile: str
    timings: list[StageTiming] = field(default_factory=list)
    notebooks: list[dict] = field(default_factory=list)
    workers: int = 1  # processes the stages ran on
    pipeline_wall: float = 0.0  # s, the stages (with several workers: less than their sum)
    wall: float = 0.0  # s, stages and notebooks

    @property
    def failed(self) -> list[dict]:
        return [nb for nb in self.notebooks if nb["status"] != "ok"]

    def to_dict(self) -> dict:
        return {"profile": self.profile, "timings": [t.__dict__ for t in self.timings],
                "workers": self.workers, "pipeline_wall_seconds": self.pipeline_wall,
                "wall_seconds": self.wall, "notebooks": self.notebooks}


def stage_tasks(profile: ProfileLike, *, progress: bool = True) -> list[Task]:
    """The pipeline as a dependency graph: one task per kind and unit of the stage table
    (`stages.STAGES`), in priority order (ready tasks start in list order)."""
    from pdeinf.pipeline import stages

    profile = as_profile(profile)
    return [Task(kind.name(unit), kind.compute, kind.arguments(profile, unit), {"progress": progress},
                 tuple(stages.after_names(profile, kind, unit)), exclusive=kind.exclusive)
            for kind, unit in stages.stage_units(profile)]


def run_all(
    profile: ProfileLike, *, progress: bool = True, timings: list[StageTiming] | None = None,
    workers: int | None = None,
) -> list[StageTiming]:
    """Every cached stage of the profile (`stage_tasks`), on `workers` processes (None:
    `schedule.default_workers()`; 1: here, in order; more: with `progress`, ready stages start
    by the planner's estimate of the chain they head, `critical_path_order`). Returns each
    stage's wall time, in the order the stages ended (cached stages take ~0 s). Progress bars
    only when sequential."""
    from pdeinf.pipeline.slurm import stage_keys

    profile = as_profile(profile)
    timings = [] if timings is None else timings
    workers = default_workers() if workers is None else workers
    tasks = stage_tasks(profile, progress=progress and workers == 1)
    keys = stage_keys(profile, tasks)
    eta = stage_eta(profile, workers, keys) if progress else None
    if eta is not None and workers > 1:  # with the planner's estimates: longest chain first
        tasks = critical_path_order(tasks, eta.estimates)
    run_tasks(tasks, workers=workers, echo=progress, eta=eta,
              on_result=lambda r: timings.append(StageTiming(r.name, r.seconds, r.status,
                                                             keys[r.name])))
    return timings


def report_path(profile) -> Path:
    """`results/reproduce_<profile>.json`: the closing table of the profile's last run."""
    return paths.results_dir() / f"reproduce_{profile.name}.json"


#: the estimate of a stage expected current: verifying its cached files (about 10 s at faithful)
CURRENT_SECONDS = 10.0


def expected_current(profile, keys: dict[str, str]) -> dict[str, float]:
    """`{stage: seconds}` of the stages that ended ok in the last run of the profile
    (`results/reproduce_<profile>.json`) under the key they have now: their seconds then, or
    `CURRENT_SECONDS` where they were computed then (`EtaClock.COMPUTED_SECONDS` or more).
    Nothing when there is no readable last run."""
    try:
        last = json.loads(report_path(profile).read_text())["timings"]
        return {t["stage"]: CURRENT_SECONDS if t["seconds"] >= EtaClock.COMPUTED_SECONDS
                else float(t["seconds"]) for t in last
                if t.get("status") == "ok" and t.get("key") and keys.get(t["stage"]) == t["key"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def stage_eta(profile, workers: int, keys: dict[str, str] | None = None) -> EtaClock | None:
    """An `EtaClock` from the planner's estimate of every stage, its total printed once; None
    where planning fails (the run goes on without an ETA). The planner's seconds use all cores;
    a task runs on `task_threads()` of them, so each estimate is scaled by cores / task threads,
    except an exclusive stage's (it runs alone, on every core). With the stages' `keys`, a stage
    `expected_current` is estimated at its check and rescaled only by the others of its kind."""
    from pdeinf.pipeline.planner import plan
    from pdeinf.pipeline.stages import stage_units

    try:
        stages = plan(profile, notebooks=False)["stages"]
        rows = {kind.name(unit): (kind, unit) for kind, unit in stage_units(as_profile(profile))}
    except Exception as err:  # noqa: BLE001 - the estimate is a courtesy, never a reason to stop a run
        print(f"[pdeinf] no ETA ({type(err).__name__}: {err})", file=sys.stderr, flush=True)
        return None
    cores = os.cpu_count() or 1
    per_task = cores / min(cores, task_threads() or cores)
    exclusive = {s.stage for s in stages if s.stage in rows and rows[s.stage][0].exclusive}
    estimates = {s.stage: s.seconds * (1.0 if s.stage in exclusive else per_task) for s in stages}
    laws = {s.stage: rows[s.stage][0].law(rows[s.stage][1]) for s in stages if s.stage in rows}
    current = expected_current(as_profile(profile), keys or {})
    estimates.update((k, v) for k, v in current.items() if k in estimates)
    laws.update((k, "expected current") for k in current)
    clock = EtaClock(estimates, workers, laws=laws, exclusive=exclusive)
    print(f"[pdeinf] estimated before starting: {format_duration(clock.seconds_left())} on "
          f"{workers} worker(s); the ETA is rescaled by the measured time of finished stages of "
          "the same kind",
          file=sys.stderr, flush=True)
    return clock


def reproduce(
    profile: ProfileLike,
    *,
    notebooks: Sequence[str] | str | None = None,
    only_pipeline: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> ReproduceReport:
    """Every stage, then every notebook (or the selected ones) through papermill; executed
    copies under ``results/executed/``, at the committed profile their outputs written into the
    notebooks (`publish.publish_notebooks`). Prints the closing table and writes it to
    ``results/reproduce_<profile>.json``. Notebook failures do not stop the others
    (``report.failed``). `workers`: processes for the stages (None: `default_workers()`)."""
    profile = as_profile(profile)
    workers = default_workers() if workers is None else workers
    selected = [] if only_pipeline else list_notebooks(notebooks)  # validate before long work
    if not only_pipeline and not selected:
        raise InputError(f"notebooks: no numbered notebooks found in {notebooks_source()}")
    with guarded_run(paths.results_dir()):
        report = ReproduceReport(profile.name, workers=workers)
        began = time.perf_counter()
        run_all(profile, progress=progress, timings=report.timings, workers=workers)
        report.pipeline_wall = time.perf_counter() - began
        entries = run_notebooks(profile, selected, report.timings, progress=progress, workers=workers)
        publish_notebooks(profile.name, entries)  # the committed profile's outputs, into the notebooks
        report.notebooks.extend(entries)
        report.wall = time.perf_counter() - began
        write_json(report_path(profile), report.to_dict(), default=str)
    print(format_report(report), flush=True)
    return report


def run_notebooks(profile, selected, timings: list[StageTiming], *, progress: bool = True,
                  workers: int = 1) -> list[dict]:
    """Execute (or find current) every selected notebook; one report entry each, in order.
    They run `workers` at a time (own kernels, `threads_per_worker(workers)` torch threads); a
    failure is reported in its entry and does not stop the others."""
    from concurrent.futures import ThreadPoolExecutor

    from pdeinf.pipeline.notebooks import kernel_environment
    from pdeinf.pipeline.schedule import threads_per_worker

    def one(nb: Path) -> dict:
        return _notebook_entry(nb, profile, timings, progress=progress and workers == 1)

    if workers > 1 and len(selected) > 1:
        threads = str(threads_per_worker(workers))
        # set for the whole pool: the per-notebook setting would be undone by whichever
        # notebook finishes first while the other kernel may still be starting
        with kernel_environment("OMP_NUM_THREADS", threads), \
                kernel_environment("MPLBACKEND", "Agg", override=False), \
                ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, selected))
    return [one(nb) for nb in selected]


def _notebook_entry(nb: Path, profile, timings: list[StageTiming], *, progress: bool) -> dict:
    start = time.perf_counter()
    entry: dict = {"notebook": nb.stem}
    try:
        key = notebook_cache_key(nb, profile)
        if _executed_is_current(nb, key):
            entry.update(status="ok", executed=str(executed_dir() / nb.name), cached=True)
        else:
            stage, began, executed = f"notebook {nb.stem}", time.perf_counter(), None
            if progress:
                print(f"[pdeinf] {stage} ...", file=sys.stderr, flush=True)
            try:
                executed = run_notebook(nb, profile, progress=progress, cache_key=key)
            finally:
                timings.append(StageTiming(stage, time.perf_counter() - began,
                                           "ok" if executed else "failed"))
            if progress:
                print(f"[pdeinf] {stage}: {timings[-1].seconds:.1f} s", file=sys.stderr, flush=True)
            entry.update(status="ok", executed=str(executed))
    except Exception as err:  # noqa: BLE001 - reported per notebook, others still run
        entry.update(status="failed", error=f"{type(err).__name__}: {_first_line(err)}")
    entry["seconds"] = time.perf_counter() - start
    summary = summarize_notebook(nb, profile=profile)
    verdicts = Counter(r["verdict"] for r in findings_rows(profile, nb.stem) or ())
    entry.update(figures=summary["figures"], numbers=summary["numbers"],
                 verdicts=dict(sorted(verdicts.items())), results=summary["results"])
    return entry


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    # papermill errors start with a banner line; the exception name/value follows
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("-=*"):
            return line[:300]
    return text[:300]


def format_report(report: ReproduceReport) -> str:
    """The closing table of `reproduce`: stage times, then one block per notebook with its
    figures, key numbers and the verdicts of its study's rows in the findings table."""
    lines = [f"pdeinf reproduce --profile {report.profile}", "", "stage timings (wall, s):"]
    width = max([len(t.stage) for t in report.timings] + [5])
    for t in report.timings:
        lines.append(f"  {t.stage:<{width}}  {t.seconds:9.1f}  {t.status}")
    lines.append(f"  {'total':<{width}}  {sum(t.seconds for t in report.timings):9.1f}  (sum of stages)")
    if report.wall:
        lines.append(f"  {'wall':<{width}}  {report.wall:9.1f}  (stages on {report.workers} "
                     f"worker(s): {report.pipeline_wall:.1f} s, then the notebooks)")
    if report.notebooks:
        lines += ["", "notebooks:"]
        for nb in report.notebooks:
            lines.append(f"  {nb['notebook']}  [{nb['status']}]  {nb['seconds']:.1f} s")
            numbers = ", ".join(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}={v}"
                                for k, v in nb.get("numbers", {}).items())
            verdicts = ", ".join(f"{n} {word}" for word, n in nb.get("verdicts", {}).items())
            rows = [("figure", portable_text(fig)) for fig in nb.get("figures", [])]
            rows += [("numbers", numbers), ("findings", verdicts),
                     ("error", nb.get("error", "") if nb["status"] != "ok" else ""),
                     ("outputs", portable_text(nb["published"]) if nb.get("published") else "")]
            lines += [f"      {label:<8} {text}" for label, text in rows if text]
    return "\n".join(lines)
