"""Stage 3: influence matrices for every (seed, checkpoint epoch, influence batch) of a profile.

One task = one checkpoint x one influence batch; it writes ONE netCDF file
`<out_root>/<PDE>-<model>/s<seed>_e<epoch:04d>_b<batch:02d>.nc` holding the dataset of
`pdeinf.influence.task.labelled_influence`. Each file records

- `cache_key`: a hash of what it depends on (the checkpoint's bytes, the data's content
  fingerprint, the seed and batch index, the variants, damping, energy tolerance, version);
- a checksum of its arrays (`pdeinf.pipeline.checksums`).

A rerun keeps a file only when it opens, its key equals the key of the current inputs and its
arrays match the checksum; otherwise that task alone is recomputed. Under torchrun (RANK and
WORLD_SIZE set) each rank computes tasks[rank::world_size]; the files are the same as serial,
and no process group is needed because ranks share nothing but the file system.

Where checkpoints and batches come from is a collaborator (`FileSources` by default: the
pipeline's run layout and `pdeinf.data.datasets.influence_batch`), passed as an argument.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.atomic import write_netcdf
from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.influence.task import DATA_VARS
from pdeinf.influence.variants import variant_named, variants_for
from pdeinf.pipeline.checksums import checksum_ok, with_checksum
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_selection,
    content_key,
    file_digest,
)


def sweep_dir(profile, pde: str, model_name: str, out_root=None) -> Path:
    prof = as_profile(profile)
    root = Path(out_root) if out_root is not None else paths.influence_dir(prof.name)
    return root / f"{pde}-{model_name}"


def task_file(directory: Path, seed: int, epoch: int, batch: int) -> Path:
    return Path(directory) / f"s{seed}_e{epoch:04d}_b{batch:02d}.nc"


def tasks(profile, pde: str) -> list[tuple[int, int, int]]:
    """All (seed, epoch, batch) of the profile for one PDE, in a fixed order."""
    prof = as_profile(profile)
    return [(seed, epoch, batch) for seed in prof.seeds for epoch in prof.checkpoints[pde]
            for batch in range(prof.n_influence_batches)]


class FileSources:
    """Checkpoints from the run layout under `runs_root`, influence batches from the PDEGym
    files under `data_root` (the pipeline's defaults). Any object with the methods
    `checkpoint(seed, epoch) -> Path`, `model(seed, epoch) -> (nn.Module, ckpt dict)`,
    `batch(seed, index) -> obj with .inputs, .targets, .trajectory` and `data_key() -> str`
    can stand in for it."""

    def __init__(self, profile, pde: str, model_name: str, *, runs_root=None, data_root=None):
        self.profile, self.pde, self.model_name = as_profile(profile), pde, model_name
        self.runs_root = Path(runs_root) if runs_root is not None else paths.runs_dir(self.profile.name)
        self.data_root = Path(data_root) if data_root is not None else paths.data_dir(self.profile.name)
        self._data = None

    def checkpoint(self, seed: int, epoch: int) -> Path:
        return paths.checkpoint_path(self.runs_root / paths.run_name(self.pde, self.model_name, seed), epoch)

    def model(self, seed: int, epoch: int):
        from pdeinf.training.train import load_checkpoint

        return load_checkpoint(self.checkpoint(seed, epoch), pde=self.pde, model_name=self.model_name)

    @property
    def data(self):
        if self._data is None:
            from pdeinf.data.datasets import PDEData
            from pdeinf.pipeline.data import content_cache_path

            self._data = PDEData(self.data_root, self.pde, self.profile.t_max,
                                 fractions=self.profile.split, content_cache=content_cache_path())
        return self._data

    def batch(self, seed: int, index: int):
        from pdeinf.data.datasets import influence_batch

        return influence_batch(self.data, seed, index, split="test")

    def data_key(self) -> str:
        return str(self.data.fingerprint())


def _task_key(sources, data_key: str, prof, pde: str, seed: int, epoch: int, batch: int,
              digests: dict) -> str:
    ckpt = sources.checkpoint(seed, epoch)
    if ckpt not in digests:
        digests[ckpt] = file_digest(ckpt) if Path(ckpt).is_file() else "missing"
    return content_key(stage="influence", checkpoint=digests[ckpt], data=data_key, seed=int(seed),
                       batch=int(batch), variants=variants_for(pde), damping=prof.damping,
                       energy_tol=prof.energy_tol, t_max=prof.t_max)


def _valid(path: Path, key: str | None, n: int) -> bool:
    """The file opens, holds every variable, matches `key` (None: any) and its checksum."""
    import xarray as xr

    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception:  # noqa: BLE001 - unreadable, truncated or foreign file: recompute it
        return False
    if any(v not in ds for v in DATA_VARS) or ds.sizes.get("mode") != n:
        return False
    if key is not None and ds.attrs.get("cache_key") != key:
        return False
    return checksum_ok(ds) and bool(np.isfinite(ds["pi"].values).all())


def _distributed(rank, world_size) -> tuple[int, int]:
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not (0 <= rank < world_size):
        raise InputError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return rank, world_size


def run_sweep(profile, pde: str, model_name: str, *, sources=None, out_root=None,
              progress: bool = True, rank: int | None = None, world_size: int | None = None,
              grad_chunk: int | None = None, jvp_chunk: int | None = None,
              compute=None) -> list[Path]:
    """Compute this process's share of the profile's tasks; returns the files of that share.

    Valid files whose key matches the current inputs are kept; the rest are (re)computed with
    `compute` (default `pdeinf.influence.task.labelled_influence`).
    """
    from pdeinf.influence import hat
    from pdeinf.influence.task import labelled_influence

    prof = as_profile(profile)
    check_selection(prof, pde, model_name)
    rank, world_size = _distributed(rank, world_size)
    sources = sources if sources is not None else FileSources(prof, pde, model_name)
    compute = compute or labelled_influence
    out_dir = sweep_dir(prof, pde, model_name, out_root)
    n = len(pde_spec(pde).classes) * (prof.t_max - 1)
    mine = tasks(prof, pde)[rank::world_size]
    missing = sorted({sources.checkpoint(s, e) for s, e, _ in mine
                      if not Path(sources.checkpoint(s, e)).is_file()})
    if missing:
        raise InputError(f"{missing[0]}: checkpoint not found ({len(missing)} missing; "
                         f"train {pde}/{model_name} at profile {prof.name} first)")
    data_key, digests = sources.data_key(), {}
    keys = {t: _task_key(sources, data_key, prof, pde, *t, digests) for t in mine}
    todo = [t for t in mine if not _valid(task_file(out_dir, *t), keys[t], n)]

    bar = tqdm(total=len(todo), desc=f"influence {pde}-{model_name} [{rank}/{world_size}]",
               unit="task", disable=not progress)
    loaded: dict = {}
    for seed, epoch, batch in todo:
        if (seed, epoch) not in loaded:
            loaded.clear()  # one checkpoint in memory at a time (tasks are ordered by it)
            loaded[(seed, epoch)] = sources.model(seed, epoch)
        model, ckpt = loaded[(seed, epoch)]
        ib = sources.batch(seed, batch)
        attrs = {"model": model_name, "seed": int(seed), "epoch": int(epoch), "batch": int(batch),
                 "profile": prof.name, "cache_key": keys[(seed, epoch, batch)],
                 "trajectories": ",".join(str(int(v)) for v in np.unique(np.asarray(ib.trajectory)))}
        ds = compute(model, ckpt.get("optimizer_state"), ib.inputs, ib.targets, pde=pde,
                     damping=prof.damping, energy_tol=prof.energy_tol, attrs=attrs,
                     grad_chunk=grad_chunk or hat.GRAD_CHUNK, jvp_chunk=jvp_chunk or hat.JVP_CHUNK)
        write_netcdf(with_checksum(ds), task_file(out_dir, seed, epoch, batch))
        bar.update(1)
    bar.close()
    return [task_file(out_dir, *t) for t in mine]


def load_sweep(profile, pde: str, model_name: str, *, out_root=None, sources=None):
    """All task files concatenated: `pi` (seed, epoch, batch, variant, t_resp, c_resp, t_pert,
    c_pert), `losses` (seed, epoch, batch, t, c), ... InputError naming what is missing or
    invalid (with `sources`, files are also checked against the current inputs' keys)."""
    import xarray as xr

    prof = as_profile(profile)
    check_selection(prof, pde, model_name)
    out_dir = sweep_dir(prof, pde, model_name, out_root)
    n = len(pde_spec(pde).classes) * (prof.t_max - 1)
    all_tasks = tasks(prof, pde)
    keys = {t: None for t in all_tasks}
    if sources is not None:
        data_key, digests = sources.data_key(), {}
        keys = {t: _task_key(sources, data_key, prof, pde, *t, digests) for t in all_tasks}
    bad = [task_file(out_dir, *t) for t in all_tasks if not _valid(task_file(out_dir, *t), keys[t], n)]
    if bad:
        raise InputError(f"{bad[0]}: influence file missing, stale or corrupt ({len(bad)} of "
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


def ensure_influence(profile: ProfileLike, pde: str, model: str, *, metric: str | None = None,
                     observable: str | None = None, progress: bool = True):
    """Influence matrices of every (seed, checkpoint, influence batch), as an `xr.Dataset`.

    With `metric` and `observable` left None: everything the sweep stores, `pi` with dims
    `(seed, epoch, batch, variant, t_resp, c_resp, t_pert, c_pert)` (`variants_for(pde)`),
    `losses (seed, epoch, batch, t, c)`, `eta_eigenvalues`, `rank`, `input_distance`. Giving
    either selects one variant (`pdeinf.influence.variants.variant_named`): `pi` then has no
    `variant` dimension and `attrs["metric"]`, `attrs["observable"]` name it.

    Trains first if needed (or if the data changed); recomputes exactly the tasks whose file
    is missing, stale (other inputs) or corrupt (checksum).
    """
    from pdeinf.pipeline.training import ensure_training

    profile = as_profile(profile)
    check_selection(profile, pde, model)
    variant = None if metric is None and observable is None else variant_named(metric, observable)
    ensure_training(profile, pde, model, progress=progress)
    sources = FileSources(profile, pde, model)
    run_sweep(profile, pde, model, sources=sources, progress=progress)
    ds = load_sweep(profile, pde, model, sources=sources)
    if variant is None:
        return ds
    held = [str(v) for v in ds["variant"].values]
    if variant not in held:
        raise InputError(f"metric/observable: variant {variant!r} not in the {pde} sweep ({held})")
    out = ds.sel(variant=variant, drop=True)
    out.attrs.update(metric=metric or "gauss-newton", observable=observable or "smse", variant=variant)
    return out


def load_variants(profile, pde: str, model: str, names=None, *, progress: bool = True):
    """The cached sweep of (pde, model), restricted to the named variants (None: all)."""
    ds = ensure_influence(profile, pde, model, progress=progress)
    held = [str(v) for v in ds["variant"].values]
    wanted = list(names) if names is not None else held
    missing = [n for n in wanted if n not in held]
    if missing:
        raise InputError(f"names: variant(s) {missing} not in the {pde}-{model} sweep ({held})")
    return ds.sel(variant=wanted)
