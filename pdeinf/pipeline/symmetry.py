"""Stage: the symmetry study (follow-up section 7 + Lie derivative) of every training seed.

One file per seed, `results/symmetry/<profile>/<PDE>-<model>/s<seed>.nc`: `symmetry.study.
symmetry_study` of the final checkpoint on `profile.symmetry_batches` influence batches and of
every checkpoint on the first batch, keyed on the seed's checkpoint bytes, the data and the
settings.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pdeinf import paths
from pdeinf.errors import InputError
from pdeinf.pipeline.checksums import Cached, ensure_cached, load_cached, load_keyed
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_selection,
    content_key,
    file_digest,
    final_epoch,
    require_checkpoints,
    scheduled_checkpoints,
    trajectory_list,
)

DATA_VARS = ("equivariance", "equivariance_authors", "orbit_diagonal", "lie_norm",
             "lie_layer_norm", "axis_check", "lie_norm_epochs", "orbit_diagonal_epochs")
#: Bumped when what a file holds changes (part of the cache key).
STAGE_VERSION = 1


def symmetry_dir(profile, pde: str, model: str, out_root=None) -> Path:
    prof = as_profile(profile)
    root = Path(out_root) if out_root is not None else paths.results_dir() / "symmetry" / prof.name
    return root / f"{pde}-{model}"


def seed_file(directory: Path, seed: int) -> Path:
    return Path(directory) / f"s{int(seed)}.nc"


def orbit_epochs(prof, pde: str) -> list[int]:
    """Checkpoints of the tracked orbit diagonals: those of `profile.symmetry_orbit_epochs` and
    the final one, or (None) every checkpoint."""
    every = list(scheduled_checkpoints(prof, pde))
    if prof.symmetry_orbit_epochs is None:
        return every
    return sorted({int(e) for e in prof.symmetry_orbit_epochs if int(e) in every} | {final_epoch(prof, pde)})


def seed_key(sources, data_key: str, prof, pde: str, model: str, seed: int) -> str:
    """What a seed's file depends on: its checkpoints' bytes, the data and the settings."""
    digests = {}
    for epoch in scheduled_checkpoints(prof, pde):
        ckpt = Path(sources.checkpoint(seed, epoch))
        digests[str(epoch)] = file_digest(ckpt) if ckpt.is_file() else "missing"
    return content_key(stage="symmetry", pde=pde, model=model, seed=int(seed), data=data_key,
                       checkpoint_digests=digests, orbit_epochs=orbit_epochs(prof, pde),
                       symmetry_batches=int(prof.symmetry_batches),
                       symmetry_shifts=[int(a) for a in prof.symmetry_shifts],
                       **({"symmetry_box": int(prof.symmetry_box)} if prof.symmetry_box else {}),
                       checkpoints=list(scheduled_checkpoints(prof, pde)), damping=prof.damping,
                       energy_tol=prof.energy_tol, t_max=prof.t_max, stage_version=STAGE_VERSION)


def _cached(sources, prof, pde: str, model: str, out_root=None, keyed: bool = True) -> list[Cached]:
    """Every seed's file, keyed on the current inputs of `sources` (`keyed`)."""
    data_key = sources.data_key() if keyed else None
    return [Cached(int(s), seed_file(symmetry_dir(prof, pde, model, out_root), s),
                   seed_key(sources, data_key, prof, pde, model, s) if keyed else None)
            for s in prof.seeds]


def snapshot_dt(sources, pde: str) -> float | None:
    """Spacing of the stored snapshots (compressible PDEs' axis check; else None), from the data
    readers of `sources`."""
    from pdeinf.config import pde_spec

    if not pde_spec(pde).compressible:
        return None
    data = sources.data
    times = np.asarray(data.reader(data.classes[0]).times, dtype=np.float64)
    return float(times[1] - times[0])


def run_symmetry(profile, pde: str, model: str, *, sources=None, out_root=None,
                 progress: bool = True, compute=None) -> list[Path]:
    """(Re)compute the seeds whose file is missing, stale or corrupt; returns every seed's file.
    `sources`: as `influence.FileSources` (with its data readers for compressible PDEs);
    `compute`: default `symmetry.study.symmetry_study`."""
    from pdeinf.pipeline.influence import FileSources
    from pdeinf.symmetry.study import symmetry_study

    prof = as_profile(profile)
    check_selection(prof, pde, model)
    sources = sources if sources is not None else FileSources(prof, pde, model)
    compute = compute or symmetry_study
    epochs = scheduled_checkpoints(prof, pde)
    require_checkpoints([sources.checkpoint(s, e) for s in prof.seeds for e in epochs],
                        f"train {pde}/{model} at profile {prof.name} first")
    if prof.symmetry_batches < 1:
        raise InputError(f"profile: symmetry_batches must be >= 1, got {prof.symmetry_batches}")
    dt = functools.cache(lambda: snapshot_dt(sources, pde))

    def compute_seed(task: Cached):
        models = {int(e): sources.model(task.id, e)[0].eval() for e in epochs}
        batches = [sources.batch(task.id, b) for b in range(prof.symmetry_batches)]
        attrs = {"model": model, "seed": task.id, "profile": prof.name,
                 "trajectories": trajectory_list(batches)}
        return compute(models, batches, pde=pde, final_epoch=final_epoch(prof, pde),
                       shifts=prof.symmetry_shifts, box=prof.symmetry_box, dt=dt(),
                       damping=prof.damping, energy_tol=prof.energy_tol,
                       orbit_epochs=orbit_epochs(prof, pde), progress=progress, attrs=attrs)

    files = ensure_cached(_cached(sources, prof, pde, model, out_root), compute_seed,
                          variables=DATA_VARS, finite=DATA_VARS[:1], desc=f"symmetry {pde}-{model}",
                          unit="seed", progress=progress, load=False)
    return list(files.values())


def cached_seed(profile, pde: str, model: str, seed: int, *, sources=None, out_root=None):
    """The cached study of one seed when its file is valid and current, else None (never
    computes). `sources` as in `run_symmetry` (default `FileSources`)."""
    from pdeinf.pipeline.influence import FileSources

    prof = as_profile(profile)
    check_selection(prof, pde, model)
    if (pde, model) not in prof.pairs(prof.symmetry_pairs):
        return None
    sources = sources if sources is not None else FileSources(prof, pde, model)
    path = seed_file(symmetry_dir(prof, pde, model, out_root), seed)
    if not path.is_file():
        return None
    key = seed_key(sources, sources.data_key(), prof, pde, model, seed)
    return load_keyed(path, key, DATA_VARS, DATA_VARS[:1])


def load_symmetry(profile, pde: str, model: str, *, out_root=None, sources=None):
    """Every seed's file concatenated along `seed`; InputError naming what is missing or
    invalid (with `sources`, also stale)."""
    import xarray as xr

    prof = as_profile(profile)
    check_selection(prof, pde, model)
    parts = load_cached(_cached(sources, prof, pde, model, out_root, keyed=sources is not None),
                        variables=DATA_VARS, finite=DATA_VARS[:1], what="symmetry file",
                        hint=f"ensure_symmetry({prof.name!r}, {pde!r}, {model!r})")
    out = xr.concat(list(parts.values()), dim="seed", combine_attrs="drop_conflicts",
                    coords="minimal", compat="override", data_vars="all")
    out = out.assign_coords(seed=list(prof.seeds))
    out.attrs.update({"model": model, "pde": pde, "profile": prof.name})
    return out


def ensure_symmetry(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """The symmetry study of every seed of (pde, model), one `xr.Dataset` with a leading `seed`
    dim (`pdeinf.symmetry.study`); trains and (re)computes what is needed first."""
    from pdeinf.pipeline.influence import trained_sources

    sources = trained_sources(profile, pde, model, progress)
    run_symmetry(sources.profile, pde, model, sources=sources, progress=progress)
    return load_symmetry(sources.profile, pde, model, sources=sources)


def symmetry_loader(profile, *, progress: bool = False):
    """A loader `(pde, model) -> xr.Dataset` over the symmetry studies (the explorer's tab);
    its `pairs` are the pairs the profile studies."""
    prof = as_profile(profile)
    loader = functools.partial(ensure_symmetry, prof, progress=progress)
    loader.pairs = [tuple(p) for p in prof.pairs(prof.symmetry_pairs)]
    return loader
