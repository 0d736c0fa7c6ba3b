"""Training of a surrogate (one-step teacher forcing or another recipe), with scheduled
checkpoints and exact resume.

Protocol (docs/method.md section 3): transitions `(u_t, u_{t+1})`, t < t_max - 1, from the training
trajectories of the three classes of a PDE (seeded 65/5/30 split per class), shuffled across
classes into mini-batches of `profile.batch_size`; AdamW(lr, weight_decay); SMSE loss;
`profile.epochs[pde]` epochs; a checkpoint after every epoch in `profile.checkpoints[pde]`.
A recipe (`pdeinf.training.recipes`: pushforward, noise, multistep, augment, physics) changes
only the per-example loss of each mini-batch: same data, same batches, same number of steps.

Files in the run directory `<out_dir>/<PDE>-<model>-s<seed>/` (out_dir defaults to
`paths.runs_dir(profile)`, and to `paths.runs_dir(profile)/recipe-<name>` for other recipes):
- `ckpt_e0005.pt`: `model_state`, `optimizer_state`, `config`, `data_fingerprint`, `epoch`, `history`;
- `resume.pt`: the same fields for the last finished epoch, rewritten after every epoch;
- `history.json`, `history.csv`: per epoch `train_smse` (mean training objective over the
  epoch: the one-step SMSE for one-step, the recipe's loss otherwise) and `val_smse` (one-step
  SMSE on the clean validation transitions, comparable across recipes);
- `monitor.json`, `monitor.csv`: the records of a monitor, when one is given.
All are written to a temporary name and renamed. Rerunning the same call after an interruption
(even SIGKILL) resumes from `resume.pt` and ends, on CPU, with bitwise the same weights as an
uninterrupted run: the only randomness is the initialisation (`torch.manual_seed(seed)`), the
per-epoch shuffle, derived from `(seed, epoch)` alone, and the draws of the random recipes
(noise, augment), derived from `(seed, epoch, step)` alone.

The data object needs only `.classes`, `.trajectories(cls, split, seed) -> np.ndarray
[n, T >= t_max, C, H, W]` and `.fingerprint() -> str` (`pdeinf.data.datasets.PDEData`).
Data-parallel runs under torchrun: see `pdeinf.training.ddp`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.atomic import remove_stale_temporaries, write_bytes
from pdeinf.atomic import torch_save as atomic_torch_save  # noqa: F401  (tests write states with it)
from pdeinf.config import check_model, check_pde, get_profile, pde_spec
from pdeinf.errors import InputError, NumericalError
from pdeinf.models import build
from pdeinf.training import ddp
from pdeinf.training.checkpoints import read_checkpoint, save_checkpoint, usable
from pdeinf.training.loss import smse
from pdeinf.training.recipes import Recipe, StepBatch, make_recipe

#: Config entries that must agree between a run directory's saved state and a new call.
IDENTITY_KEYS = ("pde", "model", "model_size", "model_variant", "residual", "seed", "channels",
                 "resolution", "batch_size", "lr", "weight_decay", "t_max", "dtype", "recipe",
                 "model_options")
#: What a key missing from a checkpoint's config means: a config without `recipe`,
#: `model_variant` and `residual` describes a one-step run of pdeinf's own increment models.
_DEFAULT_IDENTITY = {"recipe": {"name": "one-step"}, "model_variant": "pdeinf", "residual": True,
                     "model_options": {}}


class TrainingError(NumericalError):
    """Training cannot go on (non-finite loss); the message names epoch and step."""


@dataclass
class RunResult:
    run_dir: Path
    checkpoints: dict[int, Path] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


run_name = paths.run_name
checkpoint_path = paths.checkpoint_path


# ----------------------------------------------------------------------------- data

class Transitions:
    """One-step transitions of a split, stored once as trajectories (no x/y duplication).

    `trajectories [n, t_max, C, H, W]` (classes concatenated in `data.classes` order);
    transition k = (trajectory k // (t_max - 1), time t = k % (t_max - 1)): `x = u_t`,
    `y = u_{t+1}`. `class_index [n]` gives each trajectory's class.
    """

    def __init__(self, trajectories: torch.Tensor, class_index: torch.Tensor):
        self.trajectories = trajectories
        self.class_index = class_index
        self.steps = trajectories.shape[1] - 1

    def __len__(self) -> int:
        return self.trajectories.shape[0] * self.steps

    @property
    def resolution(self) -> int:
        return int(self.trajectories.shape[-1])

    def batch(self, index, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`x, y [len(index), C, H, W]` for transition indices `index`, on `device`."""
        traj, t = self.locate(index)
        x, y = self.trajectories[traj, t], self.trajectories[traj, t + 1]
        return (x, y) if device is None else (x.to(device), y.to(device))

    def locate(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """`(trajectory, t)` `[len(index)]` of transition indices (for multi-step recipes)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return index // self.steps, index % self.steps

    def snapshots(self, traj, t, device=None) -> torch.Tensor:
        """`u_t` of trajectories `traj` `[B, C, H, W]`, 0 <= t <= steps (a copy, on `device`)."""
        t = torch.as_tensor(t, dtype=torch.long)
        if len(t) and (int(t.min()) < 0 or int(t.max()) > self.steps):
            raise IndexError(f"snapshot times must lie in [0, {self.steps}]")
        u = self.trajectories[torch.as_tensor(traj, dtype=torch.long), t]
        return u if device is None else u.to(device)


def load_transitions(data, split: str, seed: int, t_max: int, channels: int,
                     dtype: torch.dtype = torch.float32) -> Transitions:
    """All one-step transitions of a split (first `t_max` snapshots of every trajectory).

    Raises InputError on a wrong shape, too few snapshots or non-finite values.
    """
    trajs, classes = [], []
    for ci, cls in enumerate(data.classes):
        traj = np.asarray(data.trajectories(cls, split, seed))
        if traj.ndim != 5 or traj.shape[2] != channels or traj.shape[3] != traj.shape[4]:
            raise InputError(f"data {cls} ({split}): expected [n, T, {channels}, R, R] trajectories, "
                             f"got shape {traj.shape}")
        if traj.shape[1] < t_max:
            raise InputError(f"data {cls} ({split}): {traj.shape[1]} snapshots, need t_max={t_max}")
        traj = traj[:, :t_max]
        if not np.isfinite(traj).all():
            raise InputError(f"data {cls} ({split}): trajectories contain NaN or Inf")
        trajs.append(torch.as_tensor(traj, dtype=dtype))
        classes.append(torch.full((traj.shape[0],), ci, dtype=torch.long))
    return Transitions(torch.cat(trajs), torch.cat(classes))


# ----------------------------------------------------------------------------- files

def _write_records(run_dir: Path, name: str, records: list[dict]) -> None:
    """`<name>.json` (strict JSON: NaN -> null) and `<name>.csv` (columns: every key, in order
    of first appearance) of a list of flat records, each written atomically."""
    finite = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in rec.items()} for rec in records]
    write_bytes(run_dir / f"{name}.json", json.dumps(finite, indent=1).encode())
    out = io.StringIO()
    if records:
        writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for rec in records for k in rec)))
        writer.writeheader()
        writer.writerows(records)
    write_bytes(run_dir / f"{name}.csv", out.getvalue().encode())


def _read_state(path: Path, state: dict | None = None) -> dict:
    """The verified state of checkpoint `path` (`checkpoints.read_checkpoint`; `state`: one
    already read), InputError unless it holds what a pdeinf checkpoint holds."""
    state = read_checkpoint(path) if state is None else state
    for key in ("model_state", "optimizer_state", "config", "epoch"):
        if not isinstance(state, dict) or key not in state:
            raise InputError(f"{path}: not a pdeinf checkpoint (no {key!r})")
    return state


def _check_identity(path: Path, saved: dict, wanted: dict) -> None:
    for key in IDENTITY_KEYS:
        have = saved.get(key, _DEFAULT_IDENTITY.get(key))
        if key in wanted and have != wanted[key]:
            what = ("a run trained with another recipe or recipe settings" if key == "recipe"
                    else "a run of another model, PDE or size")
            raise InputError(f"{path}: checkpoint has {key}={have!r}, expected "
                             f"{wanted[key]!r} ({what}; use another out_dir)")


def load_checkpoint(path, *, pde: str | None = None, model_name: str | None = None,
                    size: str | None = None, map_location="cpu"):
    """`(model, checkpoint_dict)` with the weights of a checkpoint, model in eval mode.

    `pde`, `model_name`, `size`, when given, must match the checkpoint (else InputError).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    ckpt = _read_state(path)
    wanted = {k: v for k, v in (("pde", pde), ("model", model_name), ("model_size", size)) if v}
    _check_identity(path, ckpt["config"], wanted)
    cfg = ckpt["config"]
    model = _build_from(cfg)
    model.to(getattr(torch, cfg.get("dtype", "float32")))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit {cfg['model']}/{cfg['model_size']}: "
                         f"{str(err).splitlines()[0]}") from None
    model.to(map_location)
    return model.eval(), ckpt


# ----------------------------------------------------------------------------- loop

@torch.no_grad()
def evaluate_smse(model: torch.nn.Module, transitions: Transitions, batch_size: int = 256,
                  device=None) -> float:
    """Mean per-example SMSE of `model` on all transitions (nan when there are none)."""
    n = len(transitions)
    if n == 0:
        return math.nan
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        x, y = transitions.batch(torch.arange(i, min(i + batch_size, n)), device)
        total += smse(model(x), y).sum().item()
    model.train(was_training)
    return total / n


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch `epoch` (1-based): a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _build_from(config: dict) -> torch.nn.Module:
    """The surrogate a run config describes (missing keys: `_DEFAULT_IDENTITY`)."""
    return build(config["model"], channels=config["channels"], resolution=config["resolution"],
                 size=config["model_size"],
                 variant=config.get("model_variant", _DEFAULT_IDENTITY["model_variant"]),
                 residual=config.get("residual", _DEFAULT_IDENTITY["residual"]),
                 **config.get("model_options", {}))



def default_out_dir(profile_name: str, recipe: Recipe) -> Path:
    """`runs_dir(profile)` for one-step, `runs_dir(profile)/recipe-<name>` for other recipes
    (so that runs of several recipes live side by side)."""
    base = paths.runs_dir(profile_name)
    return base if recipe.name == "one-step" else base / f"recipe-{recipe.name}"


def train(pde: str, model_name: str, seed: int, profile, *, data_root=None, out_dir=None,
          progress: bool = True, data=None, dtype: torch.dtype = torch.float32,
          device=None, recipe=None, recipe_settings: dict | None = None,
          monitor=None, model_options: dict | None = None) -> RunResult:
    """Train (or resume, or just return) the run `<PDE>-<model>-s<seed>` of a profile.

    profile: a `Profile` or its name. data: an object with `.classes`, `.trajectories`,
    `.fingerprint` (default `PDEData(data_root or paths.data_dir(profile), pde, t_max)`).
    out_dir: parent of the run directory (default `default_out_dir(profile, recipe)`).
    recipe: a name of `pdeinf.training.recipes.RECIPES` (None: "one-step") with
    `recipe_settings`, or a `Recipe`; its name and settings are part of the run's identity.
    monitor: None or a callable `monitor(model, step)` with a `.history` list of flat dicts
    (e.g. `pdeinf.influence.CoherenceMonitor`), called on rank 0 with the unwrapped model at
    step 0 of a fresh run and after every optimizer step (global step count); its history is
    kept in the resume state and written to `monitor.json` / `monitor.csv` after every epoch.
    model_options: entries of the model's size table to override (e.g. `{"width": 48}`, see
    `pdeinf.models.build`); part of the run's identity when given.
    Returns the run directory, the scheduled checkpoints `{epoch: path}` and the history.
    Raises InputError on bad arguments/data or a run directory of another configuration, and
    TrainingError on a non-finite loss (files of the last good epoch are kept).
    """
    check_pde(pde)
    prof = get_profile(profile)
    recipe = make_recipe(recipe, **(recipe_settings or {}))
    if monitor is not None and not (callable(monitor) and isinstance(getattr(monitor, "history", None), list)):
        raise InputError("monitor: expected a callable monitor(model, step) with a .history list")
    check_model(model_name)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    epochs = int(prof.epochs[pde])
    schedule = sorted(int(e) for e in prof.checkpoints[pde])
    if epochs <= 0 or prof.batch_size <= 0 or prof.lr <= 0:
        raise InputError(f"profile {prof.name}: epochs, batch_size and lr must be positive")
    recipe.check_horizon(prof.t_max - 1)  # the trajectories are cut to t_max snapshots

    ctx = ddp.setup(device)
    try:
        if data is None:
            from pdeinf.data.datasets import PDEData

            data = PDEData(data_root or paths.data_dir(prof.name), pde, t_max=prof.t_max,
                           fractions=prof.split)
        channels = pde_spec(pde).channels
        train_set = load_transitions(data, "train", seed, prof.t_max, channels, dtype)
        val_set = load_transitions(data, "val", seed, prof.t_max, channels, dtype)
        if len(train_set) == 0:
            raise InputError(f"data {pde}: no training trajectories")
        resolution = train_set.resolution
        config = {
            "pde": pde, "model": model_name, "model_size": prof.model_size,
            "model_variant": prof.model_variant, "residual": prof.residual, "seed": seed,
            "profile": prof.name, "channels": channels, "resolution": resolution,
            "epochs": epochs, "checkpoints": schedule, "batch_size": prof.batch_size,
            "lr": prof.lr, "weight_decay": prof.weight_decay, "t_max": prof.t_max,
            "split": list(prof.split), "dtype": str(dtype).replace("torch.", ""),
            "classes": list(data.classes), "n_train_transitions": len(train_set),
            "world_size": ctx.world, "recipe": recipe.identity(),
        }
        if model_options:
            config["model_options"] = dict(model_options)
            _build_from(config)  # an unknown option fails here, before any training
        fingerprint = str(data.fingerprint())
        run_dir = Path(out_dir or default_out_dir(prof.name, recipe)) / run_name(pde, model_name, seed)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(run_dir)  # left by a write that was killed mid-way
        ddp.barrier(ctx)
        recipe.prepare(train_set, pde)
        return _train_loop(config, fingerprint, run_dir, train_set, val_set, ctx, progress,
                           recipe, monitor)
    finally:
        ddp.cleanup(ctx)


def _resume_point(run_dir: Path, schedule) -> tuple[Path | None, dict | None]:
    """Where training resumes: `(path, verified state)` of `resume.pt`, unless a scheduled
    checkpoint at or before its epoch is missing or corrupt (corrupt files are moved aside):
    then the last good scheduled checkpoint before the first missing one; `(None, None)`:
    start afresh."""
    gap = None
    for epoch in sorted(schedule):
        if usable(checkpoint_path(run_dir, epoch)) is None:
            gap = epoch
            break
    resume = usable(run_dir / "resume.pt")
    if resume is not None and (gap is None or int(resume.get("epoch", 0)) < gap):
        return run_dir / "resume.pt", resume
    good = [e for e in sorted(schedule) if gap is None or e < gap]
    if not good:
        return None, None
    path = checkpoint_path(run_dir, good[-1])
    return path, read_checkpoint(path)


def _start_or_resume(config: dict, fingerprint: str, run_dir: Path, ctx, monitor=None):
    """`(model, optimizer, start epoch, history)` of a run: the model built under
    `torch.manual_seed(seed)` on `ctx.device` with its AdamW, then, where `_resume_point` finds
    a saved state, its weights, optimizer state, epoch, history and monitor history (InputError
    when it belongs to another configuration or the data changed)."""
    dtype = getattr(torch, config["dtype"])
    torch.manual_seed(config["seed"])
    model = _build_from(config).to(dtype=dtype)
    model.to(ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                                  weight_decay=config["weight_decay"])
    history: list[dict] = []
    start = 0
    resume_from, state = _resume_point(run_dir, config["checkpoints"])
    if state is not None:
        state = _read_state(resume_from, state)
        _check_identity(resume_from, state["config"], config)
        if state.get("data_fingerprint") != fingerprint:
            raise InputError(f"{resume_from}: the data changed since this run started "
                             f"(fingerprint {state.get('data_fingerprint')!r} != {fingerprint!r}); "
                             "remove the run directory to retrain")
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        start, history = int(state["epoch"]), list(state["history"])
        if monitor is not None:
            monitor.history[:] = list(state.get("monitor_history", []))
    return model, optimizer, start, history


def _batch_loss(recipe: Recipe, net, model, train_set: Transitions, idx: np.ndarray, ctx, seed: int,
                epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(loss, batch sum)` of mini-batch `idx` (global transition indices `[B]`): this rank's
    share of the recipe's per-example losses, scaled so that the ranks' gradients add up to the
    batch mean (a zero-gradient loss on a rank with no example), and the sum of the
    per-example losses over all ranks (float64 scalar)."""
    local = ddp.shard(idx, ctx)
    if len(local):
        step_batch = StepBatch(
            data=train_set, index=torch.as_tensor(local, dtype=torch.long),
            global_index=torch.as_tensor(idx, dtype=torch.long),
            positions=ddp.shard(torch.arange(len(idx)), ctx), net=net, model=model,
            loss_fn=smse, device=ctx.device, seed=seed, epoch=epoch, step=step)
        per_example = recipe.per_example_loss(step_batch)
        loss = per_example.sum() * (ctx.world / len(idx))
    else:  # a final batch smaller than the world: this rank contributes zero gradient
        loss = net(train_set.batch([0], ctx.device)[0]).sum() * 0.0
        per_example = loss.detach().reshape(1) * 0.0
    batch_sum = ddp.all_reduce_sum(per_example.detach().sum().double(), ctx)
    return loss, batch_sum


def _non_finite_loss(batch_sum: torch.Tensor, epoch: int, step: int, steps: int, schedule,
                     run_dir: Path) -> TrainingError:
    """The TrainingError for a non-finite batch loss at `step` (0-based) of `epoch`, naming
    the last scheduled checkpoint already written."""
    last = max([e for e in schedule if e < epoch], default=None)
    kept = f"last good checkpoint: {checkpoint_path(run_dir, last)}" if last else \
        "no checkpoint written yet"
    return TrainingError(f"non-finite loss ({batch_sum.item()}) at epoch {epoch}, step "
                         f"{step + 1}/{steps} of {run_dir.name}; training stopped, {kept}")


def _save_epoch(run_dir: Path, model, optimizer, config: dict, fingerprint: str, epoch: int,
                history: list[dict], schedule, monitor=None) -> None:
    """Write the state after `epoch`: the scheduled checkpoint (when `epoch` is in `schedule`),
    `resume.pt`, the history files and the monitor's files."""
    state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
             "config": config, "data_fingerprint": fingerprint, "epoch": epoch,
             "history": history}
    if monitor is not None:
        state["monitor_history"] = list(monitor.history)
    if epoch in schedule:
        save_checkpoint(state, checkpoint_path(run_dir, epoch))
    save_checkpoint(state, run_dir / "resume.pt")
    _write_records(run_dir, "history", history)
    if monitor is not None:
        _write_records(run_dir, "monitor", list(monitor.history))


def _train_loop(config, fingerprint, run_dir, train_set: Transitions, val_set: Transitions, ctx,
                progress, recipe: Recipe, monitor=None) -> RunResult:
    """Train the run `config` describes from scratch or from its resume point up to
    `config["epochs"]`, in `run_dir`. Per epoch: the (seed, epoch) shuffle of the `train_set`
    transitions into mini-batches, one AdamW step per mini-batch on the recipe's loss (the
    monitor, on rank 0, after each), the epoch's record (mean training loss, validation SMSE
    on `val_set`, seconds) and, on rank 0, the checkpoint files. TrainingError on a non-finite
    loss. Returns the run directory, the scheduled checkpoints that exist and the history."""
    model, optimizer, start, history = _start_or_resume(config, fingerprint, run_dir, ctx, monitor)
    epochs, schedule = config["epochs"], set(config["checkpoints"])
    net = ddp.wrap(model, ctx)
    n, batch = len(train_set), config["batch_size"]
    steps = math.ceil(n / batch)
    bar = tqdm(total=(epochs - start) * steps, disable=not (progress and ctx.is_main),
               desc=run_dir.name, unit="step")
    net.train()
    watch = monitor is not None and ctx.is_main
    if watch and start == 0 and start < epochs:
        monitor(model, 0)
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        perm = epoch_permutation(config["seed"], epoch, n)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for step in range(steps):
            idx = perm[step * batch : (step + 1) * batch]
            loss, batch_sum = _batch_loss(recipe, net, model, train_set, idx, ctx, config["seed"],
                                          epoch, step)
            if not torch.isfinite(batch_sum):
                error = _non_finite_loss(batch_sum, epoch, step, steps, schedule, run_dir)
                bar.close()
                raise error
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += batch_sum
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{batch_sum.item() / len(idx):.3e}")
            if watch:
                monitor(model, (epoch - 1) * steps + step + 1)
        history.append({"epoch": epoch, "train_smse": loss_sum.item() / n,
                        "val_smse": evaluate_smse(model, val_set, device=ctx.device),
                        "seconds": round(time.perf_counter() - t0, 3)})
        if ctx.is_main:
            _save_epoch(run_dir, model, optimizer, config, fingerprint, epoch, history, schedule, monitor)
        ddp.barrier(ctx)
    bar.close()
    ckpts = {e: checkpoint_path(run_dir, e) for e in sorted(schedule)
             if checkpoint_path(run_dir, e).exists()}
    return RunResult(run_dir=run_dir, checkpoints=ckpts, history=history)
