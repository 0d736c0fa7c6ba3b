"""The interventions study, pure: what each training recipe does to cross-time coherence R and
long-horizon rollout error, whether R helps choose a checkpoint, and what `augment` does to orbit
influence; from the datasets of `pdeinf.pipeline.ensure_intervention_pair` and `load_orbit`.
Recipes are paired with the baseline "one-step" per (seed, batch); intervals: `seed_mean_ci`.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.evaluate import evaluate_finding
from pdeinf.analysis.statistics import CI_LABELS, interval_text, seed_mean_ci
from pdeinf.errors import InputError
from pdeinf.symmetry.actions import ELEMENTS

BASELINE = "one-step"
CRITERIA = ("val", "R", "R+val")
#: A `ci` DataArray as "estimate [low, high]" to 3 significant digits, NaN bounds printed as such.
_ci_text = functools.partial(interval_text, fmt=".3g")
SELECTION_RULE = ("estimate = mean over seeds x batches of log(rollout SMSE at dt=16 of the checkpoint the "
                  "criterion picks) - log(... of the checkpoint minimal validation SMSE picks); same "
                  "interval and words as the intervention effect")


def _per_matrix(pi: xr.DataArray, reduce, extra: dict, *, standard: bool = True, **kw) -> xr.DataArray:
    """`reduce` of the (standardized) blocks of checked `pi`, labelled (*lead, *extra)."""
    lead = ag.lead_dims(pi)
    blocks = ag.to_blocks(pi, lead)
    values = reduce(ag.normalize_blocks(blocks, "standard") if standard else blocks)
    coords = {**{d: pi[d].values for d in lead if d in pi.coords}, **extra}
    return xr.DataArray(values, dims=(*lead, *extra), coords=coords, **kw)


def cross_time_ratio(pi: xr.DataArray) -> xr.DataArray:
    """R per class of RAW `pi` (`aggregate.cross_time_ratio`) -> dims (..., class)."""
    pi = ag.check_pi(pi, finite=True)
    return _per_matrix(pi, ag.cross_time_ratio, {"class": pi["c_resp"].values}, standard=False, name="R")


def lag_medians(pi: xr.DataArray, *, max_lag: int = 11) -> xr.DataArray:
    """Per matrix, median standardized influence at each dt, intra / inter: dims (..., pair, dt)."""
    lags = ag.lag_range(max_lag, ag.check_pi(pi, finite=True).sizes["t_resp"])
    return _per_matrix(pi, lambda b: ag.lag_curve(b, lags, statistic="median"),
                       {"pair": list(ag.PAIRS), "dt": lags}, name="influence",
                       attrs={"normalization": "standard"})


def class_matrices(pi: xr.DataArray, *, lag: int = 0) -> xr.DataArray:
    """Per matrix, median standardized influence at dt = lag: dims (..., c_resp, c_pert)."""
    n_t = ag.check_pi(pi, finite=True).sizes["t_resp"]
    if abs(int(lag)) >= n_t:
        raise InputError(f"lag: |{lag}| must be smaller than the number of times {n_t}")
    return _per_matrix(pi, lambda b: ag.class_matrix(b, lag=int(lag), statistic="median"),
                       {"c_resp": pi["c_resp"].values, "c_pert": pi["c_pert"].values},
                       name="influence", attrs={"lag": int(lag)})


def rollout_error(rollout: xr.DataArray, dt: int = 16) -> xr.DataArray:
    """Cumulative SMSE to dt of `rollout` (..., class, start, horizon), mean over full starts, classes."""
    if not isinstance(rollout, xr.DataArray):
        raise InputError(f"rollout: expected an xr.DataArray, got {type(rollout).__name__}")
    missing = [d for d in ("class", "start", "horizon") if d not in rollout.dims]
    if missing:
        raise InputError(f"rollout: missing dimension(s) {missing}; has {rollout.dims}")
    if not (1 <= int(dt) <= int(rollout["horizon"].values.max())):
        raise InputError(f"dt: must lie in 1..{int(rollout['horizon'].values.max())}, got {dt}")
    cum = rollout.sel(horizon=slice(1, int(dt))).sum("horizon", skipna=False)
    if not bool(np.isfinite(cum).any("start").all()):
        raise InputError(f"rollout: no start with a complete horizon of {dt} steps")
    return cum.mean("start", skipna=True).mean("class").rename("rollout_smse").assign_attrs(dt=int(dt))


def observables(ds: xr.Dataset, *, dt: int = 16) -> xr.Dataset:
    """Per (recipe, seed, epoch, batch): `R`, `R_class`, `intra_lag1`, `inter_lag1`, `rollout` at dt
    (capped at the longest horizon), `log_rollout`, `rank`; and `val_smse`."""
    for var in ("pi", "rollout", "val_smse"):
        if var not in ds:
            raise InputError(f"ds: no {var!r} variable (the interventions dataset)")
    dt = int(min(int(dt), int(ds["rollout"]["horizon"].values.max())))
    r_class = cross_time_ratio(ds["pi"])
    lag1 = lag_medians(ds["pi"], max_lag=1).sel(dt=1, drop=True)
    roll = rollout_error(ds["rollout"], dt)
    out = xr.Dataset({"R": r_class.mean("class"), "R_class": r_class,
                      "intra_lag1": lag1.sel(pair="intra", drop=True),
                      "inter_lag1": lag1.sel(pair="inter", drop=True), "rollout": roll,
                      "log_rollout": np.log(roll), "val_smse": ds["val_smse"]}, attrs={"dt": dt})
    if "rank" in ds:
        out["rank"] = ds["rank"]
    return out


def _final(obs, epoch):
    """`obs` at checkpoint `epoch` (None: the last)."""
    return obs.sel(epoch=int(obs["epoch"].max()) if epoch is None else int(epoch))


def recipe_table(obs: xr.Dataset, *, epoch=None) -> xr.Dataset:
    """Per recipe at one checkpoint (None: final), means over seeds x batches with a `ci` dim: R,
    R_class, rollout, val_smse, lag-1 medians, rank."""
    fin = _final(obs, epoch)
    out = xr.Dataset({name: seed_mean_ci(fin[name])
                      for name in ("R", "rollout", "intra_lag1", "inter_lag1", "R_class")})
    out["val_smse"] = seed_mean_ci(fin["val_smse"], batch_dim=None)
    if "rank" in fin:
        out["rank"] = seed_mean_ci(fin["rank"].astype(float))
    out.attrs.update(dt=obs.attrs.get("dt"), epoch=int(fin["epoch"]), n_seeds=fin.sizes["seed"],
                     n_batches=fin.sizes["batch"])
    return out


def interval_words(ci: xr.DataArray) -> xr.DataArray:
    """"improves" / "worsens" / "inconclusive" per interval (below / above 0 / neither)."""
    low, high = ci.sel(ci="low", drop=True), ci.sel(ci="high", drop=True)
    words = np.where(high.values < 0, "improves", np.where(low.values > 0, "worsens", "inconclusive"))
    return xr.DataArray(words.astype(str), dims=low.dims, coords=low.coords)


def intervention_effects(obs: xr.Dataset, *, epoch=None, baseline: str = BASELINE) -> xr.Dataset:
    """Paired change in log rollout SMSE and R of each recipe vs the baseline (ci, recipe),
    `verdict`, and the paired units `d_log_rollout_units` (recipe, seed, batch)."""
    if baseline not in obs["recipe"].values:
        raise InputError(f"baseline: {baseline!r} not among the recipes {list(obs['recipe'].values)}")
    fin = _final(obs, epoch)
    others = [r for r in fin["recipe"].values if r != baseline]
    if not others:
        raise InputError("obs: only the baseline recipe; nothing to compare")
    d_log, d_r = (fin[v].sel(recipe=others) - fin[v].sel(recipe=baseline) for v in ("log_rollout", "R"))
    out = xr.Dataset({"d_log_rollout": seed_mean_ci(d_log), "d_R": seed_mean_ci(d_r)})
    out["verdict"] = interval_words(out["d_log_rollout"])
    out["d_log_rollout_units"] = d_log.transpose("recipe", "seed", "batch")
    out.attrs.update(rule="intervention_effect", n_seeds=fin.sizes["seed"], n_batches=fin.sizes["batch"],
                     epoch=int(fin["epoch"]), dt=obs.attrs.get("dt"))
    return out


def raises_r_lowers_rollout(table: xr.Dataset, *, baseline: str = BASELINE, min_seeds: int = 2) -> list[str]:
    """Recipes whose R interval lies above the baseline's and rollout interval below it."""
    if int(table.attrs.get("n_seeds", 0)) < min_seeds:
        return []
    base = table.sel(recipe=baseline)
    return [str(r) for r in table["recipe"].values if r != baseline
            and float(table["R"].sel(recipe=r, ci="low")) > float(base["R"].sel(ci="high"))
            and float(base["rollout"].sel(ci="low")) > float(table["rollout"].sel(recipe=r, ci="high"))]


def select_epochs(val: xr.DataArray, r: xr.DataArray, criterion: str) -> xr.DataArray:
    """The epoch each run picks, (..., epoch) -> (...): "val" least validation SMSE, "R" largest
    R, "R+val" least rank sum (ties: lower validation SMSE, then earlier)."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion: unknown {criterion!r}; expected one of {', '.join(CRITERIA)}")
    val, r = xr.broadcast(val, r)
    lead = [d for d in val.dims if d != "epoch"]
    v, rr = (a.transpose(*lead, "epoch").values for a in (val, r))
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(rr))):
        raise InputError("val, r: contain NaN or Inf")
    if criterion == "R+val":
        rank_v = np.argsort(np.argsort(v, axis=-1, kind="stable"), axis=-1, kind="stable")
        rank_r = np.argsort(np.argsort(-rr, axis=-1, kind="stable"), axis=-1, kind="stable")
        # rank sum first, then validation SMSE, then the earlier epoch
        idx = np.lexsort((np.arange(v.shape[-1]) * np.ones_like(v), v, rank_v + rank_r), axis=-1)[..., 0]
    else:  # first of ties: the earlier epoch
        idx = np.argmin(v if criterion == "val" else -rr, axis=-1)
    return xr.DataArray(val["epoch"].values[idx], dims=lead,
                        coords={d: val[d] for d in lead if d in val.coords}, name="epoch")


def picked_epochs(obs: xr.Dataset, criteria=CRITERIA) -> xr.DataArray:
    """The epoch each criterion picks for each run: dims (criterion, recipe, seed)."""
    return xr.concat([select_epochs(obs["val_smse"], obs["R"].mean("batch"), c).expand_dims(criterion=[c])
                      for c in criteria], dim="criterion")


def selection_comparison(obs: xr.Dataset, *, criteria=("R", "R+val")) -> xr.Dataset:
    """Change in log rollout SMSE of the checkpoint each criterion picks vs minimal validation
    SMSE, per recipe and pooled ("all"): `d_log_rollout` (criterion, ci, recipe), `verdict`."""
    r_run, val, log_roll = obs["R"].mean("batch"), obs["val_smse"], obs["log_rollout"]
    by_val = select_epochs(val, r_run, "val")
    diff = xr.concat([(log_roll.sel(epoch=select_epochs(val, r_run, c)) - log_roll.sel(epoch=by_val))
                      .expand_dims(criterion=[c]) for c in criteria], dim="criterion")
    # pooled: every (recipe, seed) run as one unit (runs of a seed share the init: optimistic)
    arr = diff.transpose("criterion", "recipe", "seed", "batch").values
    pooled = xr.DataArray(arr.reshape(arr.shape[0], -1, arr.shape[-1]), dims=("criterion", "seed", "batch"),
                          coords={"criterion": diff["criterion"].values})
    both = xr.concat([seed_mean_ci(diff), seed_mean_ci(pooled).expand_dims(recipe=["all"])], dim="recipe")
    out = xr.Dataset({"d_log_rollout": both.transpose("criterion", "ci", "recipe")},
                     attrs={"rule": SELECTION_RULE})
    out["verdict"] = interval_words(out["d_log_rollout"])
    return out


def lag_curves(ds: xr.Dataset, *, epoch=None, max_lag: int = 11) -> xr.DataArray:
    """`seed_mean_ci` of `lag_medians` at one checkpoint: dims (ci, recipe, pair, dt)."""
    return seed_mean_ci(lag_medians(_final(ds["pi"], epoch), max_lag=max_lag))


def class_matrix_ci(ds: xr.Dataset, *, epoch=None, lag: int = 0) -> xr.DataArray:
    """`seed_mean_ci` of `class_matrices` at one checkpoint: dims (ci, recipe, c_resp, c_pert)."""
    return seed_mean_ci(class_matrices(_final(ds["pi"], epoch), lag=lag))


def describe_recipes(table: xr.Dataset, names=("R", "rollout", "val_smse")) -> str:
    """The quantities `names` of a `recipe_table` per recipe, with their 95% intervals."""
    return f"final epoch {table.attrs['epoch']}, dt={table.attrs['dt']}:\n" + "\n".join(
        f"  {r!s:12s}" + "  ".join(f"{n} {_ci_text(table[n].sel(recipe=r))}" for n in names)
        for r in table["recipe"].values)


def effect_findings(effects: xr.Dataset, pde: str, model: str) -> list[dict]:
    """The `intervention_effect` records (`evaluate_finding`) of one (PDE, model), per recipe."""
    note = (f"paired vs {BASELINE} by seed and test trajectory, final checkpoint "
            f"(epoch {effects.attrs.get('epoch')})")
    units = effects["d_log_rollout_units"]
    return [evaluate_finding("intervention_effect", units.sel(recipe=r, drop=True), pde=pde, model=model,
                             recipe=str(r), note=note) for r in effects["recipe"].values]


def answer_sentence(table: xr.Dataset, pde: str, model: str, *, baseline: str = BASELINE) -> str:
    """The study's question answered in one sentence from a `recipe_table`."""
    dt = table.attrs.get("dt")
    base = table.sel(recipe=baseline)
    winners = raises_r_lowers_rollout(table, baseline=baseline, min_seeds=0)
    if int(table.attrs.get("n_seeds", 0)) < 2:
        return (f"{pde}-{model}: only {table.attrs.get('n_seeds')} seed, so the intervals omit "
                f"between-seed variation and cannot answer whether a recipe raises R and lowers "
                f"the rollout error (point comparison only: {', '.join(winners) or 'none'}).")
    head = (f"{pde}-{model} (final epoch {table.attrs.get('epoch')}, {table.attrs.get('n_seeds')} "
            f"seed(s) x {table.attrs.get('n_batches')} batch(es)): baseline R {_ci_text(base['R'])}, "
            f"rollout SMSE at dt={dt} {_ci_text(base['rollout'])}; ")
    if not winners:
        return head + ("no recipe raises R and lowers the rollout error with intervals that do not "
                       "overlap the baseline's.")
    return head + "raises R and lowers the rollout error with non-overlapping intervals: " + "; ".join(
        f"{r} (R {_ci_text(table['R'].sel(recipe=r))}, rollout {_ci_text(table['rollout'].sel(recipe=r))})"
        for r in winners) + "."


def selection_frame(sel: xr.Dataset) -> pd.DataFrame:
    """`selection_comparison` as a table: criterion, recipe, estimate, low, high, verdict."""
    return pd.DataFrame([{"criterion": str(c), "recipe": str(r),
                          **{k: float(sel["d_log_rollout"].sel(criterion=c, recipe=r, ci=k))
                             for k in CI_LABELS},
                          "verdict": str(sel["verdict"].sel(criterion=c, recipe=r).item())}
                         for c in sel["criterion"].values for r in sel["recipe"].values])


def describe_selection(sel: xr.Dataset) -> str:
    """`selection_comparison` in words: per criterion and recipe the change in log rollout SMSE
    of its checkpoint against validation SMSE's, with its 95% interval and words."""
    return "\n".join(f"  checkpoint chosen by {r.criterion} vs by validation SMSE ({r.recipe}): change in "
                     f"log rollout SMSE {_ci_text((r.estimate, r.low, r.high), fmt='+.3f')} -> {r.verdict} "
                     f"(negative: the {r.criterion} choice rolls out better)"
                     for r in selection_frame(sel).itertuples())


ORBIT_RECIPE = "augment"
#: The rules of the orbit comparison (FINDING_RULES), per quantity of `orbit_effects`.
ORBIT_FINDINGS = {"d_orbit": "augment_raises_orbit_influence",
                  "d_log_equivariance": "augment_lowers_equivariance_error"}
_D4 = tuple(g for g in ELEMENTS if g != "e")


def orbit_observables(orbit: xr.Dataset) -> xr.Dataset:
    """Per (recipe, seed, batch), means over examples: `log_equivariance` (log10 equivariance
    ratio), `orbit` (standardized H_g[n, n]) per element; `*_d4`: over non-identity D4."""
    if not isinstance(orbit, xr.Dataset):
        raise InputError(f"orbit: expected an xr.Dataset, got {type(orbit).__name__}")
    for var in ("equivariance", "orbit_diagonal"):
        if var not in orbit:
            raise InputError(f"orbit: no {var!r} variable (the interventions orbit dataset)")
        missing = [d for d in ("recipe", "seed", "batch", "element", "example") if d not in orbit[var].dims]
        if missing:
            raise InputError(f"orbit: {var} lacks dimension(s) {missing}; has {orbit[var].dims}")
    labels = [str(e) for e in orbit["element"].values]
    d4 = [g for g in _D4 if g in labels]
    if not d4:
        raise InputError(f"orbit: no non-identity D4 element among {labels}")
    if not (np.all(np.isfinite(orbit["equivariance"].values)) and np.all(orbit["equivariance"].values > 0)):
        raise InputError("orbit: equivariance ratios must be finite and positive")
    log_eqv = np.log10(orbit["equivariance"]).mean("example")
    diag = orbit["orbit_diagonal"].mean("example")
    return xr.Dataset({"log_equivariance": log_eqv, "orbit": diag,
                       "log_equivariance_d4": log_eqv.sel(element=d4).mean("element"),
                       "orbit_d4": diag.sel(element=d4).mean("element")},
                      attrs={"epoch": orbit.attrs.get("epoch"), "d4": d4})


def orbit_element_table(orbit: xr.Dataset) -> xr.Dataset:
    """`seed_mean_ci` of `orbit_observables`' `orbit`, `log_equivariance`: (ci, recipe, element)."""
    obs = orbit_observables(orbit)
    return xr.Dataset({k: seed_mean_ci(obs[k]) for k in ("orbit", "log_equivariance")},
                      attrs={"epoch": orbit.attrs.get("epoch"), "n_seeds": orbit.sizes["seed"],
                             "n_batches": orbit.sizes["batch"]})


def orbit_effects(orbit: xr.Dataset, *, recipe: str = ORBIT_RECIPE, baseline: str = BASELINE) -> xr.Dataset:
    """Paired change `recipe` - `baseline` of `orbit_d4` (`d_orbit`) and `log_equivariance_d4`
    (`d_log_equivariance`) with ci, `verdict_*`, `*_units`; and both recipes' values."""
    obs = orbit_observables(orbit)
    recipes = [str(r) for r in obs["recipe"].values]
    for r in (recipe, baseline):
        if r not in recipes:
            raise InputError(f"orbit: recipe {r!r} not among {recipes}")
    out = xr.Dataset()
    for name, var in (("d_orbit", "orbit_d4"), ("d_log_equivariance", "log_equivariance_d4")):
        diff = obs[var].sel(recipe=recipe, drop=True) - obs[var].sel(recipe=baseline, drop=True)
        out[name] = seed_mean_ci(diff)
        out[f"{name}_units"] = diff.transpose("seed", "batch")  # the power analysis's units
        out[f"verdict_{name}"] = ((), evaluate_finding(ORBIT_FINDINGS[name], diff)["verdict"])
        out[var] = seed_mean_ci(obs[var].sel(recipe=[baseline, recipe]))
    d4 = ",".join(obs.attrs["d4"])
    out.attrs.update(recipe=recipe, baseline=baseline, n_seeds=orbit.sizes["seed"],
                     n_batches=orbit.sizes["batch"], epoch=orbit.attrs.get("epoch"), d4=d4)
    return out


def orbit_findings(effects: xr.Dataset, pde: str, model: str) -> dict:
    """`{rule name: [record]}` (`evaluate_finding`) of one (PDE, model) from `orbit_effects`."""
    note = (f"paired vs {effects.attrs['baseline']} by seed and influence batch, final "
            f"checkpoint (epoch {effects.attrs.get('epoch')})")
    return {rule: [evaluate_finding(rule, effects[f"{name}_units"], pde=pde, model=model,
                                    recipe=str(effects.attrs["recipe"]), note=note)]
            for name, rule in ORBIT_FINDINGS.items()}


def orbit_sentence(effects: xr.Dataset, pde: str, model: str) -> str:
    """Whether augment raises orbit influence, stated from the numbers of `orbit_effects`."""
    recipe, base, ci = effects.attrs["recipe"], effects.attrs["baseline"], _ci_text
    word = str(effects["verdict_d_orbit"].item())
    answer = (f"{recipe} {word} orbit influence" if word in ("raises", "lowers")
              else f"the numbers do not show that {recipe} raises orbit influence ({word})")
    return (f"{pde}-{model} (final epoch {effects.attrs.get('epoch')}, {effects.attrs['n_seeds']} "
            f"seed(s) x {effects.attrs['n_batches']} batch(es)): mean standardized orbit-influence "
            f"diagonal over the non-identity D4 elements {ci(effects['orbit_d4'].sel(recipe=base))} "
            f"({base}) vs {ci(effects['orbit_d4'].sel(recipe=recipe))} ({recipe}), paired change "
            f"{ci(effects['d_orbit'], fmt='+.3g')}; mean log10 equivariance ratio changes by "
            f"{ci(effects['d_log_equivariance'], fmt='+.3g')} "
            f"({effects['verdict_d_log_equivariance'].item()}): {answer}.")
