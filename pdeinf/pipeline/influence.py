"""Stage 3: influence matrices of every (seed, checkpoint epoch, influence batch) of a profile.

One task, one netCDF `<PDE>-<model>/s<seed>_e<epoch:04d>_b<batch:02d>.nc` (a
`pdeinf.influence.task.labelled_influence` dataset), keyed on the checkpoint's bytes, the data
fingerprint, seed, batch and settings (`checksums.ensure_cached`). Under torchrun (RANK,
WORLD_SIZE) each rank computes tasks[rank::world_size], sharing only the file system.
Checkpoints and batches come from a collaborator (`FileSources` by default).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeinf import paths
from pdeinf.errors import InputError
from pdeinf.influence.task import DATA_VARS
from pdeinf.influence.variants import variant_named, variants_for
from pdeinf.pipeline.checksums import (
    Cached,
    ensure_cached,
    load_cached,
    load_keyed,
    require_finite,
    stack,
)
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_selection,
    content_key,
    file_digest,
    final_epoch,
    require_checkpoints,
    trajectory_list,
)


@dataclass(frozen=True)
class Study:
    """One kind of sweep. FOLLOW_UP: every (seed, checkpoint, batch), the exact subspace
    estimator, all variants. SEED_PAPER: (seed, batch) at the final checkpoint, the seed paper's
    estimator and C / M / E bras (`pdeinf.influence.task.seed_paper_influence`)."""

    name: str
    folder: str  # under results/influence/<profile>/
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


FOLLOW_UP = Study("follow-up", "", DATA_VARS)
SEED_PAPER = Study("seed-paper", "seed-paper", ("H", "input_distance", "ntk_top_eigenvalue", "losses"))


def sweep_dir(profile, pde: str, model_name: str, out_root=None, study: Study = FOLLOW_UP) -> Path:
    prof = as_profile(profile)
    root = Path(out_root) if out_root is not None else paths.influence_dir(prof.name)
    return root / study.folder / f"{pde}-{model_name}"


def task_file(directory: Path, seed: int, epoch: int, batch: int) -> Path:
    return Path(directory) / f"s{seed}_e{epoch:04d}_b{batch:02d}.nc"


class FileSources:
    """Checkpoints from the run layout under `runs_root`, test influence batches from the PDEGym
    files under `data_root`. Any object with `checkpoint(seed, epoch) -> Path`, `model(seed,
    epoch) -> (nn.Module, ckpt)`, `batch(seed, index)` and `data_key() -> str` can stand in."""

    def __init__(self, profile, pde: str, model_name: str, *, runs_root=None, data_root=None):
        self.profile, self.pde, self.model_name = as_profile(profile), pde, model_name
        self.runs_root = Path(runs_root) if runs_root is not None else paths.runs_dir(self.profile.name)
        self.data_root = Path(data_root) if data_root is not None else paths.data_dir(self.profile.name)

    def checkpoint(self, seed: int, epoch: int) -> Path:
        return paths.checkpoint_path(self.runs_root / paths.run_name(self.pde, self.model_name, seed), epoch)

    def model(self, seed: int, epoch: int):
        from pdeinf.training.train import load_checkpoint

        return load_checkpoint(self.checkpoint(seed, epoch), pde=self.pde, model_name=self.model_name)

    @functools.cached_property
    def data(self):
        from pdeinf.data.datasets import PDEData
        from pdeinf.pipeline.training import content_cache_path

        return PDEData(self.data_root, self.pde, self.profile.t_max, fractions=self.profile.split,
                       content_cache=content_cache_path())

    def batch(self, seed: int, index: int):
        from pdeinf.data.datasets import influence_batch

        return influence_batch(self.data, seed, index, split="test")

    def data_key(self) -> str:
        return str(self.data.fingerprint())


def _key_of(sources, prof, pde: str, model: str, study: Study):
    """`key_of(task, study)`: the content key of a (seed, epoch, batch) of `study` (or another)."""
    data_key, digests = sources.data_key(), {}

    def key_of(task, other=study):
        seed, epoch, batch = task
        ckpt = sources.checkpoint(seed, epoch)
        if ckpt not in digests:
            digests[ckpt] = file_digest(ckpt) if Path(ckpt).is_file() else "missing"
        return content_key(stage=f"influence/{other.name}", checkpoint=digests[ckpt], data=data_key,
                           seed=int(seed), batch=int(batch), t_max=prof.t_max,
                           **other.settings(prof, pde, model))
    return key_of


def _cached(out_dir: Path, chosen, key_of=None) -> list[Cached]:
    """The task files of `chosen` (seed, epoch, batch), with `key_of(task)` when given."""
    return [Cached(t, task_file(out_dir, *t), key_of and key_of(t)) for t in chosen]


def run_sweep(profile, pde: str, model_name: str, *, sources=None, out_root=None,
              progress: bool = True, rank: int | None = None, world_size: int | None = None,
              grad_chunk: int | None = None, jvp_chunk: int | None = None,
              compute=None, study: Study = FOLLOW_UP) -> list[Path]:
    """Compute this process's share of the study's tasks (missing, stale or corrupt ones) with
    `compute` (default `labelled_influence`, or `seed_paper_influence` for SEED_PAPER); returns
    the share's files. A seed-paper task keeps its Krylov state beside its file while it runs
    (`.cg.pt`), so a killed solve resumes. InputError on a bad rank / world size."""
    from pdeinf.influence import hat
    from pdeinf.influence.task import (
        labelled_influence,
        seed_paper_from_follow_up,
        seed_paper_influence,
    )

    prof = as_profile(profile)
    check_selection(prof, pde, model_name)
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if world_size < 1 or not (0 <= rank < world_size):
        raise InputError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    sources = sources if sources is not None else FileSources(prof, pde, model_name)
    reuse = compute is None and study is SEED_PAPER and prof.seed_paper_estimator == "subspace"
    compute = compute or (labelled_influence if study is FOLLOW_UP else seed_paper_influence)
    out_dir = sweep_dir(prof, pde, model_name, out_root, study)
    mine = study.tasks(prof, pde)[rank::world_size]
    require_checkpoints([sources.checkpoint(s, e) for s, e, _ in mine],
                        f"train {pde}/{model_name} at profile {prof.name} first")
    key_of, loaded = _key_of(sources, prof, pde, model_name, study), {}

    def state_path(task: Cached) -> Path:
        return task.path.with_name(f".{task.path.stem}.{task.key[:8]}.cg.pt")

    def compute_task(task: Cached):
        seed, epoch, batch = task.id
        if (seed, epoch) not in loaded:
            loaded.clear()  # one checkpoint in memory at a time (tasks are ordered by it)
            loaded[(seed, epoch)] = sources.model(seed, epoch)
        model, ckpt = loaded[(seed, epoch)]
        ib = sources.batch(seed, batch)
        attrs = {"model": model_name, "seed": int(seed), "epoch": int(epoch), "batch": int(batch),
                 "profile": prof.name, "trajectories": trajectory_list([ib])}
        if study is SEED_PAPER:
            task.path.parent.mkdir(parents=True, exist_ok=True)
        # with the subspace estimator the current follow-up file of the same task holds the
        # seed paper's C / M / E matrices (its Gauss-Newton SMSE / mass / energy variants)
        twin = None
        if reuse and batch < prof.n_influence_batches and epoch in prof.checkpoints[pde]:
            twin = load_keyed(task_file(sweep_dir(prof, pde, model_name, out_root), seed, epoch, batch),
                              key_of((seed, epoch, batch), FOLLOW_UP), FOLLOW_UP.data_vars,
                              FOLLOW_UP.data_vars[:1])
        if twin is not None:
            ds = seed_paper_from_follow_up(twin, model, ib.inputs, pde=pde, damping=prof.damping,
                                           energy_tol=prof.energy_tol, attrs=attrs)
        elif study is FOLLOW_UP:
            ds = compute(model, ckpt.get("optimizer_state"), ib.inputs, ib.targets, pde=pde,
                         damping=prof.damping, energy_tol=prof.energy_tol, attrs=attrs,
                         grad_chunk=grad_chunk or hat.GRAD_CHUNK, jvp_chunk=jvp_chunk or hat.JVP_CHUNK)
        else:
            ds = compute(model, ib.inputs, ib.targets, pde=pde,
                         damping=study.settings(prof, pde, model_name)["damping"],
                         rtol=prof.rtol_for(model_name), estimator=prof.seed_paper_estimator,
                         energy_tol=prof.energy_tol, attrs=attrs, state_path=state_path(task))
        require_finite(ds, study.data_vars[0], f"{task.path} (from {sources.checkpoint(seed, epoch)})")
        return ds

    tasks = _cached(out_dir, mine, key_of)
    ensure_cached(tasks, compute_task, variables=study.data_vars, finite=study.data_vars[:1],
                  desc=f"{study.name} {pde}-{model_name} [{rank}/{world_size}]", progress=progress,
                  load=False, written=lambda task: state_path(task).unlink(missing_ok=True))
    return [t.path for t in tasks]


def load_sweep(profile, pde: str, model_name: str, *, out_root=None, sources=None,
               study: Study = FOLLOW_UP):
    """All task files of a study concatenated along its task dims (FOLLOW_UP: `pi` (seed,
    epoch, batch, variant, t_resp, c_resp, t_pert, c_pert), `losses` (seed, epoch, batch, t, c),
    ...; SEED_PAPER: `H` (seed, batch, bra, ...), ...). InputError naming what is missing or
    invalid (with `sources`, also stale against the current inputs' keys)."""
    prof = as_profile(profile)
    check_selection(prof, pde, model_name)
    all_tasks = study.tasks(prof, pde)
    key_of = _key_of(sources, prof, pde, model_name, study) if sources is not None else None
    parts = load_cached(_cached(sweep_dir(prof, pde, model_name, out_root, study), all_tasks, key_of),
                        variables=study.data_vars, finite=study.data_vars[:1], what="influence file",
                        hint=f"`pdeinf influence --pde {pde} --model {model_name} --profile {prof.name}`")
    out = stack(parts, ("seed", "epoch", "batch"), combine_attrs="drop_conflicts")
    seeds, epochs, batches = (list(dict.fromkeys(t[i] for t in all_tasks)) for i in range(3))
    out = out.assign_coords(seed=seeds, epoch=epochs, batch=np.arange(len(batches)))
    if study is FOLLOW_UP:
        out["pi"] = out["pi"].transpose("seed", "epoch", "batch", "variant", ...)
    else:
        out = out.isel(epoch=0)
        out["H"] = out["H"].transpose("seed", "batch", "bra", ...)
    out.attrs.update({"model": model_name, "pde": pde, "profile": prof.name, "study": study.name})
    return out


def trained_sources(profile: ProfileLike, pde: str, model: str, progress: bool = True) -> FileSources:
    """`FileSources` of (pde, model), its runs trained (or resumed, or retrained) first."""
    from pdeinf.pipeline.training import ensure_training

    ensure_training(profile, pde, model, progress=progress)
    return FileSources(profile, pde, model)


def ensure_influence(profile: ProfileLike, pde: str, model: str, *, metric: str | None = None,
                     observable: str | None = None, progress: bool = True):
    """Influence matrices of every (seed, checkpoint, influence batch), as an `xr.Dataset`:
    `pi` (seed, epoch, batch, variant, t_resp, c_resp, t_pert, c_pert), `losses` (seed, epoch,
    batch, t, c), `eta_eigenvalues`, `rank`, `input_distance`. `metric` or `observable` selects
    one variant (`variants.variant_named`; `pi` then without `variant`, named in `attrs`).
    Trains first if needed; recomputes exactly the missing, stale or corrupt task files."""
    variant = None if metric is None and observable is None else variant_named(metric, observable)
    ds = _ensure_sweep(profile, pde, model, FOLLOW_UP, progress)
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
    c_resp, t_pert, c_pert), `input_distance`, `ntk_top_eigenvalue` (seed, batch), `losses`,
    `cg_iterations`, `cg_residual`. Trains and (re)computes what is needed first."""
    return _ensure_sweep(profile, pde, model, SEED_PAPER, progress)


def _ensure_sweep(profile, pde: str, model: str, study: Study, progress: bool):
    """`load_sweep` of the study's current files, training and computing what is needed first."""
    sources = trained_sources(profile, pde, model, progress)
    run_sweep(sources.profile, pde, model, sources=sources, progress=progress, study=study)
    return load_sweep(sources.profile, pde, model, sources=sources, study=study)
