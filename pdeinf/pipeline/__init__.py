"""Orchestration: the only layer that reads or writes `results/` (data, checkpoints, influence
files, rollouts, the studies, notebook runs, the closing table), one module per stage; where
each stage writes is the stage table (`stages.STAGES`, shown in docs/cluster.md).

Every stage output records a key of its inputs (data content, checkpoint bytes, settings,
package version) and, for result arrays, a checksum; a rerun recomputes exactly what is
missing, stale or corrupt. `reproduce` runs it all under a per-results-root lock.
"""
import functools

from pdeinf.pipeline.ablation import ensure_ablation, ensure_ablation_pair
from pdeinf.pipeline.common import as_profile, checkpoint_path
from pdeinf.pipeline.estimator import ensure_estimator_study
from pdeinf.pipeline.findings import (
    ablation_markdown,
    collect_findings,
    finding_lines,
    finding_summary,
    findings_markdown,
    findings_stage,
    load_findings,
    write_findings,
)
from pdeinf.pipeline.influence import (
    FileSources,
    ensure_influence,
    ensure_seed_paper,
    load_sweep,
    load_variants,
    run_sweep,
)
from pdeinf.pipeline.interventions import ensure_intervention_pair, ensure_interventions
from pdeinf.pipeline.ladder import ensure_ladder, ensure_ladder_runs
from pdeinf.pipeline.notebooks import (
    executed_dir,
    list_notebooks,
    notebook_cache_key,
    run_notebook,
    summarize_notebook,
)
from pdeinf.pipeline.regime import regime_cards
from pdeinf.pipeline.reproduce import (
    ReproduceReport,
    StageTiming,
    format_report,
    reproduce,
    run_all,
    stage_tasks,
)
from pdeinf.pipeline.rollouts import ensure_rollouts, rollouts_path
from pdeinf.pipeline.symmetry import ensure_symmetry, symmetry_loader
from pdeinf.pipeline.training import (
    ensure_data,
    ensure_training,
    training_complete,
    training_history,
)


def sweep_loader(profile, *, variants=None, progress: bool = False):
    """A loader `(pde, model) -> xr.Dataset` over the cached sweeps, for the explorer."""
    return functools.partial(load_variants, profile, names=variants, progress=progress)


__all__ = [
    "FileSources", "ReproduceReport", "StageTiming", "ablation_markdown", "as_profile",
    "checkpoint_path", "collect_findings", "ensure_ablation", "ensure_ablation_pair",
    "ensure_data", "ensure_estimator_study", "ensure_influence", "ensure_intervention_pair",
    "ensure_interventions", "ensure_ladder", "ensure_ladder_runs", "ensure_rollouts",
    "ensure_seed_paper", "ensure_symmetry", "ensure_training", "executed_dir", "finding_lines",
    "finding_summary", "findings_markdown", "findings_stage", "format_report", "list_notebooks",
    "load_findings", "load_sweep", "load_variants", "notebook_cache_key", "regime_cards",
    "reproduce", "rollouts_path", "run_all", "run_notebook", "run_sweep", "stage_tasks",
    "summarize_notebook", "sweep_loader", "symmetry_loader", "training_complete",
    "training_history", "write_findings",
]
