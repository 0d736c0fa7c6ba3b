"""Influence matrices for every (seed, checkpoint epoch, influence batch) of a profile.

One task = one checkpoint x one influence batch; it writes ONE netCDF file
`<out_root>/<PDE>-<model>/s<seed>_e<epoch:04d>_b<batch:02d>.nc` holding an xr.Dataset:
- `pi` (variant, t_resp, c_resp, t_pert, c_pert): raw influence for each variant of
  `variants_for(pde)`; "gn-mass" / "gn-energy" are the Gauss-Newton metric with the relative
  mass / energy drift bras (CE only). The gradients, the basis and the metric are computed once
  per task and shared by the variants (`HatEngine`).
- `losses` (t, c): SMSE per example; `eta_eigenvalues` (mode): undamped eigenvalues of the
  restricted metric, NaN-padded to N; `grad_singular_values` (mode); `rank` (scalar);
- `input_distance` (t_resp, c_resp, t_pert, c_pert): method.md section 6 item 6,
  `mean_{c,x,y} (x_n - x_m)^2 / (0.5 (s_nc + s_mc) + 1e-6)` with s_nc the RMS of channel c of
  input n (the per-channel scale of SMSE).
Files are written to a temporary name and renamed; a rerun skips files that open and hold the
expected variables (a corrupt or incomplete one is recomputed). Under torchrun (RANK and
WORLD_SIZE set) each rank computes tasks[rank::world_size]; the files are the same as serial,
and no process group is needed because ranks share nothing but the file system.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.atomic import write_netcdf
from pdeinf.config import PDE_CLASSES, check_model, check_pde, get_profile
from pdeinf.errors import InputError
from pdeinf.influence.hat import GRAD_CHUNK, JVP_CHUNK, HatEngine

BASE_VARIANTS: tuple[str, ...] = ("gauss-newton", "euclidean", "adam")
CE_VARIANTS: tuple[str, ...] = ("gn-mass", "gn-energy")
_DRIFT = {"gn-mass": "mass_drift", "gn-energy": "energy_drift"}
DATA_VARS: tuple[str, ...] = ("pi", "losses", "eta_eigenvalues", "grad_singular_values", "rank", "input_distance")


def variants_for(pde: str) -> tuple[str, ...]:
    return BASE_VARIANTS + (CE_VARIANTS if pde == "CE" else ())


_profile = get_profile


def sweep_dir(profile, pde: str, model_name: str, out_root=None) -> Path:
    prof = _profile(profile)
    root = Path(out_root) if out_root is not None else paths.influence_dir(prof.name)
    return root / f"{pde}-{model_name}"


def task_file(directory: Path, seed: int, epoch: int, batch: int) -> Path:
    return Path(directory) / f"s{seed}_e{epoch:04d}_b{batch:02d}.nc"


def tasks(profile, pde: str) -> list[tuple[int, int, int]]:
    """All (seed, epoch, batch) of the profile for one PDE, in a fixed order."""
    prof = _profile(profile)
    return [
        (seed, epoch, batch)
        for seed in prof.seeds
        for epoch in prof.checkpoints[pde]
        for batch in range(prof.n_influence_batches)
    ]


# Loaders: module-level so that tests (and users with their own data) can substitute them.
def _checkpoint_path(runs_root: Path, pde: str, model_name: str, seed: int, epoch: int) -> Path:
    return paths.checkpoint_path(Path(runs_root) / paths.run_name(pde, model_name, seed), epoch)


def _load_checkpoint(path: Path, pde: str, model_name: str):
    from pdeinf.training.train import load_checkpoint

    return load_checkpoint(path, pde=pde, model_name=model_name)


def _open_data(data_root: Path, pde: str, t_max: int):
    from pdeinf.data.datasets import PDEData

    return PDEData(data_root, pde, t_max)


def _influence_batch(data, seed: int, index: int):
    from pdeinf.data.datasets import influence_batch

    return influence_batch(data, seed, index, split="test")


def input_distance(inputs: torch.Tensor) -> np.ndarray:
    """Scaled squared input distance `[N, N]` (float64) of `inputs` `[N, C, H, W]` (module doc)."""
    x = inputs.detach().to(torch.float64).flatten(2)  # [N, C, HW]
    scale = x.pow(2).mean(-1).sqrt()  # [N, C]
    out = torch.empty(x.shape[0], x.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        sq = (x[n:n + 1] - x).pow(2).mean(-1)  # [N, C]
        out[n] = (sq / (0.5 * (scale[n:n + 1] + scale) + 1e-6)).mean(-1)
    return out.numpy()


def compute_task(model, optimizer_state, inputs, targets, *, pde: str, classes, damping: float,
                 energy_tol: float, attrs: dict, grad_chunk=GRAD_CHUNK, jvp_chunk=JVP_CHUNK, progress=False):
    """The xr.Dataset of one task (see the module docstring); N = len(classes) * n_times."""
    import xarray as xr

    from pdeinf import __version__
    from pdeinf.influence.hat import batch_to_labelled

    n = inputs.shape[0]
    n_c = len(classes)
    if n % n_c:
        raise InputError(f"inputs: {n} examples is not a multiple of {n_c} classes")
    n_t = n // n_c
    engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
                       jvp_chunk=jvp_chunk, progress=progress)
    variants = variants_for(pde)
    pis, eigenvalues = [], None
    for variant in variants:
        if variant in _DRIFT:
            pi, _ = engine.pi("gauss-newton", damping=damping, response=_DRIFT[variant])
        else:
            pi, ev = engine.pi(variant, damping=damping, optimizer_state=optimizer_state)
            if variant == "gauss-newton":
                eigenvalues = ev
        pis.append(pi.numpy())
    padded = np.full(n, np.nan)
    padded[: eigenvalues.numel()] = eigenvalues.numpy()
    labelled = batch_to_labelled(np.stack(pis), n_c, n_t)
    t_idx, c_idx = np.arange(n_t), list(classes)
    dims4 = ("t_resp", "c_resp", "t_pert", "c_pert")
    ds = xr.Dataset(
        {
            "pi": (("variant",) + dims4, labelled),
            "losses": (("t", "c"), engine.losses.to(torch.float64).numpy().reshape(n_c, n_t).T),
            "eta_eigenvalues": (("mode",), padded),
            "grad_singular_values": (("mode",), engine.span.all_singular_values.numpy()),
            "rank": ((), np.int64(engine.span.rank)),
            "input_distance": (dims4, batch_to_labelled(input_distance(inputs), n_c, n_t)),
        },
        coords={"variant": list(variants), "t_resp": t_idx, "c_resp": c_idx, "t_pert": t_idx,
                "c_pert": c_idx, "t": t_idx, "c": c_idx, "mode": np.arange(n)},
        attrs={"pde": pde, "damping": float(damping), "energy_tol": float(energy_tol),
               "rank": int(engine.span.rank), "pdeinf_version": __version__,
               "pi_convention": "rows = response (t_resp, c_resp), columns = perturbation; raw",
               **attrs},
    )
    return ds


def _valid(path: Path, variants: tuple[str, ...], n: int) -> bool:
    import xarray as xr

    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if any(v not in ds for v in DATA_VARS):
                return False
            if tuple(ds["variant"].values.tolist()) != tuple(variants) or ds.sizes.get("mode") != n:
                return False
            return bool(np.isfinite(ds["pi"].values).all())
    except Exception:  # noqa: BLE001 - unreadable, truncated or foreign file: recompute it
        return False


_write = write_netcdf


def _distributed(rank, world_size) -> tuple[int, int]:
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not (0 <= rank < world_size):
        raise InputError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return rank, world_size


def run_sweep(profile, pde: str, model_name: str, *, data_root=None, runs_root=None, out_root=None,
              progress: bool = True, rank: int | None = None, world_size: int | None = None,
              grad_chunk: int | None = GRAD_CHUNK, jvp_chunk: int = JVP_CHUNK) -> list[Path]:
    """Compute this process's share of the profile's tasks; returns the files of that share.

    Existing valid files are kept (nothing recomputed). Checkpoints are read from
    `<runs_root>/<PDE>-<model>-s<seed>/ckpt_e<epoch:04d>.pt`, influence batches from
    `pdeinf.data.datasets.influence_batch(PDEData(data_root, pde, t_max), seed, batch)`.
    """
    prof = _profile(profile)
    check_pde(pde)
    check_model(model_name)
    if pde not in prof.checkpoints:
        raise InputError(f"profile {prof.name}: no checkpoint schedule for {pde}")
    rank, world_size = _distributed(rank, world_size)
    data_root = Path(data_root) if data_root is not None else paths.data_dir(prof.name)
    runs_root = Path(runs_root) if runs_root is not None else paths.runs_dir(prof.name)
    out_dir = sweep_dir(prof, pde, model_name, out_root)
    variants = variants_for(pde)
    n = len(PDE_CLASSES[pde]) * (prof.t_max - 1)

    mine = tasks(prof, pde)[rank::world_size]
    todo = [t for t in mine if not _valid(task_file(out_dir, *t), variants, n)]
    missing = [p for p in {_checkpoint_path(runs_root, pde, model_name, s, e) for s, e, _ in todo}
               if not p.is_file()]
    if missing:
        raise InputError(f"{min(missing)}: checkpoint not found ({len(missing)} missing; "
                         f"train {pde}/{model_name} at profile {prof.name} first)")
    data = _open_data(data_root, pde, prof.t_max) if todo else None

    bar = tqdm(total=len(todo), desc=f"influence {pde}-{model_name} [{rank}/{world_size}]",
               unit="task", disable=not progress)
    loaded = {}
    for seed, epoch, batch in todo:
        key = (seed, epoch)
        if key not in loaded:
            loaded.clear()  # one checkpoint in memory at a time (tasks are ordered by it)
            loaded[key] = _load_checkpoint(_checkpoint_path(runs_root, pde, model_name, seed, epoch),
                                           pde, model_name)
        model, ckpt = loaded[key]
        ib = _influence_batch(data, seed, batch)
        attrs = {"model": model_name, "seed": int(seed), "epoch": int(epoch), "batch": int(batch),
                 "profile": prof.name, "variants": ",".join(variants),
                 "trajectories": ",".join(str(int(v)) for v in np.unique(np.asarray(ib.trajectory)))}
        ds = compute_task(model, ckpt.get("optimizer_state"), ib.inputs, ib.targets, pde=pde,
                          classes=PDE_CLASSES[pde], damping=prof.damping, energy_tol=prof.energy_tol,
                          attrs=attrs, grad_chunk=grad_chunk, jvp_chunk=jvp_chunk)
        _write(ds, task_file(out_dir, seed, epoch, batch))
        bar.update(1)
    bar.close()
    return [task_file(out_dir, *t) for t in mine]


def load_sweep(profile, pde: str, model_name: str, *, out_root=None):
    """All task files concatenated: `pi` (seed, epoch, batch, variant, t_resp, c_resp, t_pert,
    c_pert), `losses` (seed, epoch, batch, t, c), ... InputError naming what is missing."""
    import xarray as xr

    prof = _profile(profile)
    if pde not in PDE_CLASSES:
        raise InputError(f"pde={pde!r}: expected one of {', '.join(PDE_CLASSES)}")
    out_dir = sweep_dir(prof, pde, model_name, out_root)
    variants = variants_for(pde)
    n = len(PDE_CLASSES[pde]) * (prof.t_max - 1)
    all_tasks = tasks(prof, pde)
    missing = [task_file(out_dir, *t) for t in all_tasks if not _valid(task_file(out_dir, *t), variants, n)]
    if missing:
        raise InputError(f"{missing[0]}: influence file missing or invalid ({len(missing)} of "
                         f"{len(all_tasks)}); run `pdeinf influence --pde {pde} --model {model_name} "
                         f"--profile {prof.name}`")
    by_seed = []
    for seed in prof.seeds:
        by_epoch = []
        for epoch in prof.checkpoints[pde]:
            parts = []
            for batch in range(prof.n_influence_batches):
                with xr.open_dataset(task_file(out_dir, seed, epoch, batch), engine="h5netcdf") as ds:
                    parts.append(ds.load())
            by_epoch.append(xr.concat(parts, dim="batch", combine_attrs="drop_conflicts"))
        by_seed.append(xr.concat(by_epoch, dim="epoch", combine_attrs="drop_conflicts"))
    out = xr.concat(by_seed, dim="seed", combine_attrs="drop_conflicts")
    out = out.assign_coords(seed=list(prof.seeds), epoch=list(prof.checkpoints[pde]),
                            batch=np.arange(prof.n_influence_batches))
    out["pi"] = out["pi"].transpose("seed", "epoch", "batch", "variant", ...)
    out.attrs.update({"model": model_name, "pde": pde, "profile": prof.name})
    return out
