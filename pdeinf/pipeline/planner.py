"""`pdeinf reproduce --plan`: what each stage of a profile will cost, before running anything.

A pass (forward, backward, one optimizer update) over B examples takes ``a + B x F / R`` seconds:
F the FLOPs of one example's pass (torch's FlopCounterMode on the meta device, the profile's model
and resolution), R this machine's FLOP/s (a timed 3x3 convolution), a the per-call overhead (the
smoke-size model timed on two 16x16 examples, less its FLOPs). A stage is a number of passes plus
`STAGE_TICKS` ticks, by the cost law its stage kind names (`stages.StageKind.cost_law`).

Cost law: passes (N = 48 examples of an influence batch: 3 classes x 16 times)
  training: seeds x epochs x ((a pass per batch + `VALIDATION` x validation) x `TRAINING_PASSES`
    + `EPOCH_TICKS` ticks); study training: the same with the study seeds (recipe, ablation runs)
  influence: sweep tasks x N x `SWEEP_PASSES` x (1 + drift bras of the PDE: `sweep_matrices`)
  seed-paper: tasks x N x `MATRIX_PASSES` (subspace) or x `FULLSPACE_PASSES` (full-space)
  symmetry: seeds x batches x group elements x N x `MATRIX_PASSES` x orbit epochs
  estimator study: seeds x N x `MATRIX_PASSES` x (lambdas + rtols x `KRYLOV_MATVECS`)
  rollouts: seeds x test trajectories x 16 steps x `FORWARD`
  study: the sweeps (study seeds x checkpoints x batches) and rollouts of the study's runs;
    study rollouts: the rollouts alone (one-step, whose influence is the follow-up sweep's)
  gather: `STAGE_TICKS` alone (a stage that reads what the stages before it wrote)
  ladder training: ladder seeds x trained rungs x one run of the profile
  ladder: ladder seeds x rungs x N x (`MATRIX_PASSES` + `FULLSPACE_PASSES`)
  data: trajectories x solver cells x snapshots x `DATA_TICKS` ticks
  findings, notebook: `NOTEBOOK_SECONDS` each (CPU)

The constants were fitted to small CE-UNet profiles on an idle 2-core CPU (tests/test_planner.py
checks other sizes). GPU-hours assume a GPU `GPU_SPEEDUP` times faster than this machine's cores
(stated, not measured); CPU-hours are core-hours. Peak memory: model state (weights, gradients,
two Adam moments) plus one batch's activations or the N per-example gradient rows (no Krylov
basis). Output size: checkpoints, data files, influence arrays.
"""
from __future__ import annotations

import math
import os
import re
import timeit
from collections.abc import Sequence
from dataclasses import dataclass

from pdeinf.config import PDE_SPECS, get_profile
from pdeinf.storage import format_bytes

GPU_SPEEDUP = 50.0  # stated: a data-centre GPU does a pass this many times faster than these cores
#: the training loop's time per timed pass (loss reductions, finiteness check, progress)
TRAINING_PASSES = 1.2
EPOCH_TICKS = 2.0  # per epoch: validation set-up, checkpoint and resume writes, in ticks
VALIDATION = 0.35  # one validation forward pass, in passes
FORWARD = 0.35  # one forward-only pass (rollouts), in passes
#: passes per example of one subspace influence matrix of a study (symmetry, estimator, ladder,
#: recipes: per-example gradients, metric and the study's own transforms and bookkeeping)
MATRIX_PASSES = 40.0
#: passes per example of a follow-up sweep's ket matrix (per-example gradients and metric): the
#: middle of the 11-21 of the measured CE- and NS-UNet sweeps at the smoke size, `quick` and
#: `faithful` (the spread is mostly the shared machine's speed, which moved between them)
SWEEP_PASSES = 16.0
#: operator applications per column of a capped full-space solve (the estimator study)
KRYLOV_MATVECS = 60.0
#: block sweeps of the seed paper's full-space solve at its rtols: the mean over the trained
#: faithful models' stored solves (2.9 CE-UNet, 3.1 CE-ViT, 3.4 NS-UNet, 5.1 NS-ViT)
BLOCK_SWEEPS = 3.6
NOTEBOOK_SECONDS = 15.0  # a notebook run (kernel start, plotting)
DATA_TICKS = 2.2e-5  # per trajectory, solver cell and snapshot of the data generation, in ticks
#: fixed cost of any stage (imports, reading, writing), in ticks (a tick: one timed training
#: pass of the smoke-size CE-UNet on two examples, this machine's Python-bound speed)
STAGE_TICKS = 20.0
MEASURE_RESOLUTION = 16  # of the timed passes (the smoke-size models)
CHUNK = 8  # examples per vmapped call of the influence stages
BATCH_EXAMPLES = 48  # examples per influence batch (3 classes x 16 times)
BYTES = 4  # float32
#: passes per example of one full-space solve: each block sweep applies J^T J (a JVP and a VJP
#: over the batch) to all N columns of the block
FULLSPACE_PASSES = BLOCK_SWEEPS * 2 * BATCH_EXAMPLES
_PAIR = re.compile(r"(CE|NS)-(unet|vit)$")
#: The cost laws (module docstring) the stage table names, and that of a notebook.
COST_LAWS = ("data", "training", "study training", "influence", "seed-paper", "symmetry",
             "estimator study", "rollouts", "study", "study rollouts", "gather", "ladder training",
             "ladder", "findings", "notebook")
_TRAINING_LAWS = ("training", "study training")
_ROLLOUT_LAWS = ("rollouts", "study rollouts")
_STUDY_SEED_LAWS = ("study training", "study")  # the recipe and ablation runs and their studies


@dataclass(frozen=True)
class ModelCost:
    """One pass of the profile's model (its size and resolution): `call_seconds` per call plus
    `example_seconds` per example; activation bytes of one example; the parameter count."""

    parameters: int
    call_seconds: float
    example_seconds: float
    activation_bytes: float

    def seconds(self, calls: float, examples: float) -> float:
        """Time of `calls` passes over `examples` examples in all."""
        return calls * self.call_seconds + examples * self.example_seconds


@dataclass(frozen=True)
class StagePlan:
    stage: str
    seconds: float  # on this machine (all its cores)
    gpu: bool  # runs on a GPU at cluster scale
    peak_memory: float  # bytes
    output: float  # bytes

    @property
    def gpu_hours(self) -> float:
        return self.seconds / GPU_SPEEDUP / 3600 if self.gpu else 0.0

    @property
    def cpu_hours(self) -> float:
        return self.seconds * (os.cpu_count() or 1) / 3600


def _build(profile, pde: str, model: str, resolution: int, size: str):
    from pdeinf.models import build

    return build(model, channels=PDE_SPECS[pde].channels, resolution=resolution, size=size,
                 variant=profile.model_variant, residual=profile.residual)


def pass_flops(profile, pde: str, model: str, resolution: int, size: str) -> tuple[float, int]:
    """FLOPs of a forward and backward pass on one example (FlopCounterMode on the meta device:
    nothing is computed), and the parameter count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = _build(profile, pde, model, resolution, size)
        x = torch.empty(1, PDE_SPECS[pde].channels, resolution, resolution)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return float(counter.get_total_flops()), sum(p.numel() for p in net.parameters())


def _best_time(step, repeats: int) -> float:
    """Best wall time of `step()` over `repeats` calls after a warm-up: the machine's own speed,
    the least disturbed by whatever else runs on it."""
    step()
    return min(timeit.repeat(step, "gc.enable()", number=1, repeat=repeats))  # collector on, as in a run


def flop_rate(repeats: int = 10) -> float:
    """This machine's FLOP/s on a forward and backward 3x3 convolution (32 channels, 8 x 32x32)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(8, 32, 32, 32)

    def step():
        conv.zero_grad()
        conv(x).square().sum().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / _best_time(step, repeats)


def _measure_model(profile, pde: str, model: str, rate: float, *, repeats: int = 20) -> ModelCost:
    """`ModelCost`: the smoke-size model's timed call less its FLOPs at `rate`, the profile's
    model's FLOPs at `rate`, activations scaled by pixels x sqrt(parameter ratio)."""
    import torch

    torch.manual_seed(0)
    net = _build(profile, pde, model, MEASURE_RESOLUTION, "smoke")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(2, PDE_SPECS[pde].channels, MEASURE_RESOLUTION, MEASURE_RESOLUTION)
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    def step():
        saved[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = (net(x) - x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = _best_time(step, repeats)
    small, reference = pass_flops(profile, pde, model, MEASURE_RESOLUTION, "smoke")
    flops, parameters = pass_flops(profile, pde, model, profile.resolution, profile.model_size)
    pixels = (profile.resolution / MEASURE_RESOLUTION) ** 2
    activations = saved[0] / 2 * pixels * math.sqrt(parameters / reference)
    return ModelCost(parameters, max(seconds - 2 * small / rate, 0.0), flops / rate, activations)


def _stage_pair(profile, stage: str) -> tuple[str, str]:
    match = _PAIR.search(stage)
    return match.groups() if match else (profile.pdes[0], profile.models[0])


# ---- passes and sizes per stage ------------------------------------------------------------
def _transitions(profile, fraction: float) -> int:
    """One-step transitions of a split of one PDE (3 classes)."""
    return 3 * max(1, round(profile.n_trajectories * fraction)) * (profile.t_max - 1)


def training_seconds(profile, pde: str, cost: ModelCost, tick: float) -> float:
    """One training run (one seed): per epoch a pass per batch over the training transitions,
    and a forward pass over the validation transitions (batches of 256)."""
    train, val = _transitions(profile, profile.split[0]), _transitions(profile, profile.split[1])
    epoch = (cost.seconds(math.ceil(train / profile.batch_size), train)
             + VALIDATION * cost.seconds(math.ceil(val / 256), val))
    return profile.epochs[pde] * (epoch * TRAINING_PASSES + EPOCH_TICKS * tick)


def matrix_seconds(cost: ModelCost, passes: float = MATRIX_PASSES) -> float:
    """One subspace influence matrix of N examples: `passes` per example, in chunks of 8."""
    return passes * cost.seconds(BATCH_EXAMPLES / CHUNK, BATCH_EXAMPLES)


def sweep_matrices(pde: str) -> int:
    """Subspace matrices' worth of work in one sweep task of `pde`: the ket basis's, and one per
    drift bra its variants hold (each bra: its own per-example gradients and a metric pass over
    its N new directions of the joint basis)."""
    from pdeinf.influence.variants import variant, variants_for

    return 1 + sum(variant(name).observable != "smse" for name in variants_for(pde))


def _sweep_tasks(profile, pde: str) -> int:
    return len(profile.seeds) * len(profile.checkpoints[pde]) * profile.n_influence_batches


def rollout_seconds(profile, cost: ModelCost) -> float:
    """Every test trajectory rolled out 16 steps, one batch per step and seed (forward only)."""
    test = 3 * max(1, round(profile.n_trajectories * profile.split[2]))
    return len(profile.seeds) * (profile.t_max - 1) * FORWARD * cost.seconds(1, test)


def stage_seconds(profile, law: str, pde: str, cost: ModelCost, tick: float) -> float:
    """This machine's time of a model stage of cost law `law` (the module's table), without
    `STAGE_TICKS`."""
    if law in ("ladder training", "ladder"):  # each run as long as one of the profile
        from pdeinf.pipeline.ladder import rungs

        steps, seeds = rungs(profile), len(profile.ladder_seeds)
        if law == "ladder training":
            return seeds * sum(not r.own for r in steps) * training_seconds(profile, pde, cost, tick)
        return matrix_seconds(cost) * seeds * len(steps) * (1 + FULLSPACE_PASSES / MATRIX_PASSES)
    seeds = len(profile.study_seeds() if law in _STUDY_SEED_LAWS else profile.seeds)
    if law in _TRAINING_LAWS:
        return seeds * training_seconds(profile, pde, cost, tick)
    if law in _ROLLOUT_LAWS:
        return rollout_seconds(profile, cost)
    if law == "study":  # sweeps and rollouts of the study's runs
        matrices = seeds * len(profile.checkpoints[pde]) * (profile.recipe_batches
                                                            or profile.n_influence_batches)
        return matrix_seconds(cost) * matrices + rollout_seconds(profile, cost)
    seeds = len(profile.seeds)
    if law == "influence":
        return matrix_seconds(cost, SWEEP_PASSES) * _sweep_tasks(profile, pde) * sweep_matrices(pde)
    elif law == "seed-paper":
        per_task = 1.0 if profile.seed_paper_estimator == "subspace" else FULLSPACE_PASSES / MATRIX_PASSES
        matrices = seeds * profile.seed_paper_batches * per_task
    elif law == "symmetry":
        elements = 8 + 2 * len(profile.symmetry_shifts) + profile.symmetry_box ** 2
        epochs = len(profile.symmetry_orbit_epochs or profile.checkpoints[pde])
        matrices = seeds * profile.symmetry_batches * (elements + epochs)
    elif law == "estimator study":  # the study's stated subset: 16 of 48 examples
        solves = len(profile.estimator_lambdas) + len(profile.estimator_rtols) * KRYLOV_MATVECS / MATRIX_PASSES
        matrices = seeds * solves / 3
    else:
        raise KeyError(law)
    return matrix_seconds(cost) * matrices


def _memory(profile, law: str, cost: ModelCost) -> float:
    state = 4 * cost.parameters * BYTES  # weights, gradients, two Adam moments
    if law in _TRAINING_LAWS:
        return state + profile.batch_size * cost.activation_bytes
    if law in _ROLLOUT_LAWS:
        return state + profile.batch_size * cost.activation_bytes * FORWARD
    rows = 2 * BATCH_EXAMPLES * cost.parameters * BYTES  # per-example gradients and their images
    return state + rows + 8 * cost.activation_bytes


def _output(profile, law: str, pde: str, cost: ModelCost) -> float:
    seeds = len(profile.seeds)
    if law in _TRAINING_LAWS:
        return seeds * (len(profile.checkpoints[pde]) + 1) * 3 * cost.parameters * BYTES
    matrices = 8 * BATCH_EXAMPLES ** 2 * 8  # a few N x N float64 arrays per task
    if law == "influence":
        return _sweep_tasks(profile, pde) * matrices
    return seeds * matrices * 4


def plan_stage(profile, stage: str, costs: dict, tick: float, law: str) -> StagePlan:
    """The plan of one stage of cost law `law` (`costs`: `ModelCost` per (PDE, model))."""
    if law == "data":  # solver time: trajectories x cells x steps, steps ~ resolution
        trajectories = 3 * len(profile.pdes) * profile.n_trajectories
        seconds = trajectories * profile.solver_resolution ** 3 * profile.t_max * DATA_TICKS * tick
        stored = sum(3 * profile.n_trajectories * profile.t_max * len(PDE_SPECS[p].stored_variables)
                     * profile.resolution ** 2 * BYTES for p in profile.pdes)
        return StagePlan(stage, STAGE_TICKS * tick + seconds, False,
                         4 * profile.solver_resolution ** 2 * 5 * 8 * profile.t_max, stored)
    if law in ("notebook", "findings"):
        return StagePlan(stage, NOTEBOOK_SECONDS, False, 2 ** 30, 2 ** 20)
    if law == "gather":
        return StagePlan(stage, STAGE_TICKS * tick, False, 2 ** 30, 2 ** 20)
    pde, model = _stage_pair(profile, stage)
    cost = costs[pde, model]
    seconds = STAGE_TICKS * tick + stage_seconds(profile, law, pde, cost, tick)
    return StagePlan(stage, seconds, True, _memory(profile, law, cost),
                     _output(profile, law, pde, cost))


def plan(profile, *, stages: Sequence[str] | None = None, notebooks: bool = True) -> dict:
    """Per stage of the profile's graph (or of `stages` and what they need; the notebooks too
    when `notebooks` and no `stages`) its `StagePlan`, and what was measured."""
    from pdeinf.pipeline.common import as_profile
    from pdeinf.pipeline.notebooks import list_notebooks
    from pdeinf.pipeline.slurm import run_graph
    from pdeinf.pipeline.stages import stage_units

    profile = as_profile(profile)
    tasks = run_graph(profile, stages, list_notebooks() if notebooks and stages is None else [])
    laws = {kind.name(unit): kind.law(unit) for kind, unit in stage_units(profile)}
    law = {t.name: laws.get(t.name, "notebook") for t in tasks}
    rate = flop_rate()
    pairs = sorted({_stage_pair(profile, t.name) for t in tasks
                    if law[t.name] not in ("data", "findings", "notebook")})
    costs = {(p, m): _measure_model(profile, p, m, rate) for p, m in (pairs or profile.pairs())}
    tick = _measure_model(get_profile("smoke"), "CE", "unet", rate).call_seconds
    rows = [plan_stage(profile, t.name, costs, tick, law[t.name]) for t in tasks]
    return {"profile": profile.name, "stages": rows, "costs": costs, "rate": rate, "tick": tick}


def format_plan(result: dict) -> str:
    """The plan as a table: per stage GPU-hours, CPU-hours, peak memory, output; the totals;
    the measured costs and the stated assumptions."""
    rows: list[StagePlan] = result["stages"]
    width = max(len(r.stage) for r in rows)
    lines = [f"pdeinf reproduce --profile {result['profile']} --plan", "",
             f"  {'stage':<{width}}  {'GPU-h':>9}  {'CPU-h':>9}  {'peak mem':>9}  {'output':>9}"]
    for r in rows:
        lines.append(f"  {r.stage:<{width}}  {r.gpu_hours:9.3g}  {r.cpu_hours:9.3g}  "
                     f"{format_bytes(r.peak_memory):>9}  {format_bytes(r.output):>9}")
    lines.append(f"  {'total':<{width}}  {sum(r.gpu_hours for r in rows):9.3g}  "
                 f"{sum(r.cpu_hours for r in rows):9.3g}  "
                 f"{format_bytes(max(r.peak_memory for r in rows)):>9}  "
                 f"{format_bytes(sum(r.output for r in rows)):>9}")
    lines += ["", (f"measured here: {result['rate'] / 1e9:.3g} GFLOP/s on {os.cpu_count()} "
                   f"core(s), a tick {result['tick'] * 1e3:.3g} ms; per (PDE, model) at the "
                   "profile's size and resolution:")]
    for (pde, model), cost in result["costs"].items():
        lines.append(f"  {pde}-{model}: {cost.parameters:,} parameters, a pass "
                     f"{cost.call_seconds * 1e3:.3g} ms + {cost.example_seconds * 1e3:.3g} ms "
                     f"per example on {os.cpu_count()} core(s), activations "
                     f"{format_bytes(cost.activation_bytes)} per example")
    lines += ["", (f"GPU-hours: this machine's time / {GPU_SPEEDUP:g} (a stated GPU speed-up); "
                   "CPU-hours: this machine's core-hours; total peak memory: the largest stage's."),
              "Laws and constants: pdeinf/pipeline/planner.py and docs/cluster.md."]
    return "\n".join(lines)
