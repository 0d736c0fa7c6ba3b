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
from pdeinf.atomic import write_json
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile
from pdeinf.pipeline.data import ensure_data
from pdeinf.pipeline.influence import ensure_influence, ensure_seed_paper
from pdeinf.pipeline.interrupt import guarded_run
from pdeinf.pipeline.lock import check_writable
from pdeinf.pipeline.notebooks import (
    _executed_is_current,
    executed_dir,
    list_notebooks,
    notebook_cache_key,
    notebooks_source,
    run_notebook,
    summarize_notebook,
)
from pdeinf.pipeline.publish import publish_notebooks
from pdeinf.pipeline.rollouts import ensure_rollouts
from pdeinf.pipeline.schedule import (
    EtaClock,
    Task,
    TaskResult,
    default_workers,
    format_duration,
    run_tasks,
)
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
    """The pipeline as a dependency graph, listed in priority order (ready tasks start in list
    order, so the seed paper's and the follow-up's analyses of the baseline runs come before our
    studies' extra runs): data; the baseline runs of every (PDE, model); the seed paper's
    influence (first, needing only the runs, with its full-space estimator; after the follow-up
    sweep, whose matrices it reuses, at the subspace estimator); the follow-up sweep, the
    symmetry study, rollouts and the estimator study; the regime ladder (its own runs, then its
    measurements); each recipe's and each ablation configuration's runs; the intervention
    studies (one stage per recipe after that recipe's runs and the baseline's sweep, one for
    augment's orbit influence, then the pair's study that reads them) and the ablation study;
    last the findings table, built from every stage's output."""
    from pdeinf.pipeline.ablation import (
        ablation_pairs,
        configurations,
        ensure_ablation_pair,
        ensure_ablation_runs,
    )
    from pdeinf.pipeline.estimator import ensure_estimator_pair, study_pairs
    from pdeinf.pipeline.findings import findings_stage
    from pdeinf.pipeline.ladder import ensure_ladder, ensure_ladder_runs
    from pdeinf.pipeline.ladder import stage_pair as ladder_stage_pair
    from pdeinf.pipeline.interventions import (
        ensure_intervention_pair,
        ensure_orbit_pair,
        ensure_recipe_runs,
        ensure_recipe_study,
        orbit_recipes,
        recipe_pairs,
    )

    profile = as_profile(profile)
    opts = {"progress": progress}
    pairs = profile.pairs()
    symmetry = profile.pairs(profile.symmetry_pairs)
    recipes = {pair: [r for r in profile.recipes if r != "one-step"] for pair in recipe_pairs(profile)}
    ablations = {pair: configurations(profile) for pair in ablation_pairs(profile)}

    def task(name, fn, args, after):
        return Task(name, fn, args, opts, tuple(after))

    tasks = [Task("data", ensure_data, (profile,), opts, exclusive=True)]
    tasks += [task(f"training {p}-{m}", ensure_training, (profile, p, m), ["data"]) for p, m in pairs]
    trained = {(p, m): [f"training {p}-{m}"] for p, m in pairs}
    # the seed paper's stage reads the follow-up sweep's matrices at the subspace estimator;
    # with its own full-space estimator it needs only the runs and goes first (the longest)
    reuses_sweep = profile.seed_paper_estimator == "subspace"
    seed_paper = [task(f"seed-paper influence {p}-{m}", ensure_seed_paper, (profile, p, m),
                       [f"influence {p}-{m}"] if reuses_sweep else trained[p, m])
                  for p, m in pairs]
    tasks += [] if reuses_sweep else seed_paper
    tasks += [task(f"influence {p}-{m}", ensure_influence, (profile, p, m), trained[p, m])
              for p, m in pairs]
    tasks += [task(f"symmetry {p}-{m}", ensure_symmetry, (profile, p, m), trained[p, m])
              for p, m in symmetry]
    tasks += seed_paper if reuses_sweep else []
    tasks += [task(f"estimator study {p}-{m}", ensure_estimator_pair, (profile, p, m),
                   trained[p, m]) for p, m in study_pairs(profile)]
    tasks += [task(f"rollouts {p}-{m}", ensure_rollouts, (profile, p, m), trained[p, m])
              for p, m in pairs]
    if ladder_stage_pair(profile) is not None:
        p, m = ladder_stage_pair(profile)
        tasks += [task(f"ladder training {p}-{m}", ensure_ladder_runs, (profile,), ["data"]),
                  task(f"ladder {p}-{m}", ensure_ladder, (profile,),
                       [f"ladder training {p}-{m}", f"training {p}-{m}"])]
    # our studies' own runs come after every analysis of the baseline runs
    tasks += [task(f"training {r} {p}-{m}", ensure_recipe_runs, (profile, p, m, r), ["data"])
              for (p, m), names in recipes.items() for r in names]
    tasks += [task(f"training ablation {a} {p}-{m}", ensure_ablation_runs, (profile, a, p, m),
                   ["data"]) for (p, m), names in ablations.items() for a in names]
    # per recipe its own stage (one-step reads the sweep); augment vs one-step orbit influence
    # its own (it reuses the symmetry stage's files); then the pair's study reads them all
    baseline = {(p, m): [f"training {p}-{m}", f"influence {p}-{m}", f"rollouts {p}-{m}"]
                for p, m in recipes}
    tasks += [task(f"interventions {r} {p}-{m}", ensure_recipe_study, (profile, p, m, r),
                   ([] if r == "one-step" else [f"training {r} {p}-{m}"]) + baseline[p, m])
              for (p, m) in recipes for r in profile.recipes]
    orbit = orbit_recipes(profile)  # the same for every pair
    tasks += [task(f"interventions orbit {p}-{m}", ensure_orbit_pair, (profile, p, m),
                   [f"training {r} {p}-{m}" if r != "one-step" else f"training {p}-{m}"
                    for r in orbit] + ([f"symmetry {p}-{m}"] if (p, m) in symmetry else []))
              for (p, m) in recipes if orbit]
    tasks += [task(f"interventions {p}-{m}", ensure_intervention_pair, (profile, p, m),
                   [f"interventions {r} {p}-{m}" for r in profile.recipes]
                   + ([f"interventions orbit {p}-{m}"] if orbit else []))
              for (p, m) in recipes]
    tasks += [task(f"ablation {p}-{m}", ensure_ablation_pair, (profile, p, m),
                   [f"training ablation {a} {p}-{m}" for a in names]
                   + _baseline_stages(profile, p, m, symmetry))
              for (p, m), names in ablations.items()]
    # every study's findings records, from all of the above, before the notebooks show them
    tasks.append(Task("findings", findings_stage, (profile,), opts, tuple(t.name for t in tasks)))
    return tasks


def _baseline_stages(profile, pde: str, model: str, symmetry) -> list[str]:
    """The cached stages of the baseline run that the recipe and ablation studies read."""
    pair = f"{pde}-{model}"
    names = [f"training {pair}", f"influence {pair}", f"rollouts {pair}"]
    return names + ([f"symmetry {pair}"] if (pde, model) in symmetry else [])


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

    eta = stage_eta(profile, workers) if progress else None
    run_tasks(tasks, workers=workers, echo=progress, on_result=record, eta=eta)
    return timings


def stage_eta(profile, workers: int) -> EtaClock | None:
    """An `EtaClock` from the planner's estimate of every stage (a few seconds of measuring
    this machine), printed once as the run's prior total; None where planning fails (the run
    goes on without an ETA)."""
    from pdeinf.pipeline.planner import plan

    try:
        stages = plan(profile, notebooks=False)["stages"]
    except Exception as err:  # the estimate is a courtesy: never a reason to stop a run
        print(f"[pdeinf] no ETA ({type(err).__name__}: {err})", file=sys.stderr, flush=True)
        return None
    clock = EtaClock({s.stage: s.seconds for s in stages}, workers)
    print(f"[pdeinf] estimated before starting: {format_duration(clock.seconds_left())} on "
          f"{workers} worker(s); the ETA is rescaled by each stage's measured time",
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
    """Data, training, influence sweeps, rollouts, then every notebook (or the selected
    ones) through papermill; executed copies under ``results/executed/``, and at the committed
    profile their outputs written into the notebooks (`publish.publish_notebooks`). Prints the closing
    table and writes it to ``results/reproduce_<profile>.json``. Notebook failures do not
    stop the others; they are listed in the report (``report.failed``). `workers`: processes
    for the stages (None: `schedule.default_workers()`)."""
    profile = as_profile(profile)
    workers = default_workers() if workers is None else workers
    selected = [] if only_pipeline else list_notebooks(notebooks)  # validate before long work
    if not only_pipeline and not selected:
        raise InputError(f"notebooks: no numbered notebooks found in {notebooks_source()}")
    check_writable(paths.results_dir(), "PDEINF_HOME/results")
    with guarded_run(paths.results_dir()):
        report = _reproduce_locked(profile, selected, progress=progress, workers=workers)
    print(format_report(report), flush=True)
    return report


def _reproduce_locked(profile, selected, *, progress: bool, workers: int) -> ReproduceReport:
    report = ReproduceReport(profile.name, workers=workers)
    began = time.perf_counter()
    run_all(profile, progress=progress, timings=report.timings, workers=workers)
    report.pipeline_wall = time.perf_counter() - began
    entries = run_notebooks(profile, selected, report.timings, progress=progress, workers=workers)
    publish_notebooks(profile.name, entries)  # the committed profile's outputs, into the notebooks
    report.notebooks.extend(entries)
    report.wall = time.perf_counter() - began
    write_json(paths.results_dir() / f"reproduce_{profile.name}.json", report.to_dict(), default=str)
    return report


def run_notebooks(profile, selected, timings: list[StageTiming], *, progress: bool = True,
                  workers: int = 1) -> list[dict]:
    """Execute (or find current) every selected notebook; one report entry each, in the order
    given. Notebooks read only stage outputs and the findings table, so they run `workers` at a
    time (each in its own kernel, with `threads_per_worker(workers)` torch threads). A failure
    is reported in its entry and does not stop the others."""
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
            with _timed(timings, f"notebook {nb.stem}", echo=progress):
                executed = run_notebook(nb, profile, progress=progress, cache_key=key)
            entry.update(status="ok", executed=str(executed))
    except Exception as err:  # noqa: BLE001 - reported per notebook, others still run
        entry.update(status="failed", error=f"{type(err).__name__}: {_first_line(err)}")
    entry["seconds"] = time.perf_counter() - start
    summary = summarize_notebook(nb)
    entry.update(figures=summary["figures"], numbers=summary["numbers"],
                 verdicts=verdict_counts(profile, nb.stem), results=summary["results"])
    return entry


def verdict_counts(profile, notebook: str) -> dict[str, int]:
    """`{verdict: rows}` of the study `notebook` in the profile's findings table (empty when
    the table is absent or unreadable: the closing table is a courtesy)."""
    import json
    from collections import Counter

    from pdeinf.pipeline.findings import findings_path

    try:
        rows = json.loads(findings_path(profile).read_text())["findings"]
        return dict(sorted(Counter(r["verdict"] for r in rows if r["notebook"] == notebook).items()))
    except (OSError, ValueError, KeyError, TypeError):
        return {}


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
            for fig in nb.get("figures", []):
                lines.append(f"      figure   {_display_path(fig)}")
            numbers = ", ".join(f"{k}={_format_number(v)}" for k, v in nb.get("numbers", {}).items())
            if numbers:
                lines.append(f"      numbers  {numbers}")
            verdicts = ", ".join(f"{n} {word}" for word, n in nb.get("verdicts", {}).items())
            if verdicts:
                lines.append(f"      findings {verdicts}")
            if nb["status"] != "ok":
                lines.append(f"      error    {nb.get('error', '')}")
            if nb.get("published"):
                lines.append(f"      outputs  {_display_path(nb['published'])}")
    return "\n".join(lines)
