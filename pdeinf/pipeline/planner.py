"""`pdeinf reproduce --plan`: what each stage of a profile will cost, before running anything.

The unit of work is a *pass*: one forward and backward pass (and optimizer update) of the
profile's model on one example at the profile's resolution. Its time is measured here, at
start-up (`measure`, a few seconds): the profile's own models (so their parameter counts are
exact) on a few examples at a small resolution (at most 32x32), scaled to the profile's
resolution by the number of pixels. Each stage is then a number of passes:

=================  =============================================================================
stage              passes (law)
=================  =============================================================================
training           seeds x epochs x (training transitions + `VALIDATION` x validation transitions)
influence          sweep tasks x N x `SWEEP_PASSES` (N = 48 examples: 3 classes x 16 times)
seed-paper         tasks x N x `SWEEP_PASSES` (subspace) or x `KRYLOV_MATVECS` (full-space)
symmetry           seeds x batches x group elements x N x `SWEEP_PASSES` x orbit epochs
estimator study    seeds x N x `SWEEP_PASSES` x (lambdas + rtols x `KRYLOV_MATVECS`)
rollouts           seeds x test trajectories x 16 steps x `FORWARD`
interventions      like training (recipe runs) and influence (their sweeps)
data               trajectories x solver cells x solver steps (CFL: steps ~ resolution), `DATA_SECONDS`
notebooks          `NOTEBOOK_SECONDS` each (CPU)
=================  =============================================================================

The constants were fitted to the stage times of the smoke profile measured on a 2-core CPU; the
test suite checks the estimate against measured stage times of a larger profile. GPU-hours
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

from pdeinf.config import PDE_SPECS

#: stated: a data-centre GPU does a pass this many times faster than this machine's cores
GPU_SPEEDUP = 50.0
#: one validation forward pass, in passes
VALIDATION = 0.35
#: one forward-only pass (rollouts), in passes
FORWARD = 0.35
#: passes per example of one subspace influence matrix (per-example gradients, the metric
#: and bra passes of every variant)
SWEEP_PASSES = 12.0
#: operator applications of a full-space Krylov solve at the seed paper's tolerances
KRYLOV_MATVECS = 60.0
#: seconds of a notebook run (kernel start, plotting)
NOTEBOOK_SECONDS = 15.0
#: seconds per trajectory per solver cell per solver step (CPU, this machine's kind)
DATA_SECONDS = 4e-8
#: fixed seconds of any stage (imports, reading data and checkpoints)
STAGE_SECONDS = 1.0
#: examples per influence batch (3 classes x 16 times)
BATCH_EXAMPLES = 48
BYTES = 4  # float32
_PAIR = re.compile(r"(CE|NS)-(unet|vit)$")


@dataclass(frozen=True)
class ModelCost:
    """Measured: seconds of one pass and activation bytes of one example, at the profile's
    resolution (scaled from the measured resolution by pixels); the parameter count."""

    parameters: int
    pass_seconds: float
    activation_bytes: float


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


def _measure_model(profile, pde: str, model: str, *, examples: int = 8, repeats: int = 2) -> ModelCost:
    """Time forward + backward + an AdamW step of the profile's model on `examples` examples
    at min(resolution, 32) (best of `repeats`) and count the bytes autograd saves."""
    import torch

    from pdeinf.models import build

    resolution = min(profile.resolution, 32)
    channels = PDE_SPECS[pde].channels
    torch.manual_seed(0)
    net = build(model, channels=channels, resolution=resolution, size=profile.model_size,
                variant=profile.model_variant, residual=profile.residual)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(examples, channels, resolution, resolution)
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    best = math.inf
    for repeat in range(repeats + 1):
        saved[0] = 0
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = (net(x) - x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if repeat:  # the first call warms caches up
            best = min(best, time.perf_counter() - start)
    scale = (profile.resolution / resolution) ** 2
    return ModelCost(sum(p.numel() for p in net.parameters()), best / examples * scale,
                     saved[0] / examples * scale)


def measure(profile, pairs=None) -> dict[tuple[str, str], ModelCost]:
    """`ModelCost` of the (PDE, model) `pairs` (default: every pair of the profile)."""
    return {(p, m): _measure_model(profile, p, m) for p, m in (pairs or profile.pairs())}


def _stage_pair(profile, stage: str) -> tuple[str, str]:
    match = _PAIR.search(stage)
    return match.groups() if match else (profile.pdes[0], profile.models[0])


# ---- passes and sizes per stage ------------------------------------------------------------
def _transitions(profile, fraction: float) -> int:
    """One-step transitions of a split of one PDE (3 classes)."""
    return 3 * max(1, round(profile.n_trajectories * fraction)) * (profile.t_max - 1)


def training_passes(profile, pde: str) -> float:
    """Passes of one training run (one seed)."""
    epochs = profile.epochs[pde]
    train, val = _transitions(profile, profile.split[0]), _transitions(profile, profile.split[1])
    return epochs * (train + VALIDATION * val)


def _sweep_tasks(profile, pde: str) -> int:
    return len(profile.seeds) * len(profile.checkpoints[pde]) * profile.n_influence_batches


def _seed_paper_passes(profile, model: str) -> float:
    per_example = SWEEP_PASSES if profile.seed_paper_estimator == "subspace" else KRYLOV_MATVECS
    return len(profile.seeds) * profile.seed_paper_batches * BATCH_EXAMPLES * per_example


def _symmetry_passes(profile, pde: str) -> float:
    elements = 8 + 2 * len(profile.symmetry_shifts)
    epochs = len(profile.symmetry_orbit_epochs or profile.checkpoints[pde])
    return (len(profile.seeds) * profile.symmetry_batches * BATCH_EXAMPLES
            * (elements + epochs) * SWEEP_PASSES)


def _estimator_passes(profile) -> float:
    solves = len(profile.estimator_lambdas) + len(profile.estimator_rtols) * KRYLOV_MATVECS
    return len(profile.seeds) * BATCH_EXAMPLES * SWEEP_PASSES * solves / 3


def _rollout_passes(profile) -> float:
    test = 3 * max(1, round(profile.n_trajectories * profile.split[2]))
    return len(profile.seeds) * test * (profile.t_max - 1) * FORWARD


def _recipe_batches(profile) -> int:
    return profile.recipe_batches or profile.n_influence_batches


def stage_passes(profile, stage: str, pde: str) -> float:
    """Passes of a model stage (see the module's table); 0 for data and notebooks."""
    seeds = len(profile.seeds)
    if stage.startswith("training"):
        return seeds * training_passes(profile, pde)
    if stage.startswith("influence"):
        return _sweep_tasks(profile, pde) * BATCH_EXAMPLES * SWEEP_PASSES
    if stage.startswith("seed-paper"):
        return _seed_paper_passes(profile, stage)
    if stage.startswith("symmetry"):
        return _symmetry_passes(profile, pde)
    if stage.startswith("estimator"):
        return _estimator_passes(profile)
    if stage.startswith("rollouts"):
        return _rollout_passes(profile)
    if stage.startswith(("interventions", "ablation")):
        tasks = seeds * len(profile.checkpoints[pde]) * _recipe_batches(profile)
        return tasks * BATCH_EXAMPLES * SWEEP_PASSES + _rollout_passes(profile)
    return 0.0


def data_seconds(profile) -> float:
    """Solver time of every trajectory of the profile: cells x steps, steps ~ resolution."""
    trajectories = 3 * len(profile.pdes) * profile.n_trajectories
    return trajectories * profile.solver_resolution ** 3 * profile.t_max * DATA_SECONDS


def data_bytes(profile) -> float:
    """Stored trajectories (every stored variable, the full stored time axis)."""
    return sum(3 * profile.n_trajectories * profile.t_max * len(PDE_SPECS[p].stored_variables)
               * profile.resolution ** 2 * BYTES for p in profile.pdes)


def _model_state(cost: ModelCost) -> float:
    return 4 * cost.parameters * BYTES  # weights, gradients, two Adam moments


def _memory(profile, stage: str, cost: ModelCost) -> float:
    if stage.startswith("training"):
        return _model_state(cost) + profile.batch_size * cost.activation_bytes
    if stage.startswith("rollouts"):
        return _model_state(cost) + profile.batch_size * cost.activation_bytes * FORWARD
    rows = 2 * BATCH_EXAMPLES * cost.parameters * BYTES  # per-example gradients and their images
    return _model_state(cost) + rows + 8 * cost.activation_bytes


def _output(profile, stage: str, pde: str, cost: ModelCost) -> float:
    seeds = len(profile.seeds)
    if stage.startswith("training"):
        return seeds * (len(profile.checkpoints[pde]) + 1) * 3 * cost.parameters * BYTES
    matrices = 8 * BATCH_EXAMPLES ** 2 * 8  # a few N x N float64 arrays per task
    if stage.startswith("influence"):
        return _sweep_tasks(profile, pde) * matrices
    return seeds * matrices * 4


def plan_stage(profile, stage: str, costs: dict) -> StagePlan:
    """The plan of one stage (by its name in the stage graph)."""
    if stage == "data":
        return StagePlan(stage, STAGE_SECONDS + data_seconds(profile), False,
                         4 * profile.solver_resolution ** 2 * 5 * 8 * profile.t_max,
                         data_bytes(profile))
    if stage.startswith("notebook"):
        return StagePlan(stage, NOTEBOOK_SECONDS, False, 2 ** 30, 2 ** 20)
    pde, model = _stage_pair(profile, stage)
    cost = costs[pde, model]
    seconds = STAGE_SECONDS + stage_passes(profile, stage, pde) * cost.pass_seconds
    return StagePlan(stage, seconds, True, _memory(profile, stage, cost),
                     _output(profile, stage, pde, cost))


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
    if costs is None:
        model_stages = [t.name for t in tasks if t.name != "data" and not t.name.startswith("notebook")]
        costs = measure(profile, sorted({_stage_pair(profile, n) for n in model_stages}))
    rows = [plan_stage(profile, t.name, costs) for t in tasks]
    return {"profile": profile.name, "stages": rows, "costs": costs}


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
    lines += ["", "measured here (per example at the profile's resolution):"]
    for (pde, model), cost in result["costs"].items():
        lines.append(f"  {pde}-{model}: {cost.parameters:,} parameters, one pass "
                     f"{cost.pass_seconds * 1e3:.3g} ms on {os.cpu_count()} core(s), "
                     f"activations {_size(cost.activation_bytes)}")
    lines += ["", (f"GPU-hours: this machine's time / {GPU_SPEEDUP:g} (a stated GPU speed-up); "
                   "CPU-hours: this machine's core-hours; total peak memory: the largest stage's."),
              "Laws and constants: pdeinf/pipeline/planner.py and docs/cluster.md."]
    return "\n".join(lines)
