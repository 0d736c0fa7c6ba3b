"""Orchestration: the only layer that reads or writes `results/` (data, checkpoints, influence
files, rollouts, the studies, notebook runs, the closing table), one module per stage; where
each stage writes is the stage table (`stages.STAGES`, shown in docs/cluster.md).

Every stage output records a key of its inputs (data content, checkpoint bytes, settings,
package version) and, for result arrays, a checksum; a rerun recomputes exactly what is
missing, stale or corrupt. `reproduce` runs it all under a per-results-root lock.
"""
import functools

from pdeinf.pipeline.ablation import ensure_ablation
from pdeinf.pipeline.common import as_profile, checkpoint_path
from pdeinf.pipeline.estimator import ensure_estimator_study
from pdeinf.pipeline.findings import finding_summary, load_findings
from pdeinf.pipeline.influence import (
    FileSources,
    ensure_influence,
    ensure_seed_paper,
    load_variants,
    run_sweep,
)
from pdeinf.pipeline.interventions import ensure_intervention_pair, ensure_interventions
from pdeinf.pipeline.ladder import ensure_ladder, ensure_ladder_runs
from pdeinf.pipeline.notebooks import list_notebooks, run_notebook, summarize_notebook
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
from pdeinf.pipeline.symmetry import ensure_symmetry
from pdeinf.pipeline.training import ensure_data, ensure_training, training_history


def sweep_loader(profile, *, variants=None, progress: bool = False):
    """A loader `(pde, model) -> xr.Dataset` over the cached sweeps, for the explorer."""
    return functools.partial(load_variants, profile, names=variants, progress=progress)


__all__ = [
    "FileSources", "ReproduceReport", "StageTiming", "as_profile", "checkpoint_path",
    "ensure_ablation", "ensure_data", "ensure_estimator_study", "ensure_influence",
    "ensure_intervention_pair", "ensure_interventions", "ensure_ladder", "ensure_ladder_runs",
    "ensure_rollouts", "ensure_seed_paper", "ensure_symmetry", "ensure_training", "finding_summary",
    "format_report", "list_notebooks", "load_findings", "load_variants", "regime_cards", "reproduce",
    "rollouts_path", "run_all", "run_notebook", "run_sweep", "stage_tasks", "summarize_notebook",
    "sweep_loader", "training_history",
]
