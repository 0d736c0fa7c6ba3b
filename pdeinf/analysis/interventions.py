"""The interventions study, pure: what each training recipe does to cross-time coherence and to
long-horizon rollout error, whether coherence helps choose a checkpoint, and what `augment`
does to orbit influence.

Input: the dataset of `pdeinf.pipeline.ensure_intervention_pair` (or any of the same layout):
`pi` (recipe, seed, epoch, batch, t_resp, c_resp, t_pert, c_pert) RAW Gauss-Newton influence,
`rollout` (recipe, seed, epoch, class, batch, start, horizon) per-step SMSE of autoregressive
rollouts of the influence batches' test trajectories, `val_smse` (recipe, seed, epoch), `rank`
(recipe, seed, epoch, batch); and for the orbit comparison the dataset of
`pdeinf.pipeline.interventions.load_orbit` (`orbit_observables`). The baseline recipe is
"one-step". Observables are dimensionless (SMSE-based), lags in snapshot steps.

Every headline number gets a 95% t-interval over seed means (`statistics.seed_mean_ci`).
Recipes share the seed (initialisation, shuffle) and the test trajectories of the baseline, so
recipe-vs-baseline differences are paired per (seed, batch) and judged by the registry's rules
(`intervention_effect`, `augment_raises_orbit_influence`, `augment_lowers_equivariance_error`;
`evaluate_finding`); tables carry the unadjusted `interval_words`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.evaluate import evaluate_finding
from pdeinf.analysis.registry import describe_rule  # noqa: F401  (the notebooks print the rule)
from pdeinf.analysis.statistics import CI_LABELS, seed_mean_ci
from pdeinf.errors import InputError
from pdeinf.symmetry.actions import ELEMENTS

BASELINE = "one-step"
CRITERIA = ("val", "R", "R+val")
SELECTION_RULE = (
    "estimate = mean over seeds x batches of log(rollout SMSE at dt=16 of the checkpoint the "
    "criterion picks) - log(... of the checkpoint minimal validation SMSE picks); same interval "
    "and words as the intervention effect"
)


def cross_time_ratio(pi: xr.DataArray) -> xr.DataArray:
    """R per class of RAW `pi` (..., t_resp, c_resp, t_pert, c_pert) -> (..., class):
    (sum of the class's intra-class block - its trace) / its trace."""
    pi = ag.check_pi(pi, finite=True)
    lead = ag.lead_dims(pi)
    ratio = ag.cross_time_ratio(ag.to_blocks(pi, lead))
    coords = {d: pi[d].values for d in lead if d in pi.coords}
    coords["class"] = pi["c_resp"].values
    return xr.DataArray(ratio, dims=(*lead, "class"), coords=coords, name="R")


def _standardized(pi: xr.DataArray) -> tuple[np.ndarray, list[str]]:
    """Row-standardized blocks `[..., C, T, C, T]` of checked `pi` and its leading dims."""
    pi = ag.check_pi(pi, finite=True)
    lead = ag.lead_dims(pi)
    return ag.normalize_blocks(ag.to_blocks(pi, lead), "standard"), lead


def lag_medians(pi: xr.DataArray, *, max_lag: int = 11) -> xr.DataArray:
    """Per matrix, the median row-standardized influence at each lag dt = t_resp - t_pert in
    -max_lag..max_lag, over intra- and inter-class pairs: dims (..., pair, dt)."""
    std, lead = _standardized(pi)
    lags = ag.lag_range(max_lag, std.shape[-3])
    out = ag.lag_curve(std, lags, statistic="median")
    coords = {d: pi[d].values for d in lead if d in pi.coords}
    coords.update(pair=list(ag.PAIRS), dt=lags)
    return xr.DataArray(out, dims=(*lead, "pair", "dt"), coords=coords, name="influence",
                        attrs={"normalization": "standard"})


def class_matrices(pi: xr.DataArray, *, lag: int = 0) -> xr.DataArray:
    """Per matrix, the median standardized influence of each (c_resp, c_pert) over the time
    pairs with t_resp - t_pert = lag: dims (..., c_resp, c_pert)."""
    std, lead = _standardized(pi)
    n_t = std.shape[-3]
    if abs(int(lag)) >= n_t:
        raise InputError(f"lag: |{lag}| must be smaller than the number of times {n_t}")
    coords = {d: pi[d].values for d in lead if d in pi.coords}
    coords.update(c_resp=pi["c_resp"].values, c_pert=pi["c_pert"].values)
    return xr.DataArray(ag.class_matrix(std, lag=int(lag), statistic="median"), dims=(*lead, "c_resp", "c_pert"),
                        coords=coords, name="influence", attrs={"lag": int(lag)})


def rollout_error(rollout: xr.DataArray, dt: int = 16) -> xr.DataArray:
    """Cumulative rollout SMSE over horizons 1..dt, mean over the starts with a complete
    horizon, then over `class`: `rollout` (..., class, start, horizon) -> (...)."""
    if not isinstance(rollout, xr.DataArray):
        raise InputError(f"rollout: expected an xr.DataArray, got {type(rollout).__name__}")
    missing = [d for d in ("class", "start", "horizon") if d not in rollout.dims]
    if missing:
        raise InputError(f"rollout: missing dimension(s) {missing}; has {rollout.dims}")
    horizons = rollout["horizon"].values
    if not (1 <= int(dt) <= int(horizons.max())):
        raise InputError(f"dt: must lie in 1..{int(horizons.max())}, got {dt}")
    cum = rollout.sel(horizon=slice(1, int(dt))).sum("horizon", skipna=False)
    if not bool(np.isfinite(cum).any("start").all()):
        raise InputError(f"rollout: no start with a complete horizon of {dt} steps")
    out = cum.mean("start", skipna=True).mean("class")
    out.name = "rollout_smse"
    out.attrs["dt"] = int(dt)
    return out


def default_dt(rollout: xr.DataArray, dt: int = 16) -> int:
    """dt, capped at the longest horizon the rollouts hold."""
    return int(min(int(dt), int(rollout["horizon"].values.max())))


# ---- per-(recipe, seed, epoch, batch) observables -----------------------------------
def observables(ds: xr.Dataset, *, dt: int = 16) -> xr.Dataset:
    """`R` (..., batch) class mean of R, `R_class` (..., batch, class), `intra_lag1`,
    `inter_lag1`, `rollout` at dt, `log_rollout`, `rank`, `val_smse` (recipe, seed, epoch)."""
    for var in ("pi", "rollout", "val_smse"):
        if var not in ds:
            raise InputError(f"ds: no {var!r} variable (the interventions dataset)")
    dt = default_dt(ds["rollout"], dt)
    r_class = cross_time_ratio(ds["pi"])
    lag1 = lag_medians(ds["pi"], max_lag=1).sel(dt=1, drop=True)
    roll = rollout_error(ds["rollout"], dt)
    out = xr.Dataset({
        "R": r_class.mean("class"), "R_class": r_class,
        "intra_lag1": lag1.sel(pair="intra", drop=True),
        "inter_lag1": lag1.sel(pair="inter", drop=True),
        "rollout": roll, "log_rollout": np.log(roll), "val_smse": ds["val_smse"],
    })
    if "rank" in ds:
        out["rank"] = ds["rank"]
    out.attrs["dt"] = dt
    return out


def _final(obs, epoch):
    """`obs` at checkpoint `epoch` (None: the last)."""
    return obs.sel(epoch=int(obs["epoch"].max()) if epoch is None else int(epoch))


def recipe_table(obs: xr.Dataset, *, epoch=None) -> xr.Dataset:
    """R, rollout SMSE at dt, validation SMSE, lag-1 medians and rank per recipe at one
    checkpoint (None: the final), each with a `ci` dim (estimate, low, high): means over seeds
    x batches (validation: over seeds)."""
    fin = _final(obs, epoch)
    out = xr.Dataset({name: seed_mean_ci(fin[name])
                      for name in ("R", "rollout", "intra_lag1", "inter_lag1")})
    out["R_class"] = seed_mean_ci(fin["R_class"])
    out["val_smse"] = seed_mean_ci(fin["val_smse"], batch_dim=None)
    if "rank" in fin:
        out["rank"] = seed_mean_ci(fin["rank"].astype(float))
    out.attrs.update(dt=obs.attrs.get("dt"), epoch=int(fin["epoch"]), n_seeds=fin.sizes["seed"],
                     n_batches=fin.sizes["batch"])
    return out


def interval_words(ci: xr.DataArray) -> xr.DataArray:
    """"improves" / "worsens" / "inconclusive" per cell of a t-interval of a change in log
    rollout SMSE (below 0 / above 0 / neither; NaN bounds: "inconclusive"). Descriptive words
    for tables; the findings records carry the Holm-adjusted verdicts."""
    low, high = ci.sel(ci="low", drop=True), ci.sel(ci="high", drop=True)
    words = np.where(high.values < 0, "improves", np.where(low.values > 0, "worsens",
                                                          "inconclusive"))
    return xr.DataArray(words.astype(str), dims=low.dims, coords=low.coords)


def intervention_effects(obs: xr.Dataset, *, epoch=None,
                         baseline: str = BASELINE) -> xr.Dataset:
    """Paired change in log rollout SMSE (and in R) of each recipe vs the baseline at one
    checkpoint, with t-intervals and descriptive words (`interval_words`); dims (ci, recipe) without the
    baseline; `d_log_rollout_units` (recipe, seed, batch) holds the paired differences the
    interval was computed from."""
    if baseline not in obs["recipe"].values:
        raise InputError(f"baseline: {baseline!r} not among the recipes {list(obs['recipe'].values)}")
    fin = _final(obs, epoch)
    others = [r for r in fin["recipe"].values if r != baseline]
    if not others:
        raise InputError("obs: only the baseline recipe; nothing to compare")
    d_log = fin["log_rollout"].sel(recipe=others) - fin["log_rollout"].sel(recipe=baseline)
    d_r = fin["R"].sel(recipe=others) - fin["R"].sel(recipe=baseline)
    out = xr.Dataset({"d_log_rollout": seed_mean_ci(d_log), "d_R": seed_mean_ci(d_r)})
    out["verdict"] = interval_words(out["d_log_rollout"])
    # the paired per-(seed, batch) differences behind the interval: the power analysis's units
    out["d_log_rollout_units"] = d_log.transpose("recipe", "seed", "batch")
    out.attrs.update(rule="intervention_effect", n_seeds=fin.sizes["seed"], n_batches=fin.sizes["batch"],
                     epoch=int(fin["epoch"]), dt=obs.attrs.get("dt"))
    return out


def _disjoint_above(a: xr.DataArray, b: xr.DataArray) -> bool:
    """The interval a lies entirely above the interval b."""
    return bool(float(a.sel(ci="low")) > float(b.sel(ci="high")))


def raises_r_lowers_rollout(table: xr.Dataset, *, baseline: str = BASELINE,
                            min_seeds: int = 2) -> list[str]:
    """Recipes whose R interval lies entirely above the baseline's AND whose rollout-error
    interval lies entirely below the baseline's (`recipe_table` output); none when the table
    rests on fewer than `min_seeds` seeds (its intervals then omit between-seed variation)."""
    if int(table.attrs.get("n_seeds", 0)) < min_seeds:
        return []
    base = table.sel(recipe=baseline)
    out = []
    for recipe in table["recipe"].values:
        if recipe == baseline:
            continue
        row = table.sel(recipe=recipe)
        if _disjoint_above(row["R"], base["R"]) and _disjoint_above(base["rollout"], row["rollout"]):
            out.append(str(recipe))
    return out


# ---- model selection --------------------------------------------------------------
def select_epochs(val: xr.DataArray, r: xr.DataArray, criterion: str) -> xr.DataArray:
    """The checkpoint each run picks: `val`, `r` (..., epoch) -> epoch (...).

    "val": smallest validation SMSE; "R": largest R; "R+val": smallest rank sum (rank 1 =
    lowest validation SMSE, resp. highest R; ties of the sum go to the lower validation SMSE,
    then the earlier epoch)."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion: unknown {criterion!r}; expected one of {', '.join(CRITERIA)}")
    val, r = xr.broadcast(val, r)
    lead = [d for d in val.dims if d != "epoch"]
    v = val.transpose(*lead, "epoch").values
    rr = r.transpose(*lead, "epoch").values
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(rr))):
        raise InputError("val, r: contain NaN or Inf")
    if criterion == "R+val":
        rank_v = np.argsort(np.argsort(v, axis=-1, kind="stable"), axis=-1, kind="stable")
        rank_r = np.argsort(np.argsort(-rr, axis=-1, kind="stable"), axis=-1, kind="stable")
        # rank sum first, then validation SMSE, then the earlier epoch
        order = np.lexsort((np.arange(v.shape[-1]) * np.ones_like(v), v, rank_v + rank_r), axis=-1)
        idx = order[..., 0]
    else:  # first of ties: the earlier epoch
        idx = np.argmin(v if criterion == "val" else -rr, axis=-1)
    epochs = val["epoch"].values[idx]
    return xr.DataArray(epochs, dims=lead, coords={d: val[d] for d in lead if d in val.coords},
                        name="epoch")


def picked_epochs(obs: xr.Dataset, criteria=CRITERIA) -> xr.DataArray:
    """The epoch each criterion picks for each run: dims (criterion, recipe, seed)."""
    r_run = obs["R"].mean("batch")
    return xr.concat([select_epochs(obs["val_smse"], r_run, c).expand_dims(criterion=[c])
                      for c in criteria], dim="criterion")


def selection_comparison(obs: xr.Dataset, *,
                         criteria=("R", "R+val")) -> xr.Dataset:
    """For each recipe, the change in log rollout SMSE at dt of the checkpoint each criterion
    picks vs the one minimal validation SMSE picks (R of a run = mean over its batches and
    classes), and the same pooled over recipes; dims (criterion, ci, recipe) with recipe
    "all" appended. Also `picked` (criterion, recipe, seed): the chosen epochs."""
    r_run = obs["R"].mean("batch")
    val = obs["val_smse"]
    by_val = select_epochs(val, r_run, "val")
    log_roll = obs["log_rollout"]
    diffs = []
    for c in criteria:
        chosen = select_epochs(val, r_run, c)
        diffs.append((log_roll.sel(epoch=chosen) - log_roll.sel(epoch=by_val)).expand_dims(criterion=[c]))
    diff = xr.concat(diffs, dim="criterion")
    per_recipe = seed_mean_ci(diff)
    # pooled: every (recipe, seed) run as one unit (runs of one seed share the initialisation,
    # so this interval is optimistic)
    arr = diff.transpose("criterion", "recipe", "seed", "batch").values
    pooled = xr.DataArray(arr.reshape(arr.shape[0], -1, arr.shape[-1]),
                          dims=("criterion", "seed", "batch"),
                          coords={"criterion": diff["criterion"].values})
    pooled_ci = seed_mean_ci(pooled).expand_dims(recipe=["all"])
    both = xr.concat([per_recipe, pooled_ci], dim="recipe")
    out = xr.Dataset({"d_log_rollout": both.transpose("criterion", "ci", "recipe")})
    out["verdict"] = interval_words(out["d_log_rollout"])
    out.attrs.update(rule=SELECTION_RULE)
    return out


# ---- curves with intervals, results rows -------------------------------------------
def lag_curves(ds: xr.Dataset, *, epoch=None, max_lag: int = 11) -> xr.DataArray:
    """Mean over seeds x batches of the per-matrix lag medians (`lag_medians`) at one
    checkpoint, with intervals: dims (ci, recipe, pair, dt)."""
    return seed_mean_ci(lag_medians(_final(ds["pi"], epoch), max_lag=max_lag))


def class_matrix_ci(ds: xr.Dataset, *, epoch=None, lag: int = 0) -> xr.DataArray:
    """Mean over seeds x batches of the per-matrix class matrices, with intervals:
    dims (ci, recipe, c_resp, c_pert)."""
    return seed_mean_ci(class_matrices(_final(ds["pi"], epoch), lag=lag))


def _ci_dict(ci: xr.DataArray) -> dict:
    return {k: float(ci.sel(ci=k)) for k in CI_LABELS}


def _fmt_ci(ci: xr.DataArray, sign: str = "") -> str:
    """"estimate [low, high]" of a `ci` DataArray, 3 significant digits (`sign` "+": signed)."""
    est, low, high = _ci_dict(ci).values()
    return f"{est:{sign}.3g} [{low:{sign}.3g}, {high:{sign}.3g}]"


def table_rows(table: xr.Dataset) -> dict:
    """`{recipe: {quantity: {estimate, low, high}}}` of a `recipe_table` (JSON-ready)."""
    out = {}
    for recipe in table["recipe"].values:
        row = table.sel(recipe=recipe)
        out[str(recipe)] = {name: _ci_dict(row[name]) for name in
                            ("R", "rollout", "val_smse", "intra_lag1", "inter_lag1")}
        out[str(recipe)]["R_class"] = {str(c): _ci_dict(row["R_class"].sel({"class": c}))
                                       for c in row["class"].values}
    return out


def effect_findings(effects: xr.Dataset, pde: str, model: str) -> list[dict]:
    """The `intervention_effect` records of one (PDE, model), one per recipe, from the paired
    per-(seed, batch) differences in log rollout SMSE (`evaluate_finding`)."""
    units = effects["d_log_rollout_units"]
    return [evaluate_finding("intervention_effect", units.sel(recipe=recipe, drop=True),
                             pde=pde, model=model, recipe=str(recipe),
                             note=f"paired vs {BASELINE} by seed and test trajectory, final "
                                  f"checkpoint (epoch {effects.attrs.get('epoch')})")
            for recipe in effects["recipe"].values]


def answer_sentence(table: xr.Dataset, pde: str, model: str, *, baseline: str = BASELINE) -> str:
    """The study's question answered in one sentence from a `recipe_table`."""
    dt = table.attrs.get("dt")
    base = table.sel(recipe=baseline)
    fmt = _fmt_ci
    winners = raises_r_lowers_rollout(table, baseline=baseline, min_seeds=0)
    if int(table.attrs.get("n_seeds", 0)) < 2:
        winners_text = ", ".join(winners) if winners else "none"
        return (f"{pde}-{model}: only {table.attrs.get('n_seeds')} seed, so the intervals omit "
                f"between-seed variation and cannot answer whether a recipe raises R and lowers "
                f"the rollout error (point comparison only: {winners_text}).")
    head = (f"{pde}-{model} (final epoch {table.attrs.get('epoch')}, {table.attrs.get('n_seeds')} "
            f"seed(s) x {table.attrs.get('n_batches')} batch(es)): baseline R {fmt(base['R'])}, "
            f"rollout SMSE at dt={dt} {fmt(base['rollout'])}; ")
    if not winners:
        return head + ("no recipe raises R and lowers the rollout error with intervals that do "
                       "not overlap the baseline's.")
    parts = [f"{r} (R {fmt(table['R'].sel(recipe=r))}, rollout {fmt(table['rollout'].sel(recipe=r))})"
             for r in winners]
    return head + "raises R and lowers the rollout error with non-overlapping intervals: " + \
        "; ".join(parts) + "."


def selection_frame(sel: xr.Dataset) -> pd.DataFrame:
    """`selection_comparison` as a table: criterion, recipe, estimate, low, high, verdict."""
    rows = []
    for c in sel["criterion"].values:
        if c not in sel["d_log_rollout"]["criterion"].values:
            continue
        for recipe in sel["recipe"].values:
            ci = sel["d_log_rollout"].sel(criterion=c, recipe=recipe)
            rows.append({"criterion": str(c), "recipe": str(recipe), **_ci_dict(ci),
                         "verdict": str(sel["verdict"].sel(criterion=c, recipe=recipe).item())})
    return pd.DataFrame(rows)


# ---- orbit influence of augment vs one-step ------------------------------------------
ORBIT_RECIPE = "augment"
#: The rules of the orbit comparison (FINDING_RULES), per quantity of `orbit_effects`.
ORBIT_FINDINGS = {"d_orbit": "augment_raises_orbit_influence",
                  "d_log_equivariance": "augment_lowers_equivariance_error"}
_D4 = tuple(g for g in ELEMENTS if g != "e")


def _check_orbit(orbit) -> None:
    if not isinstance(orbit, xr.Dataset):
        raise InputError(f"orbit: expected an xr.Dataset, got {type(orbit).__name__}")
    need = ("recipe", "seed", "batch", "element", "example")
    for var in ("equivariance", "orbit_diagonal"):
        if var not in orbit:
            raise InputError(f"orbit: no {var!r} variable (the interventions orbit dataset)")
        missing = [d for d in need if d not in orbit[var].dims]
        if missing:
            raise InputError(f"orbit: {var} lacks dimension(s) {missing}; has {orbit[var].dims}")
    labels = [str(e) for e in orbit["element"].values]
    if not any(g in labels for g in _D4):
        raise InputError(f"orbit: no non-identity D4 element among {labels}")
    if not (np.all(np.isfinite(orbit["equivariance"].values))
            and np.all(orbit["equivariance"].values > 0)):
        raise InputError("orbit: equivariance ratios must be finite and positive")


def d4_non_identity(orbit) -> list[str]:
    """The non-identity D4 labels of the `element` coordinate, in D4 order."""
    labels = [str(e) for e in orbit["element"].values]
    return [g for g in _D4 if g in labels]


def orbit_observables(orbit: xr.Dataset) -> xr.Dataset:
    """Per (recipe, seed, batch): `log_equivariance` (..., element) the mean over examples of
    log10 SMSE(f(g.x), g.y) / SMSE(f(x), y), `orbit` (..., element) the mean over examples of
    the standardized diagonal H_g[n, n]; `log_equivariance_d4`, `orbit_d4` their means over the
    non-identity D4 elements."""
    _check_orbit(orbit)
    log_eqv = np.log10(orbit["equivariance"]).mean("example")
    diag = orbit["orbit_diagonal"].mean("example")
    d4 = d4_non_identity(orbit)
    return xr.Dataset({"log_equivariance": log_eqv, "orbit": diag,
                       "log_equivariance_d4": log_eqv.sel(element=d4).mean("element"),
                       "orbit_d4": diag.sel(element=d4).mean("element")},
                      attrs={"epoch": orbit.attrs.get("epoch"), "d4": d4})


def orbit_element_table(orbit: xr.Dataset) -> xr.Dataset:
    """Per recipe and element: the mean over seeds x batches of `orbit_observables`'
    `orbit` and `log_equivariance`, with 95% t-intervals over seeds; dims (ci,
    recipe, element)."""
    obs = orbit_observables(orbit)
    out = xr.Dataset({"orbit": seed_mean_ci(obs["orbit"]),
                      "log_equivariance": seed_mean_ci(obs["log_equivariance"])})
    out.attrs.update(epoch=orbit.attrs.get("epoch"), n_seeds=orbit.sizes["seed"],
                     n_batches=orbit.sizes["batch"])
    return out


def orbit_effects(orbit: xr.Dataset, *, recipe: str = ORBIT_RECIPE, baseline: str = BASELINE,
                  ) -> xr.Dataset:
    """Paired (by seed and influence batch) change `recipe` - `baseline` of the mean orbit
    diagonal (`d_orbit`) and of the mean log10 equivariance ratio (`d_log_equivariance`) over
    the non-identity D4 elements, with intervals (dim ci) and the verdicts of their rules
    (`verdict_d_orbit`, `verdict_d_log_equivariance`); also `orbit_d4`, `log_equivariance_d4`
    (ci, recipe) per recipe, and the paired differences `d_orbit_units`,
    `d_log_equivariance_units` (seed, batch) the intervals were computed from."""
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
    out.attrs.update(recipe=recipe, baseline=baseline, n_seeds=orbit.sizes["seed"],
                     n_batches=orbit.sizes["batch"], epoch=orbit.attrs.get("epoch"),
                     d4=",".join(d4_non_identity(orbit)))
    return out


def orbit_findings(effects: xr.Dataset, pde: str, model: str) -> dict:
    """`{rule name: [record]}` of one (PDE, model) from the paired per-(seed, batch) changes
    in `effects` (`evaluate_finding`)."""
    note = (f"paired vs {effects.attrs['baseline']} by seed and influence batch, final "
            f"checkpoint (epoch {effects.attrs.get('epoch')})")
    return {rule: [evaluate_finding(rule, effects[f"{name}_units"], pde=pde, model=model,
                                    recipe=str(effects.attrs["recipe"]), note=note)]
            for name, rule in ORBIT_FINDINGS.items()}


def orbit_sentence(effects: xr.Dataset, pde: str, model: str) -> str:
    """Whether augment raises orbit influence, stated from the numbers of `orbit_effects`."""
    recipe, base = effects.attrs["recipe"], effects.attrs["baseline"]
    fmt = _fmt_ci
    word = str(effects["verdict_d_orbit"].item())
    answer = {"raises": f"{recipe} raises orbit influence",
              "lowers": f"{recipe} lowers orbit influence"}.get(
        word, f"the numbers do not show that {recipe} raises orbit influence ({word})")
    return (f"{pde}-{model} (final epoch {effects.attrs.get('epoch')}, {effects.attrs['n_seeds']} "
            f"seed(s) x {effects.attrs['n_batches']} batch(es)): mean standardized orbit-influence "
            f"diagonal over the non-identity D4 elements {fmt(effects['orbit_d4'].sel(recipe=base))} "
            f"({base}) vs {fmt(effects['orbit_d4'].sel(recipe=recipe))} ({recipe}), paired change "
            f"{fmt(effects['d_orbit'], '+')}; mean log10 equivariance ratio changes by "
            f"{fmt(effects['d_log_equivariance'], '+')} "
            f"({effects['verdict_d_log_equivariance'].item()}): {answer}.")
