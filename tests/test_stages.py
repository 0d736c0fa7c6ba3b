"""The stage table (`pipeline.stages`): the graph `reproduce.stage_tasks` derives from it is
the pipeline's graph as it was written out by hand (kept below as `_reference_stage_tasks`,
which documents it), every key field names an input a stage's key reads, and the stage list
of docs/cluster.md is the table's."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pdeinf.config import Profile, get_profile
from pdeinf.pipeline import stages
from pdeinf.pipeline.planner import COST_LAWS
from pdeinf.pipeline.reproduce import stage_tasks
from pdeinf.pipeline.schedule import Task, check_graph

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("smoke", "quick", "faithful", "faithful-full")


def _reference_stage_tasks(profile, *, progress: bool = True) -> list[Task]:
    """The graph as written by hand: data; the baseline runs; the seed paper's influence (first
    with its full-space estimator, after the follow-up sweep it reuses at the subspace one);
    the sweep, symmetry study, estimator study and rollouts; the regime ladder; each recipe's
    and ablation configuration's runs; the intervention studies (per recipe, the orbit study,
    the pair's study) and the ablation study; last the findings table, after everything."""
    from pdeinf.pipeline.ablation import (
        ablation_pairs,
        configurations,
        ensure_ablation_pair,
        ensure_ablation_runs,
    )
    from pdeinf.pipeline.common import as_profile
    from pdeinf.pipeline.estimator import ensure_estimator_pair, study_pairs
    from pdeinf.pipeline.findings import findings_stage
    from pdeinf.pipeline.influence import ensure_influence, ensure_seed_paper
    from pdeinf.pipeline.interventions import (
        ensure_intervention_pair,
        ensure_orbit_pair,
        ensure_recipe_runs,
        ensure_recipe_study,
        orbit_recipes,
        recipe_pairs,
    )
    from pdeinf.pipeline.ladder import ensure_ladder, ensure_ladder_runs
    from pdeinf.pipeline.ladder import stage_pair as ladder_stage_pair
    from pdeinf.pipeline.rollouts import ensure_rollouts
    from pdeinf.pipeline.symmetry import ensure_symmetry
    from pdeinf.pipeline.training import ensure_data, ensure_training

    profile = as_profile(profile)
    opts = {"progress": progress}
    pairs = profile.pairs()
    symmetry = profile.pairs(profile.symmetry_pairs)
    recipes = {pair: [r for r in profile.recipes if r != "one-step"] for pair in recipe_pairs(profile)}
    ablations = {pair: configurations(profile) for pair in ablation_pairs(profile)}

    def task(name, fn, args, after):
        return Task(name, fn, args, opts, tuple(after))

    def baseline_stages(pde, model):
        pair = f"{pde}-{model}"
        names = [f"training {pair}", f"influence {pair}", f"rollouts {pair}"]
        return names + ([f"symmetry {pair}"] if (pde, model) in symmetry else [])

    tasks = [Task("data", ensure_data, (profile,), opts, exclusive=True)]
    tasks += [task(f"training {p}-{m}", ensure_training, (profile, p, m), ["data"]) for p, m in pairs]
    trained = {(p, m): [f"training {p}-{m}"] for p, m in pairs}
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
    tasks += [task(f"training {r} {p}-{m}", ensure_recipe_runs, (profile, p, m, r), ["data"])
              for (p, m), names in recipes.items() for r in names]
    tasks += [task(f"training ablation {a} {p}-{m}", ensure_ablation_runs, (profile, a, p, m),
                   ["data"]) for (p, m), names in ablations.items() for a in names]
    baseline = {(p, m): [f"training {p}-{m}", f"influence {p}-{m}", f"rollouts {p}-{m}"]
                for p, m in recipes}
    tasks += [task(f"interventions {r} {p}-{m}", ensure_recipe_study, (profile, p, m, r),
                   ([] if r == "one-step" else [f"training {r} {p}-{m}"]) + baseline[p, m])
              for (p, m) in recipes for r in profile.recipes]
    orbit = orbit_recipes(profile)
    tasks += [task(f"interventions orbit {p}-{m}", ensure_orbit_pair, (profile, p, m),
                   [f"training {r} {p}-{m}" if r != "one-step" else f"training {p}-{m}"
                    for r in orbit] + ([f"symmetry {p}-{m}"] if (p, m) in symmetry else []))
              for (p, m) in recipes if orbit]
    tasks += [task(f"interventions {p}-{m}", ensure_intervention_pair, (profile, p, m),
                   [f"interventions {r} {p}-{m}" for r in profile.recipes]
                   + ([f"interventions orbit {p}-{m}"] if orbit else []))
              for (p, m) in recipes]
    tasks += [task(f"ablation {p}-{m}", ensure_ablation_pair, (profile, p, m),
                   [f"training ablation {a} {p}-{m}" for a in names] + baseline_stages(p, m))
              for (p, m), names in ablations.items()]
    tasks.append(Task("findings", findings_stage, (profile,), opts, tuple(t.name for t in tasks)))
    return tasks


def _narrowed(name: str) -> Profile:
    """A profile of other subsets: one PDE, no ablation configuration that differs, augment."""
    return dataclasses.replace(get_profile(name), name=f"{name}-narrowed", pdes=("CE",),
                               recipes=("one-step", "augment"), recipe_pairs=None,
                               symmetry_pairs=None, ablation_pairs=None, ladder_pair=("NS", "vit"))


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("progress", [False, True])
def test_derived_graph_is_the_hand_written_one(name, progress):
    """Same names, order, functions, arguments, `after` sets (as tuples, in order) and
    exclusivity as the graph written out by hand."""
    derived = stage_tasks(name, progress=progress)
    reference = _reference_stage_tasks(name, progress=progress)
    assert [t.name for t in derived] == [t.name for t in reference]
    for ours, theirs in zip(derived, reference):
        assert ours == theirs, ours.name
    check_graph(derived)


@pytest.mark.parametrize("name", PROFILES)
def test_derived_graph_of_other_subsets_is_the_hand_written_one(name):
    profile = _narrowed(name)
    assert stage_tasks(profile, progress=False) == _reference_stage_tasks(profile, progress=False)


def test_key_dependencies_of_the_faithful_and_smoke_graphs():
    faithful = {t.name: t for t in stage_tasks("faithful-full", progress=False)}
    assert faithful["data"].exclusive and faithful["data"].after == ()
    assert faithful["training CE-vit"].after == ("data",)
    assert faithful["seed-paper influence CE-unet"].after == ("training CE-unet",)
    assert faithful["training pushforward CE-vit"].args[1:] == ("CE", "vit", "pushforward")
    assert faithful["training ablation pdeinf CE-vit"].args[1:] == ("pdeinf", "CE", "vit")
    assert set(faithful["interventions orbit CE-vit"].after) == {
        "training CE-vit", "training augment CE-vit", "symmetry CE-vit"}
    assert faithful["ladder CE-vit"].after == ("ladder training CE-vit", "training CE-vit")
    assert faithful["ladder CE-vit"].args == (get_profile("faithful-full"),)
    assert set(faithful["findings"].after) == set(faithful) - {"findings"}
    smoke = {t.name: t for t in stage_tasks("smoke", progress=False)}
    assert smoke["seed-paper influence CE-unet"].after == ("influence CE-unet",)
    assert set(smoke["ablation CE-unet"].after) >= {"training CE-unet", "influence CE-unet",
                                                    "rollouts CE-unet", "symmetry CE-unet"}


def test_every_task_of_a_kind_is_named_after_it_and_has_its_cost_law():
    for name in PROFILES:
        profile = get_profile(name)
        for kind, unit in stages.stage_units(profile):
            assert stages.find(profile, kind.name(unit)) == (kind, unit)
            assert kind.law(unit) in COST_LAWS
    assert stages.find(get_profile("smoke"), "notebook 01_data") is None


def test_kinds_are_unique_and_key_fields_name_profile_fields_or_inputs():
    kinds = [k.kind for k in stages.STAGES]
    assert len(set(kinds)) == len(kinds)
    fields = {f.name for f in dataclasses.fields(Profile)}
    for kind in stages.STAGES:
        unknown = [f for f in kind.key_fields if f not in fields and f not in stages.INPUTS]
        assert not unknown, (kind.kind, unknown)


def test_training_key_fields_cover_the_training_key():
    from pdeinf.pipeline.training import _TRAINING_FIELDS

    for name in ("training", "training recipe", "training ablation"):
        assert set(_TRAINING_FIELDS) <= set(stages.kind(name).key_fields), name


def test_outputs_lie_under_the_results_or_figures_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    profile = get_profile("smoke")
    for kind, unit in stages.stage_units(profile):
        out = kind.output(profile, unit)
        assert out.is_relative_to(tmp_path / "results") or out.is_relative_to(tmp_path / "figures")
        assert profile.name in out.parts, (kind.kind, out)


def test_docs_list_the_table():
    text = (REPO / "docs" / "cluster.md").read_text()
    assert stages.markdown_table() in text
