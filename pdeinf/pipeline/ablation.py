"""Stage: the model-departure ablation: the profile's runs retrained with one departure from
the authors' models at a time (`ABLATIONS`: "increment", `residual=True`, the model predicts
u_t + f(u_t); "pdeinf", pdeinf's own UNet / ViT predicting the increment), and what each
finding's number does. A configuration equal to the profile's own setting is left out.

Per pair of `ablation_pairs` and seed: the run under `runs_dir(profile)/ablation-<name>/`
(keyed on `training.training_key` of the replaced profile), and at its final checkpoint the
interventions study's task (`interventions.compute_task`) on `n_influence_batches` batches,
`results/ablation/<profile>/<PDE>-<model>/<config>/s<seed>.nc`, keyed by `task_key`. The
baseline is read from the follow-up sweep, the rollouts and the training history.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pdeinf import paths
from pdeinf.errors import InputError
from pdeinf.pipeline.checksums import Cached, ensure_cached, load_cached
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_pair,
    check_selection,
    content_key,
    file_digest,
    final_epoch,
)
from pdeinf.pipeline.interventions import DATA_VARS, VARIANT, compute_task

BASELINE = "baseline"
#: configuration name -> Profile overrides (one model departure each).
ABLATIONS: dict[str, dict] = {
    "increment": {"residual": True},
    "pdeinf": {"model_variant": "pdeinf", "residual": True},
}


def ablation_pairs(profile: ProfileLike) -> list[tuple[str, str]]:
    """`profile.ablation_pairs` (None: every pair), only pairs of the profile."""
    prof = as_profile(profile)
    every = prof.pairs()
    if prof.ablation_pairs is None:
        return every
    return list(dict.fromkeys((str(p), str(m)) for p, m in prof.ablation_pairs if (p, m) in every))


def configurations(profile: ProfileLike) -> list[str]:
    """The names of `ABLATIONS` that differ from the profile's own configuration."""
    prof = as_profile(profile)
    return [name for name in ABLATIONS if ablation_profile(prof, name) != prof]


def ablation_profile(profile: ProfileLike, name: str):
    """The profile with configuration `name`'s overrides."""
    if name not in ABLATIONS:
        raise InputError(f"name: unknown ablation {name!r}; expected one of {', '.join(ABLATIONS)}")
    return dataclasses.replace(as_profile(profile), **ABLATIONS[name])


def run_dir(profile: ProfileLike, name: str, pde: str, model: str, seed: int) -> Path:
    """`runs_dir(profile)/ablation-<name>/<PDE>-<model>-s<seed>`."""
    return paths.runs_dir(as_profile(profile).name) / f"ablation-{name}" / paths.run_name(pde, model, seed)


def ensure_ablation_runs(profile: ProfileLike, name: str, pde: str, model: str, *,
                         progress: bool = True, train=None) -> dict[int, Path]:
    """`{seed: run_dir}` of configuration `name`, trained (resumed, or retrained when stale)."""
    from pdeinf.pipeline.training import ensure_runs, training_key

    prof = as_profile(profile)
    alt = ablation_profile(prof, name)  # the same data (its overrides are model settings)
    return ensure_runs(
        alt, pde, model, prof.study_seeds(), run_dir(prof, name, pde, model, 0).parent,
        lambda seed, data_key: content_key(stage="training/ablation", ablation=name,
                                           base=training_key(alt, pde, model, seed, data_key)),
        {"ablation": name, "overrides": ABLATIONS[name]}, train=train, progress=progress)


# ---- tasks --------------------------------------------------------------------------------
def study_dir(profile: ProfileLike, pde: str, model: str) -> Path:
    """`results/ablation/<profile>/<PDE>-<model>`."""
    return paths.results_dir() / "ablation" / as_profile(profile).name / f"{pde}-{model}"


def task_file(profile: ProfileLike, pde: str, model: str, name: str, seed: int) -> Path:
    return study_dir(profile, pde, model) / name / f"s{seed}.nc"


def task_key(prof, pde: str, model: str, name: str, seed: int, checkpoint: Path,
             data_key: str) -> str:
    return content_key(stage="ablation", pde=pde, model=model, ablation=name,
                       overrides=ABLATIONS[name], seed=int(seed), epoch=final_epoch(prof, pde),
                       checkpoint=file_digest(checkpoint), data=data_key, variant=VARIANT,
                       damping=prof.damping, energy_tol=prof.energy_tol, t_max=prof.t_max,
                       n_batches=prof.n_influence_batches)


def run_ablation(profile: ProfileLike, pde: str, model: str, *, progress: bool = True) -> list[Path]:
    """Train what is missing and compute every missing/stale/corrupt task of (pde, model)."""
    from pdeinf.pipeline.training import profile_data

    prof = as_profile(profile)
    check_selection(prof, pde, model)
    names = configurations(prof)
    runs = {n: ensure_ablation_runs(prof, n, pde, model, progress=progress) for n in names}
    data = profile_data(prof, pde, progress=progress, validate=False)  # validated by training
    data_key, final = str(data.fingerprint()), final_epoch(prof, pde)

    def compute(task: Cached):
        name, seed = task.id
        return compute_task(paths.checkpoint_path(runs[name][seed], final), data, prof, pde, model, seed,
                            prof.n_influence_batches, attrs={
                                "ablation": name, "epoch": int(final),
                                "overrides": json.dumps(ABLATIONS[name], sort_keys=True)})

    tasks = [Cached((name, int(seed)), task_file(prof, pde, model, name, seed),
                    task_key(prof, pde, model, name, seed,
                             paths.checkpoint_path(runs[name][int(seed)], final), data_key))
             for name in names for seed in prof.study_seeds()]
    return list(ensure_cached(tasks, compute, variables=DATA_VARS, finite=("pi",),
                              desc=f"ablation {pde}-{model}", progress=progress, load=False).values())


def _baseline(prof, pde: str, model: str, *, progress: bool):
    """The profile's own configuration in the task layout, from the cached upstream stages."""
    import xarray as xr

    from pdeinf.pipeline.influence import ensure_influence
    from pdeinf.pipeline.rollouts import ensure_rollouts
    from pdeinf.pipeline.training import training_history

    final = final_epoch(prof, pde)
    infl = ensure_influence(prof, pde, model, metric=VARIANT, observable="smse", progress=progress)
    infl = infl.sel(epoch=final, drop=True)
    roll = ensure_rollouts(prof, pde, model, progress=progress)
    roll = roll.rename(trajectory="batch").transpose("seed", "class", "batch", "start", "horizon")
    roll = roll.drop_vars("batch", errors="ignore")
    hist = training_history(prof, pde, model)
    val_at_final = hist[hist["epoch"] == final].set_index("seed")["val_loss"]
    val = [float(val_at_final.get(int(s), float("nan"))) for s in prof.study_seeds()]
    out = xr.Dataset({"pi": infl["pi"], "losses": infl["losses"], "rank": infl["rank"],
                      "rollout": roll, "val_smse": (("seed",), np.asarray(val))})
    return out.assign_coords(seed=[int(s) for s in prof.study_seeds()],
                             batch=np.arange(infl.sizes["batch"]))


def load_ablation(profile: ProfileLike, pde: str, model: str, *, baseline=None):
    """The cached tasks of (pde, model) and the baseline (default: from the upstream stages) as
    one `xr.Dataset` with a leading `config` dim ("baseline", then each configuration): `pi`
    (config, seed, batch, t_resp, c_resp, t_pert, c_pert), `losses`, `rank`, `rollout` (config,
    seed, class, batch, start, horizon), `val_smse`. InputError naming a missing/corrupt file."""
    import xarray as xr

    prof = as_profile(profile)
    parts = [baseline if baseline is not None else _baseline(prof, pde, model, progress=False)]
    names, seeds = configurations(prof), [int(s) for s in prof.study_seeds()]
    loaded = load_cached([Cached((n, s), task_file(prof, pde, model, n, s)) for n in names for s in seeds],
                         variables=DATA_VARS, finite=("pi",), what="ablation file",
                         hint=f"pipeline.ensure_ablation({prof.name!r})")
    parts += [xr.concat([loaded[(n, s)] for s in seeds], dim="seed", combine_attrs="drop")
              .assign_coords(seed=seeds) for n in names]
    parts = [p.reset_coords(drop=True) for p in parts]  # only the dims' coordinates
    out = xr.concat([p[list(DATA_VARS)] for p in parts], dim="config", combine_attrs="drop",
                    join="exact")
    out = out.assign_coords(config=[BASELINE, *names])
    out["pi"] = out["pi"].transpose("config", "seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert")
    out["rollout"] = out["rollout"].transpose("config", "seed", "class", "batch", "start", "horizon")
    out["val_smse"] = out["val_smse"].transpose("config", "seed")
    out.attrs.update({"pde": pde, "model": model, "profile": prof.name, "variant": VARIANT,
                      "epoch": int(final_epoch(prof, pde)), "normalization": "none (raw pi)",
                      "baseline": json.dumps({"model_variant": prof.model_variant,
                                              "residual": prof.residual}),
                      "configurations": json.dumps({n: ABLATIONS[n] for n in names})})
    return out


def ensure_ablation_pair(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """The ablation dataset of one (PDE, model) pair (`load_ablation`), computed where needed."""
    prof = as_profile(profile)
    check_pair(prof, pde, model, ablation_pairs(prof), "ablation")
    baseline = _baseline(prof, pde, model, progress=progress)
    run_ablation(prof, pde, model, progress=progress)
    return load_ablation(prof, pde, model, baseline=baseline)


def ensure_ablation(profile: ProfileLike, *, progress: bool = True) -> dict:
    """`{(pde, model): xr.Dataset}` for every ablation pair of the profile (module docstring)."""
    prof = as_profile(profile)
    return {(pde, model): ensure_ablation_pair(prof, pde, model, progress=progress)
            for pde, model in ablation_pairs(prof)}
