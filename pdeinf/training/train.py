"""Training of a surrogate (docs/method.md section 3) with scheduled checkpoints and exact resume.

The transitions of a PDE's training trajectories, shuffled per epoch from (seed, epoch) into
mini-batches; AdamW on a recipe's loss (`pdeinf.training.recipes`). The run directory
`<out_dir>/<PDE>-<model>-s<seed>/` holds `ckpt_e0005.pt` (scheduled; its history without the
wall-clock `seconds`, so a bitwise retraining writes the same bytes), `resume.pt` (last
epoch), `history.json|csv` (`train_smse`: the mean training objective, `val_smse`: one-step
validation SMSE) and `monitor.json|csv`, all written atomically. Rerunning after an
interruption (even SIGKILL) resumes and ends, on CPU, with bitwise the weights of an
uninterrupted run: all randomness derives from the seed, (seed, epoch) and (seed, epoch, step).

Data-parallel under torchrun (gloo on CPU, nccl on GPU), e.g. as the paper (two A100s):

    torchrun --standalone --nproc_per_node 2 -m pdeinf train --pde CE --model unet --seed 10 --profile paper

Each rank takes a strided share of every global mini-batch and scales its loss by
`world / global batch`: the gradient of the global batch mean, as one process (up to float
summation order). Only rank 0 writes files.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.atomic import remove_stale_temporaries, write_bytes
from pdeinf.atomic import torch_save as atomic_torch_save  # noqa: F401  (tests write states with it)
from pdeinf.checks import positive_int
from pdeinf.config import check_model, check_pde, get_profile, pde_spec
from pdeinf.errors import InputError, NumericalError
from pdeinf.models import build
from pdeinf.paths import checkpoint_path, run_name
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


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def setup(cls, device=None) -> DistContext:
        """From torchrun's environment; initialises the process group when WORLD_SIZE > 1."""
        world, rank, local = (int(os.environ.get(k, d)) for k, d in
                              (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")))
        device = torch.device(device if device is not None else
                              f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank=rank, world=world, device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP-wrapped model when distributed, else the model itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index]
                                       if self.device.type == "cuda" else None)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over ranks (a copy when distributed; `x` itself unchanged)."""
        if self.world > 1:
            x = x.detach().clone()
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class Transitions:
    """One-step transitions of a split, stored once as `trajectories [n, t_max, C, H, W]`
    (classes concatenated in `data.classes` order; `class_index [n]`). Transition k is
    (trajectory k // (t_max - 1), time t = k % (t_max - 1)): `x = u_t`, `y = u_{t+1}`."""

    def __init__(self, trajectories: torch.Tensor, class_index: torch.Tensor):
        self.trajectories = trajectories
        self.class_index = class_index
        self.steps = trajectories.shape[1] - 1

    def __len__(self) -> int:
        return self.trajectories.shape[0] * self.steps

    def batch(self, index, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`x, y [len(index), C, H, W]` for transition indices `index`, on `device`."""
        traj, t = self.locate(index)
        return self.snapshots(traj, t, device), self.snapshots(traj, t + 1, device)

    def locate(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """`(trajectory, t)` `[len(index)]` of transition indices."""
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
    InputError on a wrong shape, too few snapshots or non-finite values."""
    trajs, classes = [], []
    for ci, cls in enumerate(data.classes):
        traj = np.asarray(data.trajectories(cls, split, seed))
        what = f"data {cls} ({split})"
        if traj.ndim != 5 or traj.shape[2] != channels or traj.shape[3] != traj.shape[4]:
            raise InputError(f"{what}: expected [n, T, {channels}, R, R] trajectories, "
                             f"got shape {traj.shape}")
        if traj.shape[1] < t_max:
            raise InputError(f"{what}: {traj.shape[1]} snapshots, need t_max={t_max}")
        traj = traj[:, :t_max]
        if not np.isfinite(traj).all():
            raise InputError(f"{what}: trajectories contain NaN or Inf")
        trajs.append(torch.as_tensor(traj, dtype=dtype))
        classes.append(torch.full((traj.shape[0],), ci, dtype=torch.long))
    return Transitions(torch.cat(trajs), torch.cat(classes))


def _write_records(run_dir: Path, name: str, records: list[dict]) -> None:
    """`<name>.json` (strict JSON: NaN -> null) and `<name>.csv` (columns: every key, in order
    of first appearance) of flat records, each written atomically."""
    finite = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in rec.items()} for rec in records]
    write_bytes(run_dir / f"{name}.json", json.dumps(finite, indent=1).encode())
    out = io.StringIO()
    if records:
        writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for rec in records for k in rec)))
        writer.writeheader()
        writer.writerows(records)
    write_bytes(run_dir / f"{name}.csv", out.getvalue().encode())


def _checked_state(path: Path, state: dict, wanted: dict) -> dict:
    """`state` (verified by `read_checkpoint`) unless it lacks what a pdeinf checkpoint holds
    or its config disagrees with `wanted` on an identity key (InputError)."""
    for key in ("model_state", "optimizer_state", "config", "epoch"):
        if not isinstance(state, dict) or key not in state:
            raise InputError(f"{path}: not a pdeinf checkpoint (no {key!r})")
    for key in IDENTITY_KEYS:
        have = state["config"].get(key, _DEFAULT_IDENTITY.get(key))
        if key in wanted and have != wanted[key]:
            what = ("a run trained with another recipe or recipe settings" if key == "recipe"
                    else "a run of another model, PDE or size")
            raise InputError(f"{path}: checkpoint has {key}={have!r}, expected "
                             f"{wanted[key]!r} ({what}; use another out_dir)")
    return state


def _build_from(config: dict) -> torch.nn.Module:
    """The surrogate a run config describes (missing keys: `_DEFAULT_IDENTITY`)."""
    cfg = {**_DEFAULT_IDENTITY, **config}
    return build(cfg["model"], channels=cfg["channels"], resolution=cfg["resolution"],
                 size=cfg["model_size"], variant=cfg["model_variant"], residual=cfg["residual"],
                 **cfg["model_options"])


def load_checkpoint(path, *, pde: str | None = None, model_name: str | None = None,
                    size: str | None = None, map_location="cpu"):
    """`(model, checkpoint_dict)` with the weights of a checkpoint, model in eval mode.
    `pde`, `model_name`, `size`, when given, must match the checkpoint (else InputError)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    wanted = {k: v for k, v in (("pde", pde), ("model", model_name), ("model_size", size)) if v}
    ckpt = _checked_state(path, read_checkpoint(path), wanted)
    cfg = ckpt["config"]
    model = _build_from(cfg).to(getattr(torch, cfg.get("dtype", "float32")))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit {cfg['model']}/{cfg['model_size']}: "
                         f"{str(err).splitlines()[0]}") from None
    model.to(map_location)
    return model.eval(), ckpt


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


def default_out_dir(profile_name: str, recipe: Recipe) -> Path:
    """`runs_dir(profile)` for one-step, `runs_dir(profile)/recipe-<name>` for other recipes."""
    base = paths.runs_dir(profile_name)
    return base if recipe.name == "one-step" else base / f"recipe-{recipe.name}"


def train(pde: str, model_name: str, seed: int, profile, *, data_root=None, out_dir=None,
          progress: bool = True, data=None, dtype: torch.dtype = torch.float32,
          device=None, recipe=None, recipe_settings: dict | None = None,
          monitor=None, model_options: dict | None = None) -> RunResult:
    """Train (or resume, or just return) the run `<PDE>-<model>-s<seed>` of a profile.

    profile: a `Profile` or its name. data: with `.classes`, `.trajectories(cls, split, seed)
    -> [n, T >= t_max, C, H, W]` and `.fingerprint()` (default `PDEData` of `data_root` or
    `paths.data_dir(profile)`). out_dir: parent of the run directory (default
    `default_out_dir`). recipe: a name of `RECIPES` (None: "one-step") with `recipe_settings`,
    or a `Recipe`. model_options: entries of the model's size table to override (e.g.
    `{"width": 48}`, `pdeinf.models.build`). Recipe and options are part of the run's identity.
    monitor: None or a callable `monitor(model, step)` with a `.history` list of flat dicts
    (e.g. `CoherenceMonitor`), called on rank 0 with the unwrapped model at step 0 of a fresh
    run and after every optimizer step; its history is kept in the resume state and files.
    Returns the run directory, the scheduled checkpoints `{epoch: path}` and the history.
    InputError on bad arguments/data or a run directory of another configuration;
    TrainingError on a non-finite loss (files of the last good epoch are kept).
    """
    check_pde(pde)
    prof = get_profile(profile)
    recipe = make_recipe(recipe, **(recipe_settings or {}))
    if monitor is not None and not (callable(monitor)
                                    and isinstance(getattr(monitor, "history", None), list)):
        raise InputError("monitor: expected a callable monitor(model, step) with a .history list")
    check_model(model_name)
    seed = positive_int(seed, "seed", minimum=0)
    epochs = int(prof.epochs[pde])
    schedule = sorted(int(e) for e in prof.checkpoints[pde])
    if epochs <= 0 or prof.batch_size <= 0 or prof.lr <= 0:
        raise InputError(f"profile {prof.name}: epochs, batch_size and lr must be positive")
    recipe.check_horizon(prof.t_max - 1)  # the trajectories are cut to t_max snapshots

    ctx = DistContext.setup(device)
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
        config = {
            "pde": pde, "model": model_name, "model_size": prof.model_size,
            "model_variant": prof.model_variant, "residual": prof.residual, "seed": seed,
            "profile": prof.name, "channels": channels,
            "resolution": int(train_set.trajectories.shape[-1]),
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
        ctx.barrier()
        recipe.prepare(train_set, pde)
        return _train_loop(config, fingerprint, run_dir, train_set, val_set, ctx, progress,
                           recipe, monitor)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _timeless(history: list[dict]) -> list[dict]:
    """`history` without its wall-clock `seconds` (`history.json` keeps them)."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _timed(history: list[dict], run_dir: Path) -> list[dict]:
    """`history` (a resumed state's) with the `seconds` a scheduled checkpoint leaves out, taken
    from `history.json` by epoch where it has them (an unreadable file: left out)."""
    try:
        seconds = {r["epoch"]: r["seconds"] for r in json.loads((run_dir / "history.json").read_text())
                   if isinstance(r, dict) and "seconds" in r and "epoch" in r}
    except (OSError, ValueError):
        seconds = {}
    return [h if "seconds" in h or h.get("epoch") not in seconds else {**h, "seconds": seconds[h["epoch"]]}
            for h in history]


def _start_or_resume(config: dict, fingerprint: str, run_dir: Path, ctx, monitor=None):
    """`(model, optimizer, start epoch, history)`, built under `torch.manual_seed(seed)`, then
    loaded from `resume.pt` or, when a scheduled checkpoint up to its epoch is missing or
    corrupt (moved aside), the last good one before it. InputError when that state belongs to
    another configuration or the data changed."""
    torch.manual_seed(config["seed"])
    model = _build_from(config).to(ctx.device, getattr(torch, config["dtype"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                                  weight_decay=config["weight_decay"])
    schedule = sorted(config["checkpoints"])
    gap = next((e for e in schedule if usable(checkpoint_path(run_dir, e)) is None), None)
    path, state = run_dir / "resume.pt", usable(run_dir / "resume.pt")
    if state is None or (gap is not None and int(state.get("epoch", 0)) >= gap):
        good = [e for e in schedule if gap is None or e < gap]
        if not good:
            return model, optimizer, 0, []
        path = checkpoint_path(run_dir, good[-1])
        state = read_checkpoint(path)
    state = _checked_state(path, state, config)
    if state.get("data_fingerprint") != fingerprint:
        raise InputError(f"{path}: the data changed since this run started "
                         f"(fingerprint {state.get('data_fingerprint')!r} != {fingerprint!r}); "
                         "remove the run directory to retrain")
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    if monitor is not None:
        monitor.history[:] = list(state.get("monitor_history", []))
    return model, optimizer, int(state["epoch"]), _timed(list(state["history"]), run_dir)


def _batch_loss(recipe: Recipe, net, model, train_set: Transitions, idx: np.ndarray, ctx, seed: int,
                epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(loss, batch sum)` of mini-batch `idx`: this rank's share of the recipe's losses scaled so
    that the ranks' gradients add up to the batch mean, and their float64 sum over all ranks."""
    local = idx[ctx.rank :: ctx.world]  # strided: shares differ by at most one
    if len(local):
        step_batch = StepBatch(
            data=train_set, index=torch.as_tensor(local, dtype=torch.long),
            global_index=torch.as_tensor(idx, dtype=torch.long),
            positions=torch.arange(len(idx))[ctx.rank :: ctx.world], net=net, model=model,
            loss_fn=smse, device=ctx.device, seed=seed, epoch=epoch, step=step)
        per_example = recipe.per_example_loss(step_batch)
        loss = per_example.sum() * (ctx.world / len(idx))
    else:  # a final batch smaller than the world: this rank contributes zero gradient
        loss = net(train_set.batch([0], ctx.device)[0]).sum() * 0.0
        per_example = loss.detach().reshape(1) * 0.0
    batch_sum = ctx.sum(per_example.detach().sum().double())
    return loss, batch_sum


def _train_loop(config, fingerprint, run_dir, train_set: Transitions, val_set: Transitions, ctx,
                progress, recipe: Recipe, monitor=None) -> RunResult:
    """Train up to `config["epochs"]`: per epoch the shuffle, one AdamW step per mini-batch
    (the monitor after each), the epoch's record and the files. TrainingError on a NaN loss."""
    model, optimizer, start, history = _start_or_resume(config, fingerprint, run_dir, ctx, monitor)
    epochs, schedule = config["epochs"], set(config["checkpoints"])
    net = ctx.wrap(model)
    n, batch = len(train_set), config["batch_size"]
    steps = math.ceil(n / batch)
    bar = tqdm(total=(epochs - start) * steps, disable=not (progress and ctx.is_main),
               desc=run_dir.name, unit="step")
    net.train()
    watch = monitor is not None and ctx.is_main
    if watch and start == 0:
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
                bar.close()
                last = max([e for e in schedule if e < epoch], default=None)
                kept = (f"last good checkpoint: {checkpoint_path(run_dir, last)}" if last
                        else "no checkpoint written yet")
                raise TrainingError(f"non-finite loss ({batch_sum.item()}) at epoch {epoch}, step "
                                    f"{step + 1}/{steps} of {run_dir.name}; training stopped, {kept}")
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
        if ctx.is_main:  # the scheduled checkpoint, `resume.pt`, the history and monitor files
            state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                     "config": config, "data_fingerprint": fingerprint, "epoch": epoch, "history": history}
            if monitor is not None:
                state["monitor_history"] = list(monitor.history)
            if epoch in schedule:  # the same bytes from a bitwise retraining, resumed or not
                save_checkpoint({**state, "history": _timeless(history)}, checkpoint_path(run_dir, epoch))
            save_checkpoint(state, run_dir / "resume.pt")
            _write_records(run_dir, "history", history)
            if monitor is not None:
                _write_records(run_dir, "monitor", list(monitor.history))
        ctx.barrier()
    bar.close()
    ckpts = {e: checkpoint_path(run_dir, e) for e in sorted(schedule)
             if checkpoint_path(run_dir, e).exists()}
    return RunResult(run_dir=run_dir, checkpoints=ckpts, history=history)
