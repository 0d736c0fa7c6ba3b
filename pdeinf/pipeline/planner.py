"""`pdeinf reproduce --plan`: what each stage of a profile will cost, before running anything.

The law: a pass (forward and backward, one optimizer update) of a model over B examples takes
``a + B x F / R`` seconds, where F is the floating-point operations of one example's pass (counted
by torch's FlopCounterMode for the profile's model at the profile's resolution on the meta
device, nothing computed: for these models about parameters x pixels), R the FLOP/s of this
machine (a timed 3x3 convolution) and a the per-call overhead (the smoke-size model timed on two
16x16 examples, less its FLOPs). All of it takes a few seconds. Each stage is then a number of
passes, plus `STAGE_TICKS` ticks (reading data and checkpoints, writing results). Each kind of
stage names its cost law in the stage table (`stages.StageKind.cost_law`):

=================  =============================================================================
cost law           passes
=================  =============================================================================
training           seeds x epochs x ((a pass per batch + `VALIDATION` x validation) x
                   `TRAINING_PASSES` + `EPOCH_TICKS` ticks)
study training     the same with the study seeds (the recipe and ablation runs)
influence          sweep tasks x N x `SWEEP_PASSES` (N = 48 examples: 3 classes x 16 times)
seed-paper         tasks x N x `SWEEP_PASSES` (subspace) or x `KRYLOV_MATVECS` (full-space)
symmetry           seeds x batches x group elements x N x `SWEEP_PASSES` x orbit epochs
estimator study    seeds x N x `SWEEP_PASSES` x (lambdas + rtols x `KRYLOV_MATVECS`)
rollouts           seeds x test trajectories x 16 steps x `FORWARD`
study              the sweeps (study seeds x checkpoints x batches) and rollouts of the study's
                   runs (interventions, ablation)
ladder training    ladder seeds x trained rungs x one run of the profile
ladder             ladder seeds x rungs x N x (`SWEEP_PASSES` + `KRYLOV_MATVECS`)
data               trajectories x solver cells x snapshots x `DATA_TICKS` ticks
findings, notebook `NOTEBOOK_SECONDS` each (CPU)
=================  =============================================================================

The constants were fitted to the stage times of small CE-UNet profiles on an otherwise idle 2-core
CPU (on a busy machine the stages slow down more than the short timings here); the test suite
checks the estimate against the measured stage times of a profile of other sizes
(tests/test_planner.py). GPU-hours
assume a GPU does a pass `GPU_SPEEDUP` times faster than this machine's cores (stated, not
measured: no GPU was measured); CPU-hours are this machine's core-hours. Peak memory is the
model state (weights, gradients, two Adam moments) plus the activations of one batch (training)
or the N per-example gradient rows (influence stages), for the full-space solve without its
Krylov basis (sized to free memory, `docs/cluster.md`). Output size: checkpoints, data files,
influence arrays.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pdeinf.config import PDE_SPECS, get_profile
from pdeinf.errors import InputError

#: stated: a data-centre GPU does a pass this many times faster than this machine's cores
GPU_SPEEDUP = 50.0
#: the training loop's time per timed pass: per step the loss reductions, finiteness check and
#: progress; per epoch the validation and the checkpoint and resume writes
TRAINING_PASSES = 1.2
#: per epoch: the validation set-up and the checkpoint and resume writes, in ticks
EPOCH_TICKS = 2.0
#: one validation forward pass, in passes
VALIDATION = 0.35
#: one forward-only pass (rollouts), in passes
FORWARD = 0.35
#: passes per example of one subspace influence matrix (per-example gradients, the metric
#: and bra passes of every variant)
SWEEP_PASSES = 40.0
#: operator applications of a full-space Krylov solve at the seed paper's tolerances
KRYLOV_MATVECS = 60.0
#: seconds of a notebook run (kernel start, plotting)
NOTEBOOK_SECONDS = 15.0
#: time per trajectory, solver cell and snapshot of the data generation, in ticks
DATA_TICKS = 2.2e-5
#: fixed cost of any stage (imports, reading data and checkpoints, writing results), in ticks
#: (a tick: the measured time of one training pass of the smoke-size CE-UNet on two examples,
#: this machine's speed at Python-bound work)
STAGE_TICKS = 20.0
#: resolution of the timed passes (the smoke-size models)
MEASURE_RESOLUTION = 16
#: examples per vmapped call of the influence stages
CHUNK = 8
#: examples per influence batch (3 classes x 16 times)
BATCH_EXAMPLES = 48
BYTES = 4  # float32
_PAIR = re.compile(r"(CE|NS)-(unet|vit)$")
#: The cost laws (module docstring) the stage table names, and that of a notebook.
COST_LAWS = ("data", "training", "study training", "influence", "seed-paper", "symmetry",
             "estimator study", "rollouts", "study", "ladder training", "ladder", "findings",
             "notebook")
_TRAINING_LAWS = ("training", "study training")
_STUDY_SEED_LAWS = ("study training", "study")  # the recipe and ablation runs and their studies


@dataclass(frozen=True)
class ModelCost:
    """One pass of the profile's model: `call_seconds` per call (batch-independent overhead)
    plus `example_seconds` per example, at the profile's size and resolution; activation bytes
    of one example; the parameter count."""

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
    """Floating-point operations of a forward and backward pass on one example (counted by
    torch's FlopCounterMode on the meta device: nothing is computed), and the parameters."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = _build(profile, pde, model, resolution, size)
        x = torch.empty(1, PDE_SPECS[pde].channels, resolution, resolution)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return float(counter.get_total_flops()), sum(p.numel() for p in net.parameters())


def _best_time(step, repeats: int) -> float:
    """Best wall time of `step()` over `repeats` calls, after one warm-up call: the machine's
    own speed, the least disturbed by whatever else runs on it."""
    step()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


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
    """The per-call time of the smoke-size `model` (two examples at 16x16, less their FLOPs at
    `rate`), the FLOPs of the profile's model per example at `rate`, and the activation bytes
    autograd saves for one example of the profile's model (those of the smoke-size model at
    16x16 scaled by pixels x the square root of the parameter ratio)."""
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


def measure(profile, pairs=None, rate: float | None = None) -> dict[tuple[str, str], ModelCost]:
    """`ModelCost` of the (PDE, model) `pairs` (default: every pair of the profile) at `rate`
    FLOP/s (default: `flop_rate()`)."""
    rate = flop_rate() if rate is None else rate
    return {(p, m): _measure_model(profile, p, m, rate) for p, m in (pairs or profile.pairs())}


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


def matrix_seconds(cost: ModelCost, passes: float) -> float:
    """One influence matrix of N examples: `passes` passes per example, in chunks of 8."""
    return passes * cost.seconds(BATCH_EXAMPLES / CHUNK, BATCH_EXAMPLES)


def _sweep_tasks(profile, pde: str) -> int:
    return len(profile.seeds) * len(profile.checkpoints[pde]) * profile.n_influence_batches


def _seed_paper_matrices(profile) -> float:
    per_task = 1.0 if profile.seed_paper_estimator == "subspace" else KRYLOV_MATVECS / SWEEP_PASSES
    return len(profile.seeds) * profile.seed_paper_batches * per_task


def _symmetry_matrices(profile, pde: str) -> float:
    elements = 8 + 2 * len(profile.symmetry_shifts) + profile.symmetry_box ** 2
    epochs = len(profile.symmetry_orbit_epochs or profile.checkpoints[pde])
    return len(profile.seeds) * profile.symmetry_batches * (elements + epochs)


def _estimator_matrices(profile) -> float:
    solves = len(profile.estimator_lambdas) + len(profile.estimator_rtols) * KRYLOV_MATVECS / SWEEP_PASSES
    return len(profile.seeds) * solves / 3  # the study's stated subset: 16 of 48 examples


def rollout_seconds(profile, cost: ModelCost) -> float:
    """Every test trajectory rolled out 16 steps, one batch per step and seed (forward only)."""
    test = 3 * max(1, round(profile.n_trajectories * profile.split[2]))
    return len(profile.seeds) * (profile.t_max - 1) * FORWARD * cost.seconds(1, test)


def _recipe_batches(profile) -> int:
    return profile.recipe_batches or profile.n_influence_batches


def stage_seconds(profile, law: str, pde: str, cost: ModelCost, tick: float) -> float:
    """This machine's time of a model stage of cost law `law` (see the module's table), without
    `STAGE_TICKS`."""
    if law in ("ladder training", "ladder"):
        return _ladder_seconds(profile, law, pde, cost, tick)
    seeds = len(profile.study_seeds() if law in _STUDY_SEED_LAWS else profile.seeds)
    if law in _TRAINING_LAWS:
        return seeds * training_seconds(profile, pde, cost, tick)
    if law == "rollouts":
        return rollout_seconds(profile, cost)
    if law == "study":  # sweeps and rollouts of the study's runs
        matrices = seeds * len(profile.checkpoints[pde]) * _recipe_batches(profile)
        return matrix_seconds(cost, SWEEP_PASSES) * matrices + rollout_seconds(profile, cost)
    matrices = {"influence": lambda: _sweep_tasks(profile, pde),
                "seed-paper": lambda: _seed_paper_matrices(profile),
                "symmetry": lambda: _symmetry_matrices(profile, pde),
                "estimator study": lambda: _estimator_matrices(profile)}[law]()
    return matrix_seconds(cost, SWEEP_PASSES) * matrices


def _ladder_seconds(profile, law: str, pde: str, cost: ModelCost, tick: float) -> float:
    """The ladder's runs (each as long as one run of the profile, at the profile's width) or
    its measurements (per rung and ladder seed: one subspace and one full-space matrix)."""
    from pdeinf.pipeline.ladder import rungs

    steps = rungs(profile)
    seeds = len(profile.ladder_seeds)
    if law == "ladder training":
        return seeds * sum(not r.own for r in steps) * training_seconds(profile, pde, cost, tick)
    return matrix_seconds(cost, SWEEP_PASSES) * seeds * len(steps) * (1 + KRYLOV_MATVECS / SWEEP_PASSES)


def data_seconds(profile, tick: float) -> float:
    """Solver time of every trajectory of the profile: cells x steps, steps ~ resolution."""
    trajectories = 3 * len(profile.pdes) * profile.n_trajectories
    return trajectories * profile.solver_resolution ** 3 * profile.t_max * DATA_TICKS * tick


def data_bytes(profile) -> float:
    """Stored trajectories (every stored variable, the full stored time axis)."""
    return sum(3 * profile.n_trajectories * profile.t_max * len(PDE_SPECS[p].stored_variables)
               * profile.resolution ** 2 * BYTES for p in profile.pdes)


def _model_state(cost: ModelCost) -> float:
    return 4 * cost.parameters * BYTES  # weights, gradients, two Adam moments


def _memory(profile, law: str, cost: ModelCost) -> float:
    if law in _TRAINING_LAWS:
        return _model_state(cost) + profile.batch_size * cost.activation_bytes
    if law == "rollouts":
        return _model_state(cost) + profile.batch_size * cost.activation_bytes * FORWARD
    rows = 2 * BATCH_EXAMPLES * cost.parameters * BYTES  # per-example gradients and their images
    return _model_state(cost) + rows + 8 * cost.activation_bytes


def _output(profile, law: str, pde: str, cost: ModelCost) -> float:
    seeds = len(profile.seeds)
    if law in _TRAINING_LAWS:
        return seeds * (len(profile.checkpoints[pde]) + 1) * 3 * cost.parameters * BYTES
    matrices = 8 * BATCH_EXAMPLES ** 2 * 8  # a few N x N float64 arrays per task
    if law == "influence":
        return _sweep_tasks(profile, pde) * matrices
    return seeds * matrices * 4


def cost_laws(profile) -> dict[str, str]:
    """`{task name: cost law}` of every stage of the profile's graph (the stage table's)."""
    from pdeinf.pipeline.stages import stage_units

    return {kind.name(unit): kind.cost_law for kind, unit in stage_units(profile)}


def cost_law(profile, stage: str, laws: dict[str, str] | None = None) -> str:
    """The cost law of stage `stage` of the profile (`laws`: `cost_laws(profile)`); "notebook"
    for a notebook. InputError naming any other stage."""
    laws = cost_laws(profile) if laws is None else laws
    if stage in laws:
        return laws[stage]
    if stage.startswith("notebook "):
        return "notebook"
    raise InputError(f"stage: {stage!r} is not a stage of profile {profile.name!r}")


def plan_stage(profile, stage: str, costs: dict, tick: float, law: str | None = None) -> StagePlan:
    """The plan of one stage (by its name in the stage graph; `law`: its cost law, by
    default `cost_law(profile, stage)`)."""
    law = cost_law(profile, stage) if law is None else law
    if law == "data":
        return StagePlan(stage, STAGE_TICKS * tick + data_seconds(profile, tick), False,
                         4 * profile.solver_resolution ** 2 * 5 * 8 * profile.t_max,
                         data_bytes(profile))
    if law in ("notebook", "findings"):
        return StagePlan(stage, NOTEBOOK_SECONDS, False, 2 ** 30, 2 ** 20)
    pde, model = _stage_pair(profile, stage)
    cost = costs[pde, model]
    seconds = STAGE_TICKS * tick + stage_seconds(profile, law, pde, cost, tick)
    return StagePlan(stage, seconds, True, _memory(profile, law, cost),
                     _output(profile, law, pde, cost))


def plan(profile, *, stages: Sequence[str] | None = None, notebooks: bool = True,
         costs: dict | None = None) -> dict:
    """Per stage of the profile's graph (or of `stages` and what they need) its plan, and the
    totals. `costs` defaults to `measure(profile)`."""
    from pdeinf.pipeline.common import as_profile
    from pdeinf.pipeline.notebooks import list_notebooks
    from pdeinf.pipeline.reproduce import stage_tasks
    from pdeinf.pipeline.slurm import notebook_tasks, select_stages

    profile = as_profile(profile)
    tasks = select_stages(stage_tasks(profile, progress=False), stages)
    if notebooks and stages is None:
        tasks += notebook_tasks(profile, list_notebooks(), [])
    laws = cost_laws(profile)
    law = {t.name: cost_law(profile, t.name, laws) for t in tasks}
    rate = flop_rate()
    if costs is None:
        model_stages = [t.name for t in tasks if law[t.name] not in ("data", "findings", "notebook")]
        costs = measure(profile, sorted({_stage_pair(profile, n) for n in model_stages}), rate)
    tick = _measure_model(get_profile("smoke"), "CE", "unet", rate).call_seconds
    rows = [plan_stage(profile, t.name, costs, tick, law[t.name]) for t in tasks]
    return {"profile": profile.name, "stages": rows, "costs": costs, "rate": rate, "tick": tick}


def _size(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return ""


def format_plan(result: dict) -> str:
    """The plan as a table: per stage GPU-hours, CPU-hours, peak memory, output; the totals;
    the measured costs and the stated assumptions."""
    rows: list[StagePlan] = result["stages"]
    width = max(len(r.stage) for r in rows)
    lines = [f"pdeinf reproduce --profile {result['profile']} --plan", "",
             f"  {'stage':<{width}}  {'GPU-h':>9}  {'CPU-h':>9}  {'peak mem':>9}  {'output':>9}"]
    for r in rows:
        lines.append(f"  {r.stage:<{width}}  {r.gpu_hours:9.3g}  {r.cpu_hours:9.3g}  "
                     f"{_size(r.peak_memory):>9}  {_size(r.output):>9}")
    lines.append(f"  {'total':<{width}}  {sum(r.gpu_hours for r in rows):9.3g}  "
                 f"{sum(r.cpu_hours for r in rows):9.3g}  "
                 f"{_size(max(r.peak_memory for r in rows)):>9}  "
                 f"{_size(sum(r.output for r in rows)):>9}")
    lines += ["", (f"measured here: {result['rate'] / 1e9:.3g} GFLOP/s on {os.cpu_count()} "
                   f"core(s), a tick {result['tick'] * 1e3:.3g} ms; per (PDE, model) at the "
                   "profile's size and resolution:")]
    for (pde, model), cost in result["costs"].items():
        lines.append(f"  {pde}-{model}: {cost.parameters:,} parameters, a pass "
                     f"{cost.call_seconds * 1e3:.3g} ms + {cost.example_seconds * 1e3:.3g} ms "
                     f"per example on {os.cpu_count()} core(s), activations "
                     f"{_size(cost.activation_bytes)} per example")
    lines += ["", (f"GPU-hours: this machine's time / {GPU_SPEEDUP:g} (a stated GPU speed-up); "
                   "CPU-hours: this machine's core-hours; total peak memory: the largest stage's."),
              "Laws and constants: pdeinf/pipeline/planner.py and docs/cluster.md."]
    return "\n".join(lines)
