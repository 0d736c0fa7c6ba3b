"""Stage: the interventions study: coherence and rollout error at every checkpoint of runs
trained with each recipe of the profile.

Per recipe, pair of `recipe_pairs` and seed, the run (one-step: the baseline runs; others:
`recipe_run_dir`, keyed on the one-step training key and the recipe) is measured at every
checkpoint on the first `study_batches` influence batches (`compute_task`; one-step reads its
influence from the follow-up sweep): `results/interventions/<profile>/<PDE>-<model>/<recipe>/
s<seed>_e<epoch>.nc`, keyed by `task_key`.

Orbit influence (when the profile trains augment): augment and one-step, paired by seed, at the
final checkpoint on the first `orbit_batches` batches: D4 equivariance error and orbit-influence
diagonal (`symmetry.study.final_orbit_study`), `.../<recipe>/s<seed>_e<epoch>_orbit.nc`, keyed by
`orbit_key`; one-step reuses the symmetry stage's current file of that seed when it has one.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pdeinf import paths
from pdeinf.errors import InputError
from pdeinf.pipeline.checksums import Cached, ensure_cached, load_cached, stack
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_pair,
    check_selection,
    content_key,
    file_digest,
    final_epoch,
    require_checkpoints,
    scheduled_checkpoints,
)
from pdeinf.pipeline.influence import FileSources

VARIANT = "gauss-newton"
DATA_VARS = ("pi", "losses", "rank", "rollout", "val_smse")
#: The orbit study's recipes (the second is compared with the first, paired by seed).
ORBIT_RECIPES = ("one-step", "augment")
ORBIT_VARS = ("equivariance", "orbit_diagonal", "orbit_rank")
#: Bumped when what an orbit file holds changes (part of its key).
ORBIT_VERSION = 1


def _batches(prof, field: str, n: int) -> int:
    """`n`, the profile's `field`; InputError unless in 1..n_influence_batches."""
    if not 1 <= n <= prof.n_influence_batches:
        raise InputError(f"profile {prof.name!r}: {field}={n} must lie in "
                         f"1..n_influence_batches={prof.n_influence_batches}")
    return n


def study_batches(profile: ProfileLike) -> int:
    """Influence batches (and their test trajectories) per (run, checkpoint):
    `profile.recipe_batches` when set, else `profile.n_influence_batches`."""
    prof = as_profile(profile)
    n = prof.n_influence_batches if prof.recipe_batches is None else int(prof.recipe_batches)
    return _batches(prof, "recipe_batches", n)


def recipe_pairs(profile: ProfileLike) -> list[tuple[str, str]]:
    """The (PDE, model) pairs of the study: `profile.recipe_pairs`, or every pair (None)."""
    prof = as_profile(profile)
    chosen = prof.pairs() if prof.recipe_pairs is None else prof.recipe_pairs
    pairs = list(dict.fromkeys((str(p), str(m)) for p, m in chosen))
    for pde, model in pairs:
        check_selection(prof, pde, model)
    return pairs


def _check_recipes(prof) -> list[str]:
    from pdeinf.training.recipes import RECIPES

    recipes = list(prof.recipes)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise InputError(f"profile {prof.name!r}: recipes {unknown} unknown; expected some of "
                         f"{', '.join(RECIPES)}")
    if "one-step" not in recipes:
        raise InputError(f"profile {prof.name!r}: recipes {recipes} lack the baseline 'one-step'")
    return recipes


def recipe_run_dir(profile: ProfileLike, pde: str, model: str, recipe: str, seed: int) -> Path:
    """The run directory of (recipe, seed): `training.train.default_out_dir` + run name."""
    from pdeinf.training.recipes import make_recipe
    from pdeinf.training.train import default_out_dir

    return default_out_dir(as_profile(profile).name, make_recipe(recipe)) / paths.run_name(pde, model, seed)


def ensure_recipe_runs(profile: ProfileLike, pde: str, model: str, recipe: str, *,
                       progress: bool = True, train=None) -> dict[int, Path]:
    """`{seed: run_dir}` of `recipe` for every seed, trained (or resumed, or retrained when
    stale) as needed. "one-step" is `pipeline.training.ensure_training` itself."""
    from pdeinf.pipeline.training import ensure_runs, ensure_training, training_key
    from pdeinf.training.recipes import make_recipe

    prof = as_profile(profile)
    check_selection(prof, pde, model)
    if recipe == "one-step":
        return ensure_training(prof, pde, model, progress=progress)
    return ensure_runs(prof, pde, model, prof.study_seeds(), recipe_run_dir(prof, pde, model, recipe, 0).parent,
                       lambda seed, data_key: content_key(
                           stage="training/recipe", base=training_key(prof, pde, model, seed, data_key),
                           recipe=make_recipe(recipe).identity()),
                       {"recipe": recipe}, train=train, progress=progress, recipe=recipe)


# ---- tasks ------------------------------------------------------------------------------
def study_dir(profile: ProfileLike, pde: str, model: str) -> Path:
    """`results/interventions/<profile>/<PDE>-<model>`."""
    return paths.results_dir() / "interventions" / as_profile(profile).name / f"{pde}-{model}"


def task_file(profile, pde: str, model: str, recipe: str, seed: int, epoch: int,
              suffix: str = "") -> Path:
    """A task's file; `suffix` "_orbit": its orbit file."""
    return study_dir(profile, pde, model) / recipe / f"s{seed}_e{epoch:04d}{suffix}.nc"


def task_key(prof, pde: str, model: str, recipe: str, seed: int, epoch: int, checkpoint: Path,
             data_key: str, *, orbit: bool = False) -> str:
    """What a task's file (`orbit`: its orbit file, `orbit_key`) depends on: checkpoint bytes,
    data, recipe, batches and engine settings (one-step's influence, read from the follow-up
    sweep, is keyed on the same inputs)."""
    from pdeinf.training.recipes import make_recipe

    return content_key(stage="interventions/orbit" if orbit else "interventions", pde=pde, model=model,
                       recipe=make_recipe(recipe).identity(), seed=int(seed), epoch=int(epoch),
                       checkpoint=file_digest(checkpoint), data=data_key, damping=prof.damping,
                       energy_tol=prof.energy_tol, t_max=prof.t_max,
                       **({"elements": orbit_elements(), "n_batches": orbit_batches(prof), "split": "test",
                           "orbit_version": ORBIT_VERSION} if orbit
                          else {"variant": VARIANT, "n_batches": study_batches(prof)}))


def compute_task(checkpoint: Path, data, prof, pde: str, model: str, seed: int, n_batches: int, *,
                 attrs: dict, influence=None):
    """The dataset of the checkpoint at `checkpoint` (of a run of `model`) on the first
    `n_batches` influence batches: `pi` (batch, t_resp, c_resp, t_pert, c_pert) raw Gauss-Newton
    influence, `losses` (batch, t, c), `rank` (batch), `rollout` (class, batch, start, horizon)
    of the batches' test trajectories, `val_smse` (the checkpoint's last epoch); `attrs` plus
    pde, model, seed, profile and variant. `influence` (pi, losses, rank by batch): used instead
    of computing it (the baseline's, from the follow-up sweep)."""
    import torch
    import xarray as xr

    from pdeinf.data.datasets import influence_batch
    from pdeinf.influence.task import labelled_influence
    from pdeinf.pipeline.rollouts import influence_trajectories
    from pdeinf.training.rollout import rollouts_all_starts
    from pdeinf.training.train import load_checkpoint

    net, ckpt = load_checkpoint(checkpoint, pde=pde, model_name=model)
    if influence is None:
        parts = []
        for b in range(n_batches):
            ib = influence_batch(data, int(seed), b, split="test")
            one = labelled_influence(net, ckpt.get("optimizer_state"), ib.inputs, ib.targets,
                                     pde=pde, damping=prof.damping, energy_tol=prof.energy_tol,
                                     variants=(VARIANT,))
            parts.append(one[["pi", "losses", "rank"]].sel(variant=VARIANT, drop=True))
        influence = xr.concat(parts, dim="batch", combine_attrs="drop")
    with torch.no_grad():
        roll = rollouts_all_starts(net, influence_trajectories(data, prof, pde, seed, n_batches))
    history = ckpt.get("history") or []
    val = float(history[-1]["val_smse"]) if history else float("nan")
    ds = influence[["pi", "losses", "rank"]].assign(
        rollout=roll.rename(trajectory="batch").drop_vars("batch"), val_smse=((), val))
    ds = ds.assign_coords(batch=np.arange(n_batches))
    ds.attrs = {"pde": pde, "model": model, "seed": seed, "profile": prof.name, "variant": VARIANT,
                **attrs}
    return ds


def run_study(profile: ProfileLike, pde: str, model: str, *, recipes: list[str] | None = None,
              orbit: bool = True, progress: bool = True) -> list[Path]:
    """Train what is missing and compute every missing/stale/corrupt task of (pde, model) for
    `recipes` (None: all the profile's), with `orbit` also the orbit files (`run_orbit`).
    Returns the task files, then the orbit files."""
    prof = as_profile(profile)
    check_selection(prof, pde, model)
    every = _check_recipes(prof)
    recipes = every if recipes is None else list(recipes)
    unknown = [r for r in recipes if r not in every]
    if unknown:
        raise InputError(f"recipes: {unknown} are not recipes of profile {prof.name!r} ({every})")
    trained = recipes + [r for r in orbit_recipes(prof) if orbit and r not in recipes]
    sources = RecipeSources.trained(prof, pde, model, trained, progress)
    runs, data, data_key, n = sources.runs, sources.data, sources.data_key(), study_batches(prof)

    def checkpoint(recipe: str, seed: int, epoch: int) -> Path:
        return paths.checkpoint_path(runs[recipe][int(seed)], epoch)

    @functools.cache
    def baseline():  # the follow-up sweep holds the baseline's influence of the same batches
        from pdeinf.pipeline.influence import ensure_influence

        return ensure_influence(prof, pde, model, metric=VARIANT, observable="smse", progress=progress)

    def compute(task: Cached):
        recipe, seed, epoch = task.id
        influence = None
        if recipe == "one-step":
            influence = baseline().sel(seed=seed, epoch=epoch, drop=True).isel(batch=slice(0, n))
        return compute_task(checkpoint(*task.id), data, prof, pde, model, seed, n,
                            attrs={"recipe": recipe, "epoch": epoch}, influence=influence)

    chosen = [(recipe, int(seed), int(epoch)) for recipe in recipes for seed in prof.study_seeds()
              for epoch in scheduled_checkpoints(prof, pde)]
    tasks = [Cached(t, task_file(prof, pde, model, *t),
                    task_key(prof, pde, model, *t, checkpoint(*t), data_key)) for t in chosen]
    files = list(ensure_cached(tasks, compute, variables=DATA_VARS, desc=f"interventions {pde}-{model}",
                               progress=progress, load=False).values())
    if orbit and orbit_recipes(prof):
        files += run_orbit(prof, pde, model, sources=sources, progress=progress)
    return files


def ensure_recipe_study(profile: ProfileLike, pde: str, model: str, recipe: str, *,
                        progress: bool = True) -> list[Path]:
    """One recipe's task files of (pde, model), training its runs where needed (a stage of its
    own, so the recipes' studies run side by side)."""
    prof = as_profile(profile)
    check_pair(prof, pde, model, recipe_pairs(prof), "recipe")
    return run_study(prof, pde, model, recipes=[recipe], orbit=False, progress=progress)


def load_study(profile: ProfileLike, pde: str, model: str):
    """The cached tasks of (pde, model) as one `xr.Dataset` (recipe, seed, epoch, batch, ...):
    `pi`, `losses`, `rank`, `rollout` (recipe, seed, epoch, class, batch, start, horizon),
    `val_smse` (recipe, seed, epoch). InputError naming a missing/corrupt file."""
    prof = as_profile(profile)
    recipes, epochs = _check_recipes(prof), list(scheduled_checkpoints(prof, pde))
    tasks = [Cached((r, s, e), task_file(prof, pde, model, r, s, e))
             for r in recipes for s in prof.study_seeds() for e in epochs]
    parts = load_cached(tasks, variables=DATA_VARS, what="interventions file",
                        hint=f"pipeline.ensure_interventions({prof.name!r})")
    out = stack(parts, ("recipe", "seed", "epoch"), combine_attrs="drop")
    out = out.assign_coords(recipe=recipes, seed=[int(s) for s in prof.study_seeds()], epoch=epochs)
    out["pi"] = out["pi"].transpose("recipe", "seed", "epoch", "batch", "t_resp", "c_resp",
                                    "t_pert", "c_pert")
    out["rollout"] = out["rollout"].transpose("recipe", "seed", "epoch", "class", "batch",
                                              "start", "horizon")
    out.attrs.update({"pde": pde, "model": model, "profile": prof.name, "variant": VARIANT,
                      "normalization": "none (raw pi)"})
    return out


def ensure_intervention_pair(profile: ProfileLike, pde: str, model: str, *,
                             progress: bool = True):
    """The study's dataset of one (PDE, model) pair (`load_study`), computed where needed."""
    prof = as_profile(profile)
    check_pair(prof, pde, model, recipe_pairs(prof), "recipe")
    run_study(prof, pde, model, progress=progress)
    return load_study(prof, pde, model)


def ensure_interventions(profile: ProfileLike, *, progress: bool = True) -> dict:
    """`{(pde, model): xr.Dataset}` for every recipe pair of the profile (module docstring)."""
    prof = as_profile(profile)
    return {(pde, model): ensure_intervention_pair(prof, pde, model, progress=progress)
            for pde, model in recipe_pairs(prof)}


# ---- orbit influence: augment vs one-step at the final checkpoint --------------------------
def orbit_recipes(profile: ProfileLike, *, required: bool = False) -> list[str]:
    """`["one-step", "augment"]` when the profile trains augment, else `[]` (no orbit study)
    or, when `required`, InputError."""
    prof = as_profile(profile)
    if all(r in prof.recipes for r in ORBIT_RECIPES):
        return list(ORBIT_RECIPES)
    if required:
        raise InputError(f"profile {prof.name!r}: recipes {list(prof.recipes)} lack 'augment'; "
                         "no orbit study")
    return []


def orbit_batches(profile: ProfileLike) -> int:
    """Influence batches per (recipe, seed) of the orbit study: `profile.symmetry_batches`."""
    prof = as_profile(profile)
    return _batches(prof, "symmetry_batches", int(prof.symmetry_batches))


def orbit_elements() -> list[str]:
    """The identity and the 7 non-identity D4 elements."""
    from pdeinf.symmetry.study import D4_NON_IDENTITY

    return ["e", *D4_NON_IDENTITY]


orbit_key = functools.partial(task_key, orbit=True)


class RecipeSources(FileSources):
    """What `run_orbit` reads: `FileSources` whose checkpoints are the final ones of `runs`
    ({recipe: {seed: run_dir}}), by (recipe, seed) (`model` too), on the profile's `data`, and
    the symmetry stage's cached file of a one-step seed. Any object with these methods can
    stand in for it."""

    def __init__(self, profile, pde: str, model_name: str, runs: dict, data):
        super().__init__(profile, pde, model_name)
        self.runs, self.data = runs, data

    @classmethod
    def trained(cls, prof, pde: str, model_name: str, recipes, progress: bool = True):
        """Over the runs of `recipes`, each trained (or resumed, or retrained) as needed."""
        from pdeinf.pipeline.training import profile_data

        runs = {r: ensure_recipe_runs(prof, pde, model_name, r, progress=progress) for r in recipes}
        return cls(prof, pde, model_name, runs,
                   profile_data(prof, pde, progress=progress, validate=False))  # validated by training

    def checkpoint(self, recipe: str, seed: int) -> Path:
        return paths.checkpoint_path(self.runs[recipe][int(seed)], final_epoch(self.profile, self.pde))

    def symmetry(self, seed: int):
        """The symmetry stage's current study of this one-step checkpoint, else None."""
        from pdeinf.pipeline.symmetry import cached_seed

        prof = self.profile
        files = FileSources(prof, self.pde, self.model_name)
        mine = self.checkpoint("one-step", seed)
        if Path(files.checkpoint(seed, final_epoch(prof, self.pde))).resolve() != Path(mine).resolve() \
                or files.data_key() != self.data_key():
            return None
        return cached_seed(prof, self.pde, self.model_name, seed, sources=files)


def orbit_from_symmetry(study, epoch: int, n_batches: int):
    """The orbit dataset (`final_orbit_study` layout) cut out of one seed's symmetry study; None
    when it is of another final checkpoint, has fewer batches or lacks an element."""
    import xarray as xr

    if study is None or int(study.attrs.get("final_epoch", -1)) != int(epoch):
        return None
    labels = orbit_elements()
    if any(v not in study for v in ORBIT_VARS) or study.sizes.get("batch", 0) < n_batches or \
            any(g not in list(study["element"].values) for g in labels):
        return None
    part = study[list(ORBIT_VARS)].isel(batch=slice(0, n_batches)).sel(element=labels)
    return xr.Dataset(
        {v: (part[v].dims, part[v].values) for v in ORBIT_VARS},
        coords={"batch": np.arange(n_batches), "element": labels,
                "example": np.arange(part.sizes["example"])},
        attrs={"pde": study.attrs.get("pde", ""), "damping": float(study.attrs["damping"]),
               "energy_tol": float(study.attrs["energy_tol"])})


def run_orbit(profile: ProfileLike, pde: str, model: str, *, sources, progress: bool = True,
              compute=None) -> list[Path]:
    """(Re)compute the missing, stale or corrupt orbit files; returns every one ([] without
    augment). `sources`: as `RecipeSources`; `compute`: default `final_orbit_study`."""
    prof = as_profile(profile)
    recipes = orbit_recipes(prof)
    if not recipes:
        return []
    if compute is None:
        from pdeinf.symmetry.study import final_orbit_study as compute
    epoch, n = final_epoch(prof, pde), orbit_batches(prof)
    chosen = [(recipe, int(seed)) for recipe in recipes for seed in prof.study_seeds()]
    require_checkpoints([sources.checkpoint(*t) for t in chosen],
                        f"train {'/'.join(recipes)} {pde}/{model} at profile {prof.name} first")

    def orbit_of(task: Cached):
        recipe, seed = task.id
        ds = orbit_from_symmetry(sources.symmetry(seed), epoch, n) if recipe == "one-step" else None
        source = "symmetry stage"
        if ds is None:
            net, _ = sources.model(recipe, seed)
            batches = [sources.batch(seed, b) for b in range(n)]
            ds = compute(net.eval(), batches, pde=pde, elements=orbit_elements(),
                         damping=prof.damping, energy_tol=prof.energy_tol, progress=progress)
            source = "computed"
        ds.attrs.update({"pde": pde, "model": model, "recipe": recipe, "seed": seed,
                         "epoch": int(epoch), "profile": prof.name, "source": source})
        return ds

    data_key = sources.data_key()
    tasks = [Cached(t, task_file(prof, pde, model, *t, epoch, "_orbit"),
                    orbit_key(prof, pde, model, *t, epoch, Path(sources.checkpoint(*t)), data_key))
             for t in chosen]
    return list(ensure_cached(tasks, orbit_of, variables=ORBIT_VARS, desc=f"orbit {pde}-{model}",
                              unit="run", progress=progress, load=False).values())


def load_orbit(profile: ProfileLike, pde: str, model: str):
    """The cached orbit files of (pde, model) as one `xr.Dataset` (recipe, seed, batch,
    element, example): `equivariance`, `orbit_diagonal`, `orbit_rank`; attrs `epoch`.
    InputError without augment or when a file is missing or corrupt."""
    prof = as_profile(profile)
    recipes, epoch = orbit_recipes(prof, required=True), final_epoch(prof, pde)
    tasks = [Cached((r, s), task_file(prof, pde, model, r, s, epoch, "_orbit"))
             for r in recipes for s in prof.study_seeds()]
    parts = load_cached(tasks, variables=ORBIT_VARS, what="orbit file",
                        hint=f"pipeline.ensure_interventions({prof.name!r})")
    out = stack({k: ds[list(ORBIT_VARS)] for k, ds in parts.items()}, ("recipe", "seed"),
                combine_attrs="drop")
    out = out.assign_coords(recipe=recipes, seed=[int(s) for s in prof.study_seeds()])
    out.attrs.update({"pde": pde, "model": model, "profile": prof.name, "epoch": int(epoch),
                      "damping": float(prof.damping), "energy_tol": float(prof.energy_tol)})
    return out


def ensure_orbit_pair(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """The orbit study of one recipe pair (`load_orbit`), training and computing what is
    missing."""
    prof = as_profile(profile)
    check_pair(prof, pde, model, recipe_pairs(prof), "recipe")
    recipes = orbit_recipes(prof, required=True)
    _check_recipes(prof)
    run_orbit(prof, pde, model, sources=RecipeSources.trained(prof, pde, model, recipes, progress),
              progress=progress)
    return load_orbit(prof, pde, model)
