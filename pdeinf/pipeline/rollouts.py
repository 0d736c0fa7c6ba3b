"""Stage 4: per-step rollout errors of the final checkpoint of every seed, keyed on inputs."""
from __future__ import annotations

from pathlib import Path

from pdeinf import paths
from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.pipeline.checksums import CHECKSUM_ATTR, Cached, ensure_cached
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    checkpoint_path,
    content_key,
    file_digest,
    final_epoch,
)

#: The data variable a rollouts file must hold.
ROLLOUT_VARS = ("smse",)


def rollouts_path(profile: ProfileLike, pde: str, model: str) -> Path:
    """``results/rollouts/<profile>/<PDE>-<model>.nc``."""
    return paths.results_dir() / "rollouts" / as_profile(profile).name / f"{pde}-{model}.nc"


def ensure_rollouts(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """Per-step rollout SMSE of the final checkpoint of every seed: an `xr.DataArray` ``smse``
    (seed, class, trajectory, start, horizon), autoregressive rollouts from snapshot ``start``
    of the first ``n_influence_batches`` test trajectories of each class (``trajectory`` =
    influence-batch index), error of step ``horizon`` (1-based). Cached, keyed on the final
    checkpoints' bytes, the data and the sizes."""
    from pdeinf.pipeline.training import ensure_training, profile_data

    ensure_training(profile, pde, model, progress=progress)
    profile = as_profile(profile)
    data = profile_data(profile, pde, progress=progress, validate=False)  # validated by training
    final = final_epoch(profile, pde)

    def compute(task: Cached):
        import torch
        import xarray as xr
        from tqdm.auto import tqdm

        from pdeinf.training.rollout import rollouts_all_starts
        from pdeinf.training.train import load_checkpoint

        per_seed = []
        for seed in tqdm(profile.seeds, desc=f"rollouts {pde}-{model}", disable=not progress):
            net, _ = load_checkpoint(checkpoint_path(profile, pde, model, seed, final))
            with torch.no_grad():
                errors = rollouts_all_starts(net, influence_trajectories(
                    data, profile, pde, seed, profile.n_influence_batches))
            per_seed.append(errors.expand_dims(seed=[int(seed)]))
        da = xr.concat(per_seed, dim="seed").transpose("seed", "class", "trajectory", "start", "horizon")
        ds = da.to_dataset(name="smse")
        ds.attrs.update(profile=profile.name, pde=pde, model=model, epoch=final,
                        description="per-step SMSE of autoregressive rollouts (final checkpoint)")
        return ds

    key = content_key(stage="rollouts", pde=pde, model=model, data=str(data.fingerprint()),
                      n_batches=profile.n_influence_batches, t_max=profile.t_max,
                      checkpoints=[file_digest(checkpoint_path(profile, pde, model, s, final))
                                   for s in profile.seeds])
    task = Cached(None, rollouts_path(profile, pde, model), key)
    ds = ensure_cached([task], compute, variables=ROLLOUT_VARS, progress=False)[None]
    da = ds["smse"]
    da.attrs = {k: v for k, v in ds.attrs.items() if k != CHECKSUM_ATTR}
    return da


def influence_trajectories(data, prof, pde: str, seed: int, n: int) -> dict:
    """{class: the first `n` test trajectories of the seed's split}: those of the first `n`
    influence batches (InputError when a class has fewer)."""
    out = {}
    for cls in pde_spec(pde).classes:
        test = data.trajectories(cls, "test", int(seed))
        if len(test) < n:
            raise InputError(f"profile {prof.name!r}: class {cls} has {len(test)} test "
                             f"trajectories, fewer than the {n} influence batches")
        out[cls] = test[:n]
    return out

