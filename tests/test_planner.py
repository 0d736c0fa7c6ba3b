"""`pdeinf reproduce --plan`: the planner's estimates against the measured stage times of a small
profile (other sizes than the smoke profile its constants were fitted to), and the paper
profile's plan on the command line."""
from __future__ import annotations

import dataclasses

import pytest

from pdeinf.cli import main
from pdeinf.config import get_profile
from pdeinf.pipeline.planner import GPU_SPEEDUP, plan
from pdeinf.pipeline.reproduce import stage_tasks
from pdeinf.pipeline.schedule import run_tasks
from pdeinf.pipeline.slurm import select_stages

pytestmark = pytest.mark.slow

CHECKED = ["data", "training CE-unet", "influence CE-unet", "rollouts CE-unet"]
SMALL = dataclasses.replace(get_profile("smoke"), name="plan-check", pdes=("CE",),
                            models=("unet",), n_trajectories=12, epochs={"CE": 6},
                            checkpoints={"CE": (6,)}, seeds=(10,))


def test_estimates_within_a_factor_two_of_measured_stage_times(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    estimate = {row.stage: row for row in plan(SMALL, stages=CHECKED[-2:])["stages"]}
    measured: dict[str, float] = {}
    tasks = select_stages(stage_tasks(SMALL, progress=False), CHECKED[-2:])
    run_tasks(tasks, workers=1, echo=False,
              on_result=lambda r: measured.__setitem__(r.name, r.seconds))
    assert set(estimate) == set(measured) == set(CHECKED)
    ratios = {name: estimate[name].seconds / measured[name] for name in CHECKED}
    assert all(0.5 <= r <= 2.0 for r in ratios.values()), ratios
    row = estimate["training CE-unet"]
    assert row.gpu and row.gpu_hours == pytest.approx(row.seconds / GPU_SPEEDUP / 3600)
    assert row.peak_memory > 0 and row.output > 0 and not estimate["data"].gpu


def test_paper_plan_prints_gpu_hours_and_totals(capsys):
    assert main(["reproduce", "--profile", "paper", "--plan", "--stages", "training CE-vit"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "GPU-h" in line)
    assert "CPU-h" in header and "peak mem" in header and "output" in header
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert {"data", "training", "total"} <= set(rows)
    total_gpu_hours = float(rows["total"].split()[1])
    assert total_gpu_hours > 1, "3 paper-size training runs take GPU-hours, not minutes"
    assert "4,5" in out or "parameters" in out


def test_a_sweep_counts_each_drift_bra_as_one_more_matrix():
    """A CE sweep task stores the mass and energy drift bras, each its own per-example gradients
    and metric pass: at the same model cost it is estimated at three NS sweep tasks."""
    from pdeinf.influence.variants import variants_for
    from pdeinf.pipeline.planner import ModelCost, stage_seconds, sweep_matrices

    assert "gn-mass" in variants_for("CE") and "gn-mass" not in variants_for("NS")
    assert (sweep_matrices("CE"), sweep_matrices("NS")) == (3, 1)
    profile = dataclasses.replace(get_profile("smoke"), checkpoints={"CE": (2, 4), "NS": (2, 4)})
    cost = ModelCost(parameters=1000, call_seconds=0.01, example_seconds=0.002, activation_bytes=1.0)
    ce, ns = (stage_seconds(profile, "influence", pde, cost, tick=0.01) for pde in ("CE", "NS"))
    assert ce == pytest.approx(3 * ns) and ns > 0


def test_one_step_studies_and_the_gathering_stage_are_planned_as_what_they_compute():
    """The one-step recipe reads its influence from the follow-up sweep, so it is planned as its
    rollouts; the pair's interventions stage only reads what the recipe stages wrote."""
    from pdeinf.pipeline import stages
    from pdeinf.pipeline.planner import (
        STAGE_TICKS,
        ModelCost,
        plan_stage,
        rollout_seconds,
        stage_seconds,
    )

    recipe, pair = stages.kind("interventions recipe"), stages.kind("interventions")
    assert recipe.law(("CE", "vit", "one-step")) == "study rollouts"
    assert recipe.law(("CE", "vit", "pushforward")) == "study" and pair.law(("CE", "vit")) == "gather"
    profile = get_profile("quick")
    cost = ModelCost(parameters=1000, call_seconds=0.01, example_seconds=0.002, activation_bytes=1.0)
    rollouts = stage_seconds(profile, "study rollouts", "CE", cost, tick=0.01)
    assert rollouts == rollout_seconds(profile, cost) < stage_seconds(profile, "study", "CE", cost, tick=0.01)
    gathered = plan_stage(profile, "interventions CE-vit", {}, 0.01, "gather")
    assert gathered.seconds == pytest.approx(STAGE_TICKS * 0.01) and not gathered.gpu
