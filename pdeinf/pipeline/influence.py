"""Stage 3: influence matrices for every (seed, checkpoint epoch, influence batch) of a profile.

One task = one checkpoint x one influence batch; it writes ONE netCDF file
`<out_root>/<PDE>-<model>/s<seed>_e<epoch:04d>_b<batch:02d>.nc` holding the dataset of
`pdeinf.influence.task.labelled_influence`, keyed on the checkpoint's bytes, the data's content
fingerprint, the seed and batch index, the variants, damping, energy tolerance and version: a
rerun recomputes exactly the tasks whose file is missing, stale or corrupt
(`pdeinf.pipeline.checksums.ensure_cached`). Under torchrun (RANK and WORLD_SIZE set) each
rank computes tasks[rank::world_size]; the files are the same as serial, and no process group
is needed because ranks share nothing but the file system.

Where checkpoints and batches come from is a collaborator (`FileSources` by default: the
pipeline's run layout and `pdeinf.data.datasets.influence_batch`), passed as an argument.
"""
from __future__ import annotations

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


def _cached(out_dir: Path, chosen, key_of=None) -> list[Cached]:
    """The task files of `chosen` (seed, epoch, batch), with `key_of(task)` when given."""
    return [Cached(t, task_file(out_dir, *t), key_of and key_of(t)) for t in chosen]


def _key_of(sources, prof, pde: str, model: str, study: Study):
    """`key_of(task, study)`: the content key of a task of `study` (or another study)."""
    data_key, digests = sources.data_key(), {}
    return lambda t, other=study: _task_key(sources, data_key, prof, pde, model, other, *t, digests)


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


def _follow_up_twin(key_of, prof, pde: str, model_name: str, seed: int, epoch: int, batch: int,
                    out_root):
    """The current follow-up dataset of the same (seed, checkpoint, batch), or None. With the
    subspace estimator its Gauss-Newton SMSE / mass / energy variants are the seed paper's
    C / M / E matrices (`influence.task.seed_paper_from_follow_up`): not computed twice."""
    if batch >= prof.n_influence_batches or epoch not in prof.checkpoints[pde]:
        return None
    path = task_file(sweep_dir(prof, pde, model_name, out_root, FOLLOW_UP), seed, epoch, batch)
    key = key_of((seed, epoch, batch), FOLLOW_UP)
    return load_keyed(path, key, FOLLOW_UP.data_vars, FOLLOW_UP.data_vars[:1])


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
        twin = _follow_up_twin(key_of, prof, pde, model_name, seed, epoch, batch, out_root) if reuse else None
        if twin is not None:
            ds = seed_paper_from_follow_up(twin, model, ib.inputs, pde=pde, damping=prof.damping,
                                           energy_tol=prof.energy_tol, attrs=attrs)
        else:
            ds = _compute(study, compute, model, ckpt, ib, pde=pde, model_name=model_name,
                          prof=prof, attrs=attrs, grad_chunk=grad_chunk or hat.GRAD_CHUNK,
                          jvp_chunk=jvp_chunk or hat.JVP_CHUNK, state_path=state_path(task))
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
    invalid (with `sources`, files are also checked against the current inputs' keys)."""
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
    c_resp, t_pert, c_pert) from the full-space estimator, `input_distance`,
    `ntk_top_eigenvalue` (seed, batch), `losses`, `cg_iterations`, `cg_residual`. Trains first
    if needed; recomputes exactly the tasks whose file is missing, stale or corrupt."""
    return _ensure_sweep(profile, pde, model, SEED_PAPER, progress)


def _ensure_sweep(profile, pde: str, model: str, study: Study, progress: bool):
    """`load_sweep` of the study's current files, training and computing what is needed first."""
    from pdeinf.pipeline.training import ensure_training

    profile = as_profile(profile)
    check_selection(profile, pde, model)
    ensure_training(profile, pde, model, progress=progress)
    sources = FileSources(profile, pde, model)
    run_sweep(profile, pde, model, sources=sources, progress=progress, study=study)
    return load_sweep(profile, pde, model, sources=sources, study=study)
