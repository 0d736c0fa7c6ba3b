"""The stage table: every kind of stage of `pdeinf reproduce`, declared once.

Each `StageKind` says what it computes, for which units of the profile (a unit: the function's
arguments after the profile, e.g. ``("CE", "vit")``), how its tasks are named, what it runs
after, where it writes, what its content key reads, the variables its files hold and the
planner's cost law. The graph (`reproduce.stage_tasks`), the planner and the Slurm executor
derive from it; docs/cluster.md shows it (`markdown_table`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pdeinf import paths
from pdeinf.config import PDE_SPECS, Profile, get_profile
from pdeinf.influence.task import DATA_VARS as SWEEP_VARS
from pdeinf.pipeline import ablation, estimator, interventions, ladder
from pdeinf.pipeline.findings import findings_path, findings_stage
from pdeinf.pipeline.influence import SEED_PAPER, ensure_influence, ensure_seed_paper, sweep_dir
from pdeinf.pipeline.rollouts import ROLLOUT_VARS, ensure_rollouts, rollouts_path
from pdeinf.pipeline.symmetry import DATA_VARS as SYMMETRY_VARS
from pdeinf.pipeline.symmetry import ensure_symmetry, symmetry_dir
from pdeinf.pipeline.training import ensure_data, ensure_training

Unit = tuple  # a stage function's arguments after the profile: (), (pde, model), ...
#: Inputs of content keys that are not profile fields: checkpoint bytes, data content.
INPUTS = ("checkpoint", "data")
#: What every trained run's key reads (`training.training_key`), besides its seed.
TRAINING_KEY = ("data", "resolution", "model_size", "model_variant", "residual", "epochs",
                "checkpoints", "batch_size", "lr", "weight_decay", "t_max", "split")
#: What every influence computation's key reads: the checkpoint, the data, the engine's settings.
ENGINE_KEY = ("checkpoint", "data", "damping", "energy_tol", "t_max")


@dataclass(frozen=True)
class StageKind:
    """One kind of stage. A task per unit of `units(profile)`, named `title` filled with the
    unit (its parts named by `unit_fields`), runs `compute(profile, *unit)` (`compute(profile)`
    unless `takes_unit`) once every task of `after(profile, unit)` (pairs of a kind's name and
    a unit) has succeeded, and writes `output(profile, unit)` (a folder or a file)."""

    kind: str
    compute: Callable
    title: str
    unit_fields: tuple[str, ...]
    units: Callable[[Profile], list[Unit]]
    after: Callable[[Profile, Unit], list[tuple[str, Unit]]]
    output: Callable[[Profile, Unit], Path]
    key_fields: tuple[str, ...]  # fields of the profile and `INPUTS` its content key reads
    variables: tuple[str, ...]  # data variables each of its netCDF files must hold
    #: the planner's law for its time, memory and output (`planner.COST_LAWS`), or a function
    #: of the unit that gives it
    cost_law: str | Callable[[Unit], str]
    takes_unit: bool = True
    exclusive: bool = False  # runs alone, in the driver's process (`schedule.Task.exclusive`)

    def name(self, unit: Unit) -> str:
        return self.title.format(**dict(zip(self.unit_fields, unit)))

    def arguments(self, profile: Profile, unit: Unit) -> tuple:
        return (profile, *unit) if self.takes_unit else (profile,)

    def law(self, unit: Unit) -> str:
        """The planner's cost law of the task of `unit`."""
        return self.cost_law if isinstance(self.cost_law, str) else self.cost_law(unit)


# ---- units: which pairs, recipes and configurations each kind runs for ----------------------
def _symmetry_pairs(profile: Profile) -> list[Unit]:
    return profile.pairs(profile.symmetry_pairs)


def _ladder_pairs(profile: Profile) -> list[Unit]:
    pair = ladder.stage_pair(profile)
    return [] if pair is None else [pair]


def _recipe_studies(profile: Profile, trained_only: bool = False) -> list[Unit]:
    """(pde, model, recipe) of the study; `trained_only`: the recipes with runs of their own
    (all but one-step, whose runs are the baseline's)."""
    return [(p, m, r) for p, m in interventions.recipe_pairs(profile) for r in profile.recipes
            if not (trained_only and r == "one-step")]


def _ablation_runs(profile: Profile) -> list[Unit]:
    return [(a, p, m) for p, m in ablation.ablation_pairs(profile) for a in ablation.configurations(profile)]


# ---- after: the stages whose outputs a task reads ---------------------------------------------
def _baseline(profile: Profile, pair: Unit) -> list[tuple[str, Unit]]:
    """The baseline run's stages the recipe and ablation studies read."""
    return [("training", pair), ("influence", pair), ("rollouts", pair)]


def _symmetry_of(profile: Profile, pair: Unit) -> list[tuple[str, Unit]]:
    return [("symmetry", pair)] if pair in _symmetry_pairs(profile) else []


def _after_recipe_runs(profile: Profile, unit: Unit) -> list[tuple[str, Unit]]:
    """Its recipe's runs (one-step: the baseline's, among the baseline stages) and the
    baseline's sweep and rollouts."""
    pde, model, recipe = unit
    own = [] if recipe == "one-step" else [("training recipe", unit)]
    return own + _baseline(profile, (pde, model))


def _after_orbit_inputs(profile: Profile, pair: Unit) -> list[tuple[str, Unit]]:
    """The compared recipes' runs and the symmetry stage, whose one-step files it reuses."""
    runs = [("training", pair) if r == "one-step" else ("training recipe", (*pair, r))
            for r in interventions.orbit_recipes(profile)]
    return runs + _symmetry_of(profile, pair)


def _after_recipe_studies(profile: Profile, pair: Unit) -> list[tuple[str, Unit]]:
    studies = [("interventions recipe", (*pair, r)) for r in profile.recipes]
    return studies + ([("interventions orbit", pair)] if interventions.orbit_recipes(profile) else [])


def _after_ablation_runs(profile: Profile, pair: Unit) -> list[tuple[str, Unit]]:
    runs = [("training ablation", (a, *pair)) for a in ablation.configurations(profile)]
    return runs + _baseline(profile, pair) + _symmetry_of(profile, pair)


def _after_everything(profile: Profile, unit: Unit) -> list[tuple[str, Unit]]:
    """Every other task of the profile, in priority order."""
    return [(k.kind, u) for k, u in stage_units(profile) if k.kind != "findings"]


def _recipe_study_law(unit: Unit) -> str:
    """One-step reads its influence from the follow-up sweep and computes only its rollouts."""
    return "study rollouts" if unit[2] == "one-step" else "study"


def _ladder_runs_dir(profile: Profile, unit: Unit) -> Path:
    """The folder of the rungs' runs (the rungs at the profile's own size are its runs)."""
    trained = [r for r in ladder.rungs(profile) if not r.own]
    return ladder.rung_runs_root(profile, trained[0]).parent if trained else paths.runs_dir(profile.name)


PAIR = ("pde", "model")
RECIPE_KEY = ("recipes", "recipe_seeds", "seeds", "checkpoints")

#: The stage table, in priority order (ready tasks start in this order; see `priority_order`).
STAGES: tuple[StageKind, ...] = (
    StageKind("data", ensure_data, "data", (), lambda p: [()], lambda p, u: [],
              lambda p, u: paths.data_dir(p.name),
              key_fields=("pdes", "n_trajectories", "resolution", "solver_resolution"),
              variables=tuple(dict.fromkeys(v for s in PDE_SPECS.values() for v in s.stored_variables)),
              cost_law="data", exclusive=True),
    StageKind("training", ensure_training, "training {pde}-{model}", PAIR, lambda p: p.pairs(),
              lambda p, u: [("data", ())], lambda p, u: paths.runs_dir(p.name),
              key_fields=("seeds", *TRAINING_KEY), variables=(), cost_law="training"),
    # the runs; at the subspace estimator the follow-up sweep, whose matrices it reuses
    StageKind("seed-paper influence", ensure_seed_paper, "seed-paper influence {pde}-{model}", PAIR,
              lambda p: p.pairs(), lambda p, u: [("influence" if reads_sweep(p) else "training", u)],
              lambda p, u: sweep_dir(p, *u, study=SEED_PAPER),
              key_fields=(*ENGINE_KEY, "seeds", "checkpoints", "seed_paper_batches", "seed_paper_estimator",
                          "fullspace_damping", "fullspace_rtol"),
              variables=SEED_PAPER.data_vars, cost_law="seed-paper"),
    StageKind("influence", ensure_influence, "influence {pde}-{model}", PAIR, lambda p: p.pairs(),
              lambda p, u: [("training", u)], lambda p, u: sweep_dir(p, *u),
              key_fields=(*ENGINE_KEY, "seeds", "checkpoints", "n_influence_batches"),
              variables=SWEEP_VARS, cost_law="influence"),
    StageKind("symmetry", ensure_symmetry, "symmetry {pde}-{model}", PAIR, _symmetry_pairs,
              lambda p, u: [("training", u)], lambda p, u: symmetry_dir(p, *u),
              key_fields=(*ENGINE_KEY, "seeds", "checkpoints", "symmetry_orbit_epochs", "symmetry_batches",
                          "symmetry_shifts", "symmetry_box"),
              variables=SYMMETRY_VARS, cost_law="symmetry"),
    StageKind("estimator study", estimator.ensure_estimator_pair, "estimator study {pde}-{model}", PAIR,
              estimator.study_pairs, lambda p, u: [("training", u)],
              lambda p, u: estimator.task_file(p, *u, p.seeds[0]).parent,
              key_fields=(*ENGINE_KEY, "seeds", "checkpoints", "estimator_lambdas",
                          "estimator_rtols", "estimator_pairs", "estimator_times", "estimator_maxiter",
                          "estimator_fullspace_seeds", "fullspace_damping", "fullspace_rtol"),
              variables=(), cost_law="estimator study"),  # its variables depend on the seed
    StageKind("rollouts", ensure_rollouts, "rollouts {pde}-{model}", PAIR, lambda p: p.pairs(),
              lambda p, u: [("training", u)], lambda p, u: rollouts_path(p, *u),
              key_fields=("checkpoint", "data", "seeds", "checkpoints", "n_influence_batches", "t_max"),
              variables=ROLLOUT_VARS, cost_law="rollouts"),
    StageKind("ladder training", ladder.ensure_ladder_runs, "ladder training {pde}-{model}", PAIR,
              _ladder_pairs, lambda p, u: [("data", ())], _ladder_runs_dir,
              key_fields=("data", "ladder_pair", "ladder_seeds", "ladder_widths", "ladder_trajectories",
                          "epochs", "checkpoints", "lr", "batch_size", "model_size", "t_max"),
              variables=(), cost_law="ladder training", takes_unit=False),
    StageKind("ladder", ladder.ensure_ladder, "ladder {pde}-{model}", PAIR, _ladder_pairs,
              lambda p, u: [("ladder training", u), ("training", u)],
              lambda p, u: ladder.ladder_path(p),
              key_fields=(*ENGINE_KEY, "ladder_pair", "ladder_seeds", "ladder_widths", "ladder_trajectories",
                          "checkpoints", "fullspace_damping", "fullspace_rtol"),
              variables=ladder.MEASUREMENT_VARS, cost_law="ladder", takes_unit=False),
    StageKind("training recipe", interventions.ensure_recipe_runs, "training {recipe} {pde}-{model}",
              (*PAIR, "recipe"), lambda p: _recipe_studies(p, trained_only=True), lambda p, u: [("data", ())],
              lambda p, u: interventions.recipe_run_dir(p, *u, p.seeds[0]).parent,
              key_fields=("recipes", "recipe_seeds", "seeds", *TRAINING_KEY), variables=(),
              cost_law="study training"),
    StageKind("training ablation", ablation.ensure_ablation_runs,
              "training ablation {configuration} {pde}-{model}", ("configuration", *PAIR),
              _ablation_runs, lambda p, u: [("data", ())],
              lambda p, u: ablation.run_dir(p, *u, p.seeds[0]).parent,
              key_fields=("recipe_seeds", "seeds", *TRAINING_KEY), variables=(), cost_law="study training"),
    StageKind("interventions recipe", interventions.ensure_recipe_study,
              "interventions {recipe} {pde}-{model}", (*PAIR, "recipe"), _recipe_studies,
              _after_recipe_runs, lambda p, u: interventions.study_dir(p, *u[:2]) / u[2],
              key_fields=(*ENGINE_KEY, *RECIPE_KEY, "recipe_batches", "n_influence_batches"),
              variables=interventions.DATA_VARS, cost_law=_recipe_study_law),
    StageKind("interventions orbit", interventions.ensure_orbit_pair, "interventions orbit {pde}-{model}",
              PAIR, lambda p: interventions.recipe_pairs(p) if interventions.orbit_recipes(p) else [],
              _after_orbit_inputs, lambda p, u: interventions.study_dir(p, *u),
              key_fields=(*ENGINE_KEY, *RECIPE_KEY, "symmetry_batches", "n_influence_batches"),
              variables=interventions.ORBIT_VARS, cost_law="study"),
    StageKind("interventions", interventions.ensure_intervention_pair, "interventions {pde}-{model}",
              PAIR, interventions.recipe_pairs, _after_recipe_studies,
              lambda p, u: interventions.study_dir(p, *u),
              key_fields=(*ENGINE_KEY, *RECIPE_KEY, "recipe_batches", "symmetry_batches",
                          "n_influence_batches"),
              variables=interventions.DATA_VARS, cost_law="gather"),  # reads what the two above wrote
    StageKind("ablation", ablation.ensure_ablation_pair, "ablation {pde}-{model}", PAIR,
              ablation.ablation_pairs, _after_ablation_runs, lambda p, u: ablation.study_dir(p, *u),
              key_fields=(*ENGINE_KEY, "recipe_seeds", "seeds", "checkpoints", "n_influence_batches"),
              variables=interventions.DATA_VARS, cost_law="study"),
    StageKind("findings", findings_stage, "findings", (), lambda p: [()], _after_everything,
              lambda p, u: findings_path(p),
              key_fields=(), variables=(), cost_law="findings"),  # rewritten when its text changes
)


def kind(name: str) -> StageKind:
    """The table's row of stage kind `name` (KeyError naming it otherwise)."""
    for row in STAGES:
        if row.kind == name:
            return row
    raise KeyError(f"no stage kind {name!r}")


def reads_sweep(profile: Profile) -> bool:
    """Whether the seed paper's stage reads the follow-up sweep's matrices (subspace estimator)."""
    return profile.seed_paper_estimator == "subspace"


def priority_order(profile: Profile) -> list[StageKind]:
    """The table's kinds in the order their ready tasks start: the table's order, except that
    the seed paper's stage, when it reads the follow-up sweep, comes after the symmetry study
    (with its own full-space estimator it needs only the runs, and goes first: the longest)."""
    order = list(STAGES)
    if reads_sweep(profile):
        seed_paper = kind("seed-paper influence")
        order.remove(seed_paper)
        order.insert(order.index(kind("symmetry")) + 1, seed_paper)
    return order


def stage_units(profile: Profile) -> list[tuple[StageKind, Unit]]:
    """Every (kind, unit) of the profile's graph, in priority order."""
    return [(k, tuple(u)) for k in priority_order(profile) for u in k.units(profile)]


def after_names(profile: Profile, row: StageKind, unit: Unit) -> list[str]:
    """The names of the tasks the task of (`row`, `unit`) runs after."""
    return [kind(name).name(other) for name, other in row.after(profile, unit)]


def find(profile: Profile, name: str) -> tuple[StageKind, Unit] | None:
    """The kind and unit of the profile's task called `name`; None when there is none (a
    notebook)."""
    return next(((k, u) for k, u in stage_units(profile) if k.name(u) == name), None)


def markdown_table() -> str:
    """The table as Markdown, for docs/cluster.md: per kind the name of its first task, its
    output and the kinds it runs after, at the faithful profile (paths from the project root)."""
    profile = get_profile("faithful-full")  # every kind of stage has tasks there
    rows = ["| stage kind | first task | output | runs after |", "|---|---|---|---|"]
    for row in STAGES:
        unit = row.units(profile)[0]
        output = row.output(profile, unit).relative_to(paths.root())
        before = {name for u in row.units(profile) for name, _ in row.after(profile, u)}
        after = ("every other stage" if row.kind == "findings"
                 else ", ".join(k.kind for k in STAGES if k.kind in before) or "nothing")
        rows.append(f"| {row.kind} | `{row.name(unit)}` | `{output}` | {after} |")
    return "\n".join(rows)
