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
from pdeinf.pipeline.ablation import ensure_ablation
from pdeinf.pipeline.common import ProfileLike, as_profile
from pdeinf.pipeline.data import ensure_data
from pdeinf.pipeline.estimator import ensure_estimator_study
from pdeinf.pipeline.influence import ensure_influence, ensure_seed_paper
from pdeinf.pipeline.interventions import ensure_interventions
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

    @property
    def failed(self) -> list[dict]:
        return [nb for nb in self.notebooks if nb["status"] != "ok"]

    def to_dict(self) -> dict:
        return {
            "profile": self.profile,
            "timings": [t.__dict__ for t in self.timings],
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


def run_all(
    profile: ProfileLike, *, progress: bool = True, timings: list[StageTiming] | None = None
) -> list[StageTiming]:
    """Every cached stage for every (PDE, model) of the profile: data, training, influence
    sweep, rollouts. Returns the wall time of each stage (cached stages take ~0 s)."""
    profile = as_profile(profile)
    timings = [] if timings is None else timings
    with _timed(timings, "data", echo=progress):
        ensure_data(profile, progress=progress)
    for pde in profile.pdes:
        for model in profile.models:
            with _timed(timings, f"training {pde}-{model}", echo=progress):
                ensure_training(profile, pde, model, progress=progress)
            with _timed(timings, f"influence {pde}-{model}", echo=progress):
                ensure_influence(profile, pde, model, progress=progress)
            with _timed(timings, f"seed-paper influence {pde}-{model}", echo=progress):
                ensure_seed_paper(profile, pde, model, progress=progress)
            with _timed(timings, f"rollouts {pde}-{model}", echo=progress):
                ensure_rollouts(profile, pde, model, progress=progress)
    for pde, model in profile.pairs(profile.symmetry_pairs):
        with _timed(timings, f"symmetry {pde}-{model}", echo=progress):
            ensure_symmetry(profile, pde, model, progress=progress)
    with _timed(timings, "estimator study", echo=progress):
        ensure_estimator_study(profile, progress=progress)
    with _timed(timings, "interventions", echo=progress):
        ensure_interventions(profile, progress=progress)
    with _timed(timings, "ablation", echo=progress):
        ensure_ablation(profile, progress=progress)
    return timings




def reproduce(
    profile: ProfileLike,
    *,
    notebooks: Sequence[str] | str | None = None,
    only_pipeline: bool = False,
    progress: bool = True,
) -> ReproduceReport:
    """Data, training, influence sweeps, rollouts, then every notebook (or the selected
    ones) through papermill; executed copies under ``results/executed/``. Prints the closing
    table and writes it to ``results/reproduce_<profile>.json``. Notebook failures do not
    stop the others; they are listed in the report (``report.failed``)."""
    profile = as_profile(profile)
    selected = [] if only_pipeline else list_notebooks(notebooks)  # validate before long work
    if not only_pipeline and not selected:
        raise InputError(f"notebooks: no numbered notebooks found in {notebooks_source()}")
    check_writable(paths.results_dir(), "PDEINF_HOME/results")
    with results_lock(paths.results_dir()):
        remove_stale_temporaries(paths.results_dir(), recursive=True)
        report = _reproduce_locked(profile, selected, progress=progress)
    print(format_report(report), flush=True)
    return report


def _reproduce_locked(profile, selected, *, progress: bool) -> ReproduceReport:
    report = ReproduceReport(profile.name)
    run_all(profile, progress=progress, timings=report.timings)
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
    lines.append(f"  {'total':<{width}}  {sum(t.seconds for t in report.timings):9.1f}")
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
