"""`pdeinf reproduce`: every cached stage of a profile, then every notebook, then a closing
table of figures, key numbers and stage times. One run per results root at a time (a lock);
temporary files of processes that died are removed at the start."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdeinf import paths
from pdeinf.atomic import remove_stale_temporaries, write_json
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile
from pdeinf.pipeline.data import ensure_data
from pdeinf.pipeline.influence import ensure_influence, ensure_seed_paper
from pdeinf.pipeline.lock import check_writable, results_lock
from pdeinf.pipeline.notebooks import (
    _executed_is_current,
    executed_dir,
    list_notebooks,
    notebook_cache_key,
    notebooks_source,
    run_notebook,
    summarize_notebook,
)
from pdeinf.pipeline.rollouts import ensure_rollouts
from pdeinf.pipeline.schedule import Task, TaskResult, default_workers, run_tasks
from pdeinf.pipeline.symmetry import ensure_symmetry
from pdeinf.pipeline.training import ensure_training


@dataclass
class StageTiming:
    stage: str
    seconds: float
    status: str = "ok"


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
        return {
            "profile": self.profile,
            "timings": [t.__dict__ for t in self.timings],
            "workers": self.workers,
            "pipeline_wall_seconds": self.pipeline_wall,
            "wall_seconds": self.wall,
            "notebooks": self.notebooks,
        }


@contextlib.contextmanager
def _timed(report_timings: list[StageTiming], stage: str, *, echo: bool) -> Iterator[None]:
    if echo:
        print(f"[pdeinf] {stage} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        report_timings.append(StageTiming(stage, time.perf_counter() - start, "failed"))
        raise
    report_timings.append(StageTiming(stage, time.perf_counter() - start))
    if echo:
        print(f"[pdeinf] {stage}: {report_timings[-1].seconds:.1f} s", file=sys.stderr, flush=True)


def stage_tasks(profile: ProfileLike, *, progress: bool = True) -> list[Task]:
    """The pipeline as a dependency graph: data; per (PDE, model) training, then the follow-up
    sweep, the seed paper's influence, rollouts and the symmetry study; the estimator study per
    pair; each recipe's and each ablation configuration's training runs; then the intervention
    and ablation studies, which read all of those. Listed in the order a sequential run takes
    them (cheap-to-unlock training first)."""
    from pdeinf.pipeline.ablation import ablation_pairs, configurations, ensure_ablation_pair
    from pdeinf.pipeline.ablation import ensure_ablation_runs
    from pdeinf.pipeline.estimator import ensure_estimator_pair, study_pairs
    from pdeinf.pipeline.interventions import ensure_intervention_pair, ensure_recipe_runs
    from pdeinf.pipeline.interventions import recipe_pairs

    profile = as_profile(profile)
    opts = {"progress": progress}
    pairs = profile.pairs()
    symmetry = profile.pairs(profile.symmetry_pairs)
    tasks = [Task("data", ensure_data, (profile,), opts, exclusive=True)]
    for pde, model in pairs:  # every pair's training before any analysis: both workers busy early
        tasks.append(Task(f"training {pde}-{model}", ensure_training, (profile, pde, model), opts,
                          ("data",)))
    for pde, model in pairs:
        pair, trained = f"{pde}-{model}", (f"training {pde}-{model}",)
        tasks += [
            Task(f"influence {pair}", ensure_influence, (profile, pde, model), opts, trained),
            # after the sweep: at quick it reuses the sweep's matrices of the same batches
            Task(f"seed-paper influence {pair}", ensure_seed_paper, (profile, pde, model), opts,
                 (f"influence {pair}",)),
            Task(f"rollouts {pair}", ensure_rollouts, (profile, pde, model), opts, trained),
        ]
        if (pde, model) in symmetry:
            tasks.append(Task(f"symmetry {pair}", ensure_symmetry, (profile, pde, model), opts,
                              trained))
    for pde, model in study_pairs(profile):
        tasks.append(Task(f"estimator study {pde}-{model}", ensure_estimator_pair,
                          (profile, pde, model), opts, (f"training {pde}-{model}",)))
    for pde, model in recipe_pairs(profile):
        pair = f"{pde}-{model}"
        runs = []
        for recipe in profile.recipes:
            if recipe != "one-step":
                runs.append(f"training {recipe} {pair}")
                tasks.append(Task(runs[-1], ensure_recipe_runs, (profile, pde, model, recipe),
                                  opts, ("data",)))
        upstream = _baseline_stages(profile, pde, model, symmetry)
        tasks.append(Task(f"interventions {pair}", ensure_intervention_pair, (profile, pde, model),
                          opts, tuple(runs) + upstream))
    for pde, model in ablation_pairs(profile):
        pair = f"{pde}-{model}"
        runs = []
        for name in configurations(profile):
            runs.append(f"training ablation {name} {pair}")
            tasks.append(Task(runs[-1], ensure_ablation_runs, (profile, name, pde, model), opts,
                              ("data",)))
        tasks.append(Task(f"ablation {pair}", ensure_ablation_pair, (profile, pde, model), opts,
                          tuple(runs) + _baseline_stages(profile, pde, model, symmetry)))
    return tasks


def _baseline_stages(profile, pde: str, model: str, symmetry) -> tuple[str, ...]:
    """The cached stages of the baseline run that the recipe and ablation studies read."""
    pair = f"{pde}-{model}"
    names = (f"training {pair}", f"influence {pair}", f"rollouts {pair}")
    return names + ((f"symmetry {pair}",) if (pde, model) in symmetry else ())


def run_all(
    profile: ProfileLike, *, progress: bool = True, timings: list[StageTiming] | None = None,
    workers: int | None = None,
) -> list[StageTiming]:
    """Every cached stage of the profile (`stage_tasks`), on `workers` processes (None:
    `schedule.default_workers()`; 1: here, in order). Returns each stage's wall time, in the
    order the stages ended (cached stages take ~0 s). Progress bars only when sequential."""
    profile = as_profile(profile)
    timings = [] if timings is None else timings
    workers = default_workers() if workers is None else workers
    tasks = stage_tasks(profile, progress=progress and workers == 1)

    def record(result: TaskResult) -> None:
        timings.append(StageTiming(result.name, result.seconds, result.status))

    run_tasks(tasks, workers=workers, echo=progress, on_result=record)
    return timings


def reproduce(
    profile: ProfileLike,
    *,
    notebooks: Sequence[str] | str | None = None,
    only_pipeline: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> ReproduceReport:
    """Data, training, influence sweeps, rollouts, then every notebook (or the selected
    ones) through papermill; executed copies under ``results/executed/``. Prints the closing
    table and writes it to ``results/reproduce_<profile>.json``. Notebook failures do not
    stop the others; they are listed in the report (``report.failed``). `workers`: processes
    for the stages (None: `schedule.default_workers()`)."""
    profile = as_profile(profile)
    workers = default_workers() if workers is None else workers
    selected = [] if only_pipeline else list_notebooks(notebooks)  # validate before long work
    if not only_pipeline and not selected:
        raise InputError(f"notebooks: no numbered notebooks found in {notebooks_source()}")
    check_writable(paths.results_dir(), "PDEINF_HOME/results")
    with results_lock(paths.results_dir()):
        remove_stale_temporaries(paths.results_dir(), recursive=True)
        report = _reproduce_locked(profile, selected, progress=progress, workers=workers)
    print(format_report(report), flush=True)
    return report


def _reproduce_locked(profile, selected, *, progress: bool, workers: int) -> ReproduceReport:
    report = ReproduceReport(profile.name, workers=workers)
    began = time.perf_counter()
    run_all(profile, progress=progress, timings=report.timings, workers=workers)
    report.pipeline_wall = time.perf_counter() - began
    for nb in selected:
        start = time.perf_counter()
        entry: dict = {"notebook": nb.stem}
        try:
            key = notebook_cache_key(nb, profile)
            if _executed_is_current(nb, key):
                entry.update(status="ok", executed=str(executed_dir() / nb.name), cached=True)
            else:
                with _timed(report.timings, f"notebook {nb.stem}", echo=progress):
                    executed = run_notebook(nb, profile, progress=progress, cache_key=key)
                entry.update(status="ok", executed=str(executed))
        except Exception as err:  # noqa: BLE001 - reported per notebook, others still run
            entry.update(status="failed", error=f"{type(err).__name__}: {_first_line(err)}")
        entry["seconds"] = time.perf_counter() - start
        summary = summarize_notebook(nb)
        entry.update(figures=summary["figures"], numbers=summary["numbers"],
                     verdicts=summary["verdicts"], results=summary["results"])
        report.notebooks.append(entry)
    report.wall = time.perf_counter() - began
    write_json(paths.results_dir() / f"reproduce_{profile.name}.json", report.to_dict(), default=str)
    return report


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    # papermill errors start with a banner line; the exception name/value follows
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("-=*"):
            return line[:300]
    return text[:300]


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(paths.root()))
    except ValueError:
        return path


def format_report(report: ReproduceReport) -> str:
    """The closing table of `reproduce`: stage times, then one block per notebook with its
    figures, key numbers and finding verdicts (reproduced / pairs)."""
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
            for fig in nb.get("figures", []):
                lines.append(f"      figure   {_display_path(fig)}")
            numbers = ", ".join(f"{k}={_format_number(v)}" for k, v in nb.get("numbers", {}).items())
            if numbers:
                lines.append(f"      numbers  {numbers}")
            verdicts = ", ".join(f"{k} {v}" for k, v in nb.get("verdicts", {}).items())
            if verdicts:
                lines.append(f"      findings reproduced: {verdicts}")
            if nb["status"] != "ok":
                lines.append(f"      error    {nb.get('error', '')}")
    return "\n".join(lines)
