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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.atomic import write_netcdf
from pdeinf.errors import InputError
from pdeinf.influence.task import DATA_VARS
from pdeinf.influence.variants import variant_named, variants_for
from pdeinf.pipeline.checksums import checksum_ok, require_finite, with_checksum
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_selection,
    content_key,
    file_digest,
    final_epoch,
)


@dataclass(frozen=True)
class Study:
    """One kind of sweep: which tasks, what each file holds, how it is computed.

    FOLLOW_UP: every (seed, checkpoint, batch), the exact subspace estimator, all variants.
    SEED_PAPER: (seed, batch) at the final checkpoint, the full-space Krylov estimator with the
    C / M / E bras, the NTK's top eigenvalue (`pdeinf.influence.task.seed_paper_influence`).
    """

    name: str
    folder: str  # under results/influence/<profile>/
    dims: tuple[str, ...]  # task coordinates, outermost first
    data_vars: tuple[str, ...]

    def tasks(self, prof, pde: str) -> list[tuple[int, ...]]:
        batches = prof.n_influence_batches if self is FOLLOW_UP else prof.seed_paper_batches
        epochs = prof.checkpoints[pde] if self is FOLLOW_UP else (final_epoch(prof, pde),)
        return [(s, e, b) for s in prof.seeds for e in epochs for b in range(batches)]

    def settings(self, prof, pde: str, model: str) -> dict:
        if self is FOLLOW_UP:
            return {"variants": variants_for(pde), "damping": prof.damping,
                    "energy_tol": prof.energy_tol}
        if prof.seed_paper_estimator == "subspace":
            return {"estimator": "subspace", "damping": prof.damping, "energy_tol": prof.energy_tol}
        return {"estimator": "full-space", "damping": prof.fullspace_damping,
                "rtol": prof.rtol_for(model), "solver": "block"}


FOLLOW_UP = Study("follow-up", "", ("seed", "epoch", "batch"), DATA_VARS)
SEED_PAPER = Study("seed-paper", "seed-paper", ("seed", "batch"),
                   ("H", "input_distance", "ntk_top_eigenvalue", "losses"))


def sweep_dir(profile, pde: str, model_name: str, out_root=None, study: Study = FOLLOW_UP) -> Path:
    prof = as_profile(profile)
    root = Path(out_root) if out_root is not None else paths.influence_dir(prof.name)
    return root / study.folder / f"{pde}-{model_name}"


def task_file(directory: Path, seed: int, epoch: int, batch: int) -> Path:
    return Path(directory) / f"s{seed}_e{epoch:04d}_b{batch:02d}.nc"


def tasks(profile, pde: str, study: Study = FOLLOW_UP) -> list[tuple[int, int, int]]:
    """All (seed, epoch, batch) of the profile for one PDE and study, in a fixed order."""
    return study.tasks(as_profile(profile), pde)


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


def _task_key(sources, data_key: str, prof, pde: str, model: str, study: Study, seed: int,
              epoch: int, batch: int, digests: dict) -> str:
    ckpt = sources.checkpoint(seed, epoch)
    if ckpt not in digests:
        digests[ckpt] = file_digest(ckpt) if Path(ckpt).is_file() else "missing"
    return content_key(stage=f"influence/{study.name}", checkpoint=digests[ckpt], data=data_key,
                       seed=int(seed), batch=int(batch), t_max=prof.t_max,
                       **study.settings(prof, pde, model))


def _valid(path: Path, key: str | None, study: Study) -> bool:
    """The file opens, holds every variable, matches `key` (None: any) and its checksum."""
    import xarray as xr

    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception:  # noqa: BLE001 - unreadable, truncated or foreign file: recompute it
        return False
    if any(v not in ds for v in study.data_vars):
        return False
    if key is not None and ds.attrs.get("cache_key") != key:
        return False
    main = ds["pi" if "pi" in ds else "H"].values
    return checksum_ok(ds) and bool(np.isfinite(main).all())


def _distributed(rank, world_size) -> tuple[int, int]:
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not (0 <= rank < world_size):
        raise InputError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return rank, world_size


def _compute(study: Study, compute, model, ckpt, ib, *, pde, model_name, prof, attrs,
             grad_chunk, jvp_chunk, state_path):
    if study is FOLLOW_UP:
        return compute(model, ckpt.get("optimizer_state"), ib.inputs, ib.targets, pde=pde,
                       damping=prof.damping, energy_tol=prof.energy_tol, attrs=attrs,
                       grad_chunk=grad_chunk, jvp_chunk=jvp_chunk)
    subspace = prof.seed_paper_estimator == "subspace"
    return compute(model, ib.inputs, ib.targets, pde=pde,
                   damping=prof.damping if subspace else prof.fullspace_damping,
                   rtol=prof.rtol_for(model_name), estimator=prof.seed_paper_estimator,
                   energy_tol=prof.energy_tol, attrs=attrs, state_path=state_path)


def _follow_up_twin(sources, data_key: str, prof, pde: str, model_name: str, seed: int,
                    epoch: int, batch: int, digests: dict, out_root):
    """The current follow-up dataset of the same (seed, checkpoint, batch), or None. With the
    subspace estimator its Gauss-Newton SMSE / mass / energy variants are the seed paper's
    C / M / E matrices (`influence.task.seed_paper_from_follow_up`): not computed twice."""
    import xarray as xr

    if batch >= prof.n_influence_batches or epoch not in prof.checkpoints[pde]:
        return None
    path = task_file(sweep_dir(prof, pde, model_name, out_root, FOLLOW_UP), seed, epoch, batch)
    key = _task_key(sources, data_key, prof, pde, model_name, FOLLOW_UP, seed, epoch, batch, digests)
    if not _valid(path, key, FOLLOW_UP):
        return None
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def run_sweep(profile, pde: str, model_name: str, *, sources=None, out_root=None,
              progress: bool = True, rank: int | None = None, world_size: int | None = None,
              grad_chunk: int | None = None, jvp_chunk: int | None = None,
              compute=None, study: Study = FOLLOW_UP) -> list[Path]:
    """Compute this process's share of the study's tasks; returns the files of that share.

    Valid files whose key matches the current inputs are kept; the rest are (re)computed with
    `compute` (default `labelled_influence`, or `seed_paper_influence` for SEED_PAPER). A
    seed-paper task's Krylov state is kept beside its file while it runs (`.cg.pt`), so a
    killed solve resumes.
    """
    from pdeinf.influence import hat
    from pdeinf.influence.task import (
        labelled_influence,
        seed_paper_from_follow_up,
        seed_paper_influence,
    )

    prof = as_profile(profile)
    check_selection(prof, pde, model_name)
    rank, world_size = _distributed(rank, world_size)
    sources = sources if sources is not None else FileSources(prof, pde, model_name)
    reuse = compute is None and study is SEED_PAPER and prof.seed_paper_estimator == "subspace"
    compute = compute or (labelled_influence if study is FOLLOW_UP else seed_paper_influence)
    out_dir = sweep_dir(prof, pde, model_name, out_root, study)
    mine = study.tasks(prof, pde)[rank::world_size]
    missing = sorted({sources.checkpoint(s, e) for s, e, _ in mine
                      if not Path(sources.checkpoint(s, e)).is_file()})
    if missing:
        raise InputError(f"{missing[0]}: checkpoint not found ({len(missing)} missing; "
                         f"train {pde}/{model_name} at profile {prof.name} first)")
    data_key, digests = sources.data_key(), {}
    keys = {t: _task_key(sources, data_key, prof, pde, model_name, study, *t, digests) for t in mine}
    todo = [t for t in mine if not _valid(task_file(out_dir, *t), keys[t], study)]

    bar = tqdm(total=len(todo), desc=f"{study.name} {pde}-{model_name} [{rank}/{world_size}]",
               unit="task", disable=not progress)
    loaded: dict = {}
    for seed, epoch, batch in todo:
        if (seed, epoch) not in loaded:
            loaded.clear()  # one checkpoint in memory at a time (tasks are ordered by it)
            loaded[(seed, epoch)] = sources.model(seed, epoch)
        model, ckpt = loaded[(seed, epoch)]
        ib = sources.batch(seed, batch)
        target = task_file(out_dir, seed, epoch, batch)
        attrs = {"model": model_name, "seed": int(seed), "epoch": int(epoch), "batch": int(batch),
                 "profile": prof.name, "cache_key": keys[(seed, epoch, batch)],
                 "trajectories": ",".join(str(int(v)) for v in np.unique(np.asarray(ib.trajectory)))}
        state_path = target.with_name(f".{target.stem}.{keys[(seed, epoch, batch)][:8]}.cg.pt")
        if study is SEED_PAPER:
            state_path.parent.mkdir(parents=True, exist_ok=True)
        twin = (_follow_up_twin(sources, data_key, prof, pde, model_name, seed, epoch, batch,
                                digests, out_root) if reuse else None)
        if twin is not None:
            ds = seed_paper_from_follow_up(twin, model, ib.inputs, pde=pde, damping=prof.damping,
                                           energy_tol=prof.energy_tol, attrs=attrs)
        else:
            ds = _compute(study, compute, model, ckpt, ib, pde=pde, model_name=model_name,
                          prof=prof, attrs=attrs, grad_chunk=grad_chunk or hat.GRAD_CHUNK,
                          jvp_chunk=jvp_chunk or hat.JVP_CHUNK, state_path=state_path)
        require_finite(ds, "pi" if "pi" in ds else "H",
                       f"{target} (from {sources.checkpoint(seed, epoch)})")
        write_netcdf(with_checksum(ds), target)
        state_path.unlink(missing_ok=True)
        bar.update(1)
    bar.close()
    return [task_file(out_dir, *t) for t in mine]


def load_sweep(profile, pde: str, model_name: str, *, out_root=None, sources=None,
               study: Study = FOLLOW_UP):
    """All task files of a study concatenated along its task dims (FOLLOW_UP: `pi` (seed,
    epoch, batch, variant, t_resp, c_resp, t_pert, c_pert), `losses` (seed, epoch, batch, t, c),
    ...; SEED_PAPER: `H` (seed, batch, bra, ...), ...). InputError naming what is missing or
    invalid (with `sources`, files are also checked against the current inputs' keys)."""
    import xarray as xr

    prof = as_profile(profile)
    check_selection(prof, pde, model_name)
    out_dir = sweep_dir(prof, pde, model_name, out_root, study)
    all_tasks = study.tasks(prof, pde)
    keys = {t: None for t in all_tasks}
    if sources is not None:
        data_key, digests = sources.data_key(), {}
        keys = {t: _task_key(sources, data_key, prof, pde, model_name, study, *t, digests)
                for t in all_tasks}
    bad = [task_file(out_dir, *t) for t in all_tasks if not _valid(task_file(out_dir, *t), keys[t], study)]
    if bad:
        raise InputError(f"{bad[0]}: influence file missing, stale or corrupt ({len(bad)} of "
                         f"{len(all_tasks)}); run `pdeinf influence --pde {pde} --model {model_name} "
                         f"--profile {prof.name}`")
    seeds = list(dict.fromkeys(t[0] for t in all_tasks))
    epochs = list(dict.fromkeys(t[1] for t in all_tasks))
    batches = list(dict.fromkeys(t[2] for t in all_tasks))
    by_seed = []
    for seed in seeds:
        by_epoch = []
        for epoch in epochs:
            parts = []
            for batch in batches:
                with xr.open_dataset(task_file(out_dir, seed, epoch, batch), engine="h5netcdf") as ds:
                    parts.append(ds.load())
            by_epoch.append(xr.concat(parts, dim="batch", combine_attrs="drop_conflicts"))
        by_seed.append(xr.concat(by_epoch, dim="epoch", combine_attrs="drop_conflicts"))
    out = xr.concat(by_seed, dim="seed", combine_attrs="drop_conflicts")
    out = out.assign_coords(seed=seeds, epoch=epochs, batch=np.arange(len(batches)))
    if study is FOLLOW_UP:
        out["pi"] = out["pi"].transpose("seed", "epoch", "batch", "variant", ...)
    else:
        out = out.isel(epoch=0)
        out["H"] = out["H"].transpose("seed", "batch", "bra", ...)
    out.attrs.update({"model": model_name, "pde": pde, "profile": prof.name, "study": study.name})
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
    ds.attrs.pop("study", None)
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


def ensure_seed_paper(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """The seed paper's influence of the final checkpoint: `H` (seed, batch, bra, t_resp,
    c_resp, t_pert, c_pert) from the full-space estimator, `input_distance`,
    `ntk_top_eigenvalue` (seed, batch), `losses`, `cg_iterations`, `cg_residual`. Trains first
    if needed; recomputes exactly the tasks whose file is missing, stale or corrupt."""
    from pdeinf.pipeline.training import ensure_training

    profile = as_profile(profile)
    check_selection(profile, pde, model)
    ensure_training(profile, pde, model, progress=progress)
    sources = FileSources(profile, pde, model)
    run_sweep(profile, pde, model, sources=sources, progress=progress, study=SEED_PAPER)
    return load_sweep(profile, pde, model, sources=sources, study=SEED_PAPER)
