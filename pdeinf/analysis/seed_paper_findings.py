"""The seed paper's findings (arXiv 2509.00024) measured on our runs: for each finding of
`pdeinf.analysis.verdicts.VERDICT_RULES` exactly the statistic its rule defines, a 95%
hierarchical bootstrap interval (seeds, then batches within seeds; 1000 resamples, random_state 0,
vectorized) and the rule's verdict, as plain records for the notebooks' results JSON.

Inputs are the aggregations of `pdeinf.analysis.seed_paper` (standardized Ĥ, similarity curves,
the seed-paper dataset, training histories). Pure: xarray / numpy / pandas in, dicts out.

Every record also carries `needed` (`pdeinf.analysis.verdicts.needed_for_rule`): how many seeds
x batches the measured effect and spread would need for a decisive verdict, computed from the
per-(seed, batch) values behind the interval: the units themselves for means; linearised units
for the ratio of means (`ratio_units`) and the pooled Spearman (`spearman_units`); per-seed
zero crossings for the correlation length; paired per-(seed, batch) differences UNet minus ViT
for the model comparisons (per seed for validation); summed components of the two independent
data sets for NS minus CE. For medians and crossings the units only approximate the statistic's
spread: read those projections as rough.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from pdeinf.analysis.seed_paper import (
    MAX_LAG,
    N_RESAMPLES,
    RANDOM_STATE,
    class_units,
    correlation_length,
    final_validation,
    lag_units,
    standardized_pairs,
    zero_crossing,
)
from pdeinf.analysis.statistics import (
    CI_LABELS,
    describe_needed,
    hierarchical_bootstrap,
    independent_difference,
    ratio_units,
    spearman_units,
    unit_components,
)
from pdeinf.analysis.verdicts import VERDICT_RULES, apply_rule, describe_rule, needed_for_rule
from pdeinf.errors import InputError

# --------------------------------------------------------------------------- finding statistics


def _abs_lag_mean(hn: xr.DataArray, lag: int, pair: str) -> xr.DataArray:
    """Per (seed, batch): mean Ĥ over the intra/inter entries with |τ - t| = lag."""
    units = lag_units(hn, max(abs(lag), 0))
    # +lag and -lag hold equally many entries, so the mean over |dt| = lag is their average.
    return units.sel(pair=pair, dt=[-lag, lag]).mean("dt")


def decay_units(hn: xr.DataArray, near: int = 1, far: int = MAX_LAG) -> xr.DataArray:
    """temporal_decay / mass_decay / energy_decay: per (seed, batch) intra-class mean at
    |dt| = near minus at |dt| = far."""
    return _abs_lag_mean(hn, near, "intra") - _abs_lag_mean(hn, far, "intra")


def inter_gap_units(hn: xr.DataArray) -> xr.DataArray:
    """inter_below_intra: per (seed, batch) intra- minus inter-class mean at |dt| = 1."""
    return _abs_lag_mean(hn, 1, "intra") - _abs_lag_mean(hn, 1, "inter")


def class_locked_units(hn: xr.DataArray) -> xr.DataArray:
    """class_locked: per (seed, batch) mean diagonal minus mean off-diagonal entry of the
    time-averaged class matrix."""
    cu = class_units(hn)
    m = cu.values
    n_c = m.shape[-1]
    eye = np.eye(n_c, dtype=bool)
    diff = m[..., eye].mean(-1) - m[..., ~eye].mean(-1)
    return xr.DataArray(diff, dims=("seed", "batch"),
                        coords={"seed": cu["seed"].values, "batch": cu["batch"].values})


def coherence_ratio_units(hn: xr.DataArray) -> xr.DataArray:
    """ns_broader_coherence inputs: per (seed, batch) the intra-class mean at |dt| = 1 and at
    dt = 0, stacked along `part` ("dt1", "dt0")."""
    return xr.concat([_abs_lag_mean(hn, 1, "intra"), _abs_lag_mean(hn, 0, "intra")],
                     dim="part").assign_coords(part=["dt1", "dt0"]).transpose("seed", "batch", "part")


def ratio_of_means(da: xr.DataArray) -> xr.DataArray:
    """mean(dt1) / mean(dt0) over (seed, batch) (keeps a `resample` dim)."""
    m = da.mean(("seed", "batch"))
    return m.sel(part="dt1", drop=True) / m.sel(part="dt0", drop=True)


def similarity_units(ds: xr.Dataset, bra: str = "C") -> xr.DataArray:
    """similarity_decay inputs: Ĥ and d of every non-self pair and the (seed, batch) unit's
    index, dims (seed, batch, var, pair) with var ("H", "d", "unit")."""
    _, h, d = standardized_pairs(ds, bra)
    s, b = h.shape[:2]
    unit = np.broadcast_to(np.arange(s * b, dtype=np.float64).reshape(s, b, 1), h.shape)
    return xr.DataArray(np.stack([h, d, unit], axis=2), dims=("seed", "batch", "var", "pair"),
                        coords={"seed": ds["seed"].values, "batch": ds["batch"].values,
                                "var": ["H", "d", "unit"]})


def pooled_spearman(da: xr.DataArray) -> xr.DataArray:
    """Spearman correlation (average ranks) of Ĥ with d pooled over (seed, batch, pair), by
    ranking the pooled values directly; keeps `resample`. Reference for `PooledSpearman`."""
    from scipy.stats import rankdata

    lead = ["resample"] if "resample" in da.dims else []
    arr = da.sel(var=["H", "d"]).transpose(*lead, "var", "seed", "batch", "pair").values
    arr = arr.reshape(*arr.shape[:len(lead) + 1], -1)
    ranks = rankdata(arr, axis=-1)
    ranks -= ranks.mean(axis=-1, keepdims=True)
    h, d = ranks[..., 0, :], ranks[..., 1, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (h * d).sum(-1) / np.sqrt((h * h).sum(-1) * (d * d).sum(-1))
    return xr.DataArray(rho, dims=lead)


class PooledSpearman:
    """`pooled_spearman` as a fast bootstrap statistic over `similarity_units(ds)`.

    A hierarchical resample is a multiset of the original (seed, batch) units; each resampled
    slot is recognised by its "unit" index, and the Spearman correlation of the pooled
    multiset is computed from ONE global sort of the original values: the average rank of a
    value x is L + (W + 1) / 2, with L the multiplicity-weighted count of values below x and W
    that of values equal to x; then the multiplicity-weighted Pearson correlation of the ranks.
    Exactly the Spearman correlation of the resampled pooled data (ties included)."""

    def __init__(self, units: xr.DataArray):
        arr = units.transpose("seed", "batch", "var", "pair")
        n_units = arr.sizes["seed"] * arr.sizes["batch"]
        ids = arr.sel(var="unit").values.reshape(n_units, -1)
        if not np.array_equal(ids[:, 0], np.arange(n_units)):
            raise InputError("units: expected similarity_units' unit indices 0..U-1")
        self.n_units = n_units
        n_pairs = arr.sizes["pair"]
        self.unit_of = np.repeat(np.arange(n_units), n_pairs)
        self.sorts = []
        for var in ("H", "d"):
            values = arr.sel(var=var).values.reshape(-1)
            order = np.argsort(values, kind="stable")
            _, start, group = np.unique(values[order], return_index=True, return_inverse=True)
            end = np.r_[start[1:], values.size] - 1
            self.sorts.append((order, start, end, group))

    def _ranks(self, weights: np.ndarray, which: int) -> np.ndarray:
        order, start, end, group = self.sorts[which]
        c = np.cumsum(weights[:, order], axis=1)
        below = np.where(start > 0, c[:, np.maximum(start - 1, 0)], 0.0)
        rank_group = below + (c[:, end] - below + 1.0) / 2.0
        out = np.empty_like(c)
        out[:, order] = rank_group[:, group]
        return out

    def unit_index(self, units: xr.DataArray) -> xr.DataArray:
        """The (seed, batch) unit indices: bootstrap these (small) instead of the pairs."""
        return units.sel(var="unit").isel(pair=0, drop=True)

    def __call__(self, da: xr.DataArray) -> xr.DataArray:
        """da: unit indices (resample?, seed, batch) or `similarity_units`-shaped data."""
        if "var" in da.dims:
            da = self.unit_index(da)
        lead = ["resample"] if "resample" in da.dims else []
        slots = da.transpose(*lead, "seed", "batch").values
        slots = slots.reshape(-1, slots.shape[-2] * slots.shape[-1]).astype(np.int64)
        rho = np.concatenate([self._rho(slots[i:i + 64]) for i in range(0, len(slots), 64)])
        return xr.DataArray(rho if lead else rho[0], dims=lead)

    def _rho(self, slots: np.ndarray) -> np.ndarray:
        counts = (slots[:, :, None] == np.arange(self.n_units)).sum(axis=1).astype(np.float64)
        w = counts[:, self.unit_of]  # [R, M] multiplicity of every original value
        rh, rd = self._ranks(w, 0), self._ranks(w, 1)
        total = w.sum(axis=1, keepdims=True)
        rh -= (w * rh).sum(axis=1, keepdims=True) / total
        rd -= (w * rd).sum(axis=1, keepdims=True) / total
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w * rh * rd).sum(1) / np.sqrt((w * rh * rh).sum(1) * (w * rd * rd).sum(1))


def mean_over_units(da: xr.DataArray) -> xr.DataArray:
    """The hierarchical mean over (seed, batch) (keeps `resample` and other dims)."""
    return da.mean([d for d in ("seed", "batch") if d in da.dims])


def bootstrap(data: xr.DataArray, statistic=mean_over_units, **kwargs) -> xr.DataArray:
    """`hierarchical_bootstrap` with this module's defaults (1000 resamples, random_state 0,
    vectorized statistic)."""
    kwargs.setdefault("n_resamples", N_RESAMPLES)
    kwargs.setdefault("random_state", RANDOM_STATE)
    return hierarchical_bootstrap(data, statistic, vectorized=True, **kwargs)


def _replicates(data, statistic, random_state, **kwargs):
    """The estimate and the bootstrap replicates of `statistic` (collected from the vectorized
    calls of `hierarchical_bootstrap`, which pass the replicates in draw order)."""
    caught = []

    def stat(da):
        out = statistic(da)
        if "resample" in da.dims:
            caught.append(np.asarray(out.transpose("resample", ...).values, dtype=np.float64))
        return out

    ci = bootstrap(data, stat, random_state=random_state, **kwargs)
    return ci, np.concatenate(caught, axis=0)


def bootstrap_difference(a: xr.DataArray, b: xr.DataArray, statistic=mean_over_units, *,
                         n_resamples: int = N_RESAMPLES, random_state: int = RANDOM_STATE,
                         confidence: float = 0.95, **kwargs) -> xr.DataArray:
    """statistic(a) - statistic(b) for two independent data sets (different PDEs or models):
    independent hierarchical bootstraps of each (random states `random_state` and
    `random_state + 1`), the percentile interval of the replicate differences (`ci` dim)."""
    ci_a, rep_a = _replicates(a, statistic, random_state, n_resamples=n_resamples,
                              confidence=confidence, **kwargs)
    ci_b, rep_b = _replicates(b, statistic, random_state + 1, n_resamples=n_resamples,
                              confidence=confidence, **kwargs)
    diff = rep_a - rep_b
    est = ci_a.sel(ci="estimate", drop=True) - ci_b.sel(ci="estimate", drop=True)
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(diff, [alpha, 1 - alpha], axis=0)
    return xr.DataArray(np.stack([est.values, low, high]), dims=("ci", *est.dims),
                        coords={**est.coords, "ci": list(CI_LABELS)},
                        attrs={"n_resamples": n_resamples, "random_state": random_state,
                               "confidence": confidence, "method": "percentile",
                               "resampled": "independent hierarchical bootstraps of both sets",
                               "n_seeds": min(ci_a.attrs["n_seeds"], ci_b.attrs["n_seeds"]),
                               "n_batches": min(ci_a.attrs["n_batches"], ci_b.attrs["n_batches"])})


def log10_median(da: xr.DataArray) -> xr.DataArray:
    """Median over (seed, batch) of log10 values (keeps `resample`)."""
    stacked = np.log10(da).stack(unit=[d for d in ("seed", "batch") if d in da.dims])
    return stacked.median("unit")


def paired_log_gap(unet: pd.Series, vit: pd.Series) -> xr.DataArray:
    """log10 final validation SMSE, UNet minus ViT, per common seed (the seed fixes the split
    and initialisation), dims (seed,)."""
    common = sorted(set(unet.index) & set(vit.index))
    if not common:
        raise InputError("unet, vit: no common seed")
    gap = np.log10(unet.loc[common].to_numpy(float)) - np.log10(vit.loc[common].to_numpy(float))
    return xr.DataArray(gap, dims=("seed",), coords={"seed": common})


def mean_over_seeds(da: xr.DataArray) -> xr.DataArray:
    return da.mean("seed")


def mean_abs_over_seeds(da: xr.DataArray) -> xr.DataArray:
    return abs(da).mean("seed")


# --------------------------------------------------------------------------- power-analysis units


def components(units: xr.DataArray) -> dict:
    """`unit_components` of `units`, or components that `decisive_design` reads as "not
    estimable" (fewer than 2 seeds, a non-finite value) instead of an error."""
    try:
        return unit_components(units)
    except InputError:
        n_batches = units.sizes.get("batch", 1)
        return {"mean": math.nan, "s_seed": math.nan, "s_batch": None,
                "n_seeds": int(units.sizes.get("seed", 1)), "n_batches": int(n_batches)}


def seed_crossings(curves: xr.Dataset) -> xr.DataArray:
    """Per seed, where that seed's smoothing curve first crosses zero (NaN where it does not):
    the per-seed values behind the correlation length's seed bootstrap, dims (seed,)."""
    x = np.asarray(curves["d_fine"].values, dtype=np.float64)
    fine = curves["fine"].transpose("seed", "fine").values
    return xr.DataArray(zero_crossing(x, fine), dims=("seed",),
                        coords={"seed": curves["seed"].values})


def paired_difference(a: xr.DataArray, b: xr.DataArray):
    """`a - b` per (seed, batch) where both hold the same seeds and batches (UNet and ViT are
    trained from the same seeds and probed on the same test batches), else the components of
    the difference of two independent data sets (`independent_difference`)."""
    a2, b2 = xr.align(a, b, join="inner")
    if a2.sizes == a.sizes == b.sizes:
        return a2 - b2
    return independent_difference(components(a), components(b))


# --------------------------------------------------------------------------- findings records


def paper_value(name: str, key: str | None):
    """The rule's paper number for `key` ("PDE-model", "PDE" or "model"), else None."""
    rule = VERDICT_RULES[name]
    return rule.paper_values.get(key) if key is not None else None


def finding_record(name: str, ci: xr.DataArray, *, pde, model, key: str | None = None,
                   n_seeds: int | None = None, n_batches: int | None = None,
                   units=None) -> dict:
    """One finding as the notebooks' results JSON holds it: pde, model, estimate, low, high,
    n_seeds, n_batches, verdict (`apply_rule`; `key` picks the paper value), rule text, paper
    value (None if none). `n_seeds` / `n_batches` override the counts read from `ci.attrs`
    (for statistics bootstrapped over seeds only).

    units: the per-(seed, batch) (or per-seed) values behind the interval, or their components
    (`unit_components`): the record then carries `needed` (`needed_for_rule` with this
    record's estimate and verdict; with per-seed values the design keeps `n_batches`).

    With a single resampling unit there is nothing to resample: the "interval" is the point
    itself, so the verdict is reported as inconclusive (field `note` says so)."""
    est, low, high = (float(ci.sel(ci=k)) for k in CI_LABELS)
    n_units = int(ci.attrs.get("n_seeds", 1)) * int(ci.attrs.get("n_batches", 1))
    n_seeds = int(ci.attrs.get("n_seeds", 0)) if n_seeds is None else int(n_seeds)
    n_batches = int(ci.attrs.get("n_batches", 0)) if n_batches is None else int(n_batches)
    rule = VERDICT_RULES[name]
    note = ""
    nonfinite = int(ci.attrs.get("n_nonfinite", 0) or 0)
    n_res = int(ci.attrs.get("n_resamples", 0) or 0)
    if n_units < 2:
        verdict, note = "inconclusive", "one resampling unit only: no interval, no verdict"
    elif not math.isfinite(est):
        verdict, note = "inconclusive", "the statistic is undefined on our data (e.g. no zero crossing)"
    elif n_res and nonfinite > 0.025 * n_res:
        verdict, note = "inconclusive", (f"the statistic is undefined in {nonfinite} of {n_res} "
                                         f"replicates: the interval is not a 95% interval")
    elif rule.rule == "value" and key not in rule.paper_values:
        verdict, note = "inconclusive", f"no paper value for {key!r}"
    else:
        verdict = str(apply_rule(name, (est, low, high),
                                 key=key if rule.rule == "value" else None))
    record = {"pde": pde, "model": model, "estimate": est, "low": low, "high": high,
              "n_seeds": n_seeds, "n_batches": n_batches, "verdict": verdict,
              "rule": describe_rule(name), "paper": paper_value(name, key),
              "n_resamples": ci.attrs.get("n_resamples"),
              "random_state": ci.attrs.get("random_state")}
    if units is not None:
        record["needed"] = needed_for_rule(name, units, key=key, estimate=est, verdict=verdict,
                                           n_batches_measured=n_batches)
    if note:
        record["note"] = note
    return record


def describe_record(name: str, rec: dict) -> str:
    """One line: rule name, where, estimate [low, high], verdict, paper value, and the seeds x
    batches a decisive verdict needs (`describe_needed`) where the record has them."""
    paper = "" if rec.get("paper") is None else f"; paper ≈ {rec['paper']:.3g}"
    where = "-".join(str(v) for v in (rec["pde"], rec["model"]) if v)
    note = f" ({rec['note']})" if rec.get("note") else ""
    need = (f"; for a decisive verdict: {describe_needed(rec['needed'])}"
            if rec.get("needed") else "")
    return (f"{name} [{where}]: {rec['estimate']:.3g} (95% CI {rec['low']:.3g} .. "
            f"{rec['high']:.3g}; {rec['n_seeds']} seeds x {rec['n_batches']} batches) -> "
            f"{rec['verdict'].upper()}{note}{paper}{need}")


# --------------------------------------------------------------------------- findings per notebook

#: Unit-level statistic of each per-(PDE, model) influence finding (values per (seed, batch);
#: the finding's statistic is their hierarchical mean).
UNIT_STATISTICS = {
    "temporal_decay": decay_units,
    "mass_decay": decay_units,
    "energy_decay": decay_units,
    "inter_below_intra": inter_gap_units,
    "class_locked": class_locked_units,
}


def influence_findings(hns: dict, names) -> dict:
    """{name: [record per (PDE, model)]} for per-(PDE, model) findings of `UNIT_STATISTICS`.
    hns: {(pde, model): standardized Ĥ of the bra the finding names}."""
    out = {}
    for name in names:
        if name not in UNIT_STATISTICS:
            raise InputError(f"names: {name!r} is not one of {list(UNIT_STATISTICS)}")
        out[name] = []
        for (pde, model), hn in hns.items():
            units = UNIT_STATISTICS[name](hn)
            out[name].append(finding_record(name, bootstrap(units), pde=pde, model=model,
                                            key=f"{pde}-{model}", units=units))
    return out


def broader_coherence_findings(hns: dict) -> list:
    """ns_broader_coherence per model held on both PDEs: ratio-of-means H(|dt|=1)/H(dt=0) on
    NS minus on CE (independent bootstraps). hns: {(pde, model): standardized Ĥ_CC}."""
    out = []
    for model in dict.fromkeys(m for _, m in hns):
        if ("NS", model) in hns and ("CE", model) in hns:
            ns, ce = (coherence_ratio_units(hns[(pde, model)]) for pde in ("NS", "CE"))
            ci = bootstrap_difference(ns, ce, ratio_of_means)
            units = independent_difference(*(components(ratio_units(u.sel(part="dt1"),
                                                                    u.sel(part="dt0")))
                                             for u in (ns, ce)))
            out.append(finding_record("ns_broader_coherence", ci, pde="NS-CE", model=model,
                                      key=model, units=units))
    return out


def similarity_findings(datasets: dict, curves: dict) -> dict:
    """similarity_decay (pooled Spearman of Ĥ_CC with d) and correlation_length (zero crossing
    of the median smoothing curve, seeds resampled) per (PDE, model)."""
    decay, length = [], []
    for (pde, model), ds in datasets.items():
        units = similarity_units(ds)
        stat = PooledSpearman(units)
        ci = bootstrap(stat.unit_index(units), stat)
        rho_units = spearman_units(units.sel(var="H", drop=True), units.sel(var="d", drop=True))
        decay.append(finding_record("similarity_decay", ci, pde=pde, model=model,
                                    units=rho_units))
        cv = curves[(pde, model)]
        cl = correlation_length(cv)
        length.append(finding_record("correlation_length", cl, pde=pde, model=model, key=pde,
                                     n_seeds=ds.sizes["seed"], n_batches=ds.sizes["batch"],
                                     units=seed_crossings(cv)))
    return {"similarity_decay": decay, "correlation_length": length}


def ntk_findings(datasets: dict) -> list:
    """vit_smaller_ntk_eigenvalue per PDE with both models: median log10 λ_max, UNet minus ViT
    (independent bootstraps over (seed, batch))."""
    out = []
    for pde in dict.fromkeys(p for p, _ in datasets):
        if (pde, "unet") in datasets and (pde, "vit") in datasets:
            unet, vit = (datasets[(pde, m)]["ntk_top_eigenvalue"] for m in ("unet", "vit"))
            ci = bootstrap_difference(unet, vit, log10_median)
            out.append(finding_record("vit_smaller_ntk_eigenvalue", ci, pde=pde,
                                      model="unet-vit", key=pde,
                                      units=paired_difference(np.log10(unet), np.log10(vit))))
    return out


def validation_findings(histories: dict) -> dict:
    """vit_beats_unet_ce (CE: mean over seeds of log10 final val SMSE, UNet minus ViT) and
    ns_models_comparable (NS: mean over seeds of its absolute value), seeds resampled."""
    out = {"vit_beats_unet_ce": [], "ns_models_comparable": []}
    for pde, name, stat in (("CE", "vit_beats_unet_ce", mean_over_seeds),
                            ("NS", "ns_models_comparable", mean_abs_over_seeds)):
        if (pde, "unet") in histories and (pde, "vit") in histories:
            gap = paired_log_gap(final_validation(histories[(pde, "unet")]),
                                 final_validation(histories[(pde, "vit")]))
            ci = bootstrap(gap, stat, seed_dim=None, batch_dim="seed")
            units = abs(gap) if name == "ns_models_comparable" else gap
            out[name].append(finding_record(name, ci, pde=pde, model="unet-vit", key=pde,
                                            n_seeds=gap.sizes["seed"], n_batches=1,
                                            units=units))
    return out


def finding_lines(findings: dict) -> list[str]:
    """`describe_record` of every record, in order."""
    return [describe_record(name, rec) for name, recs in findings.items()
            for rec in (recs if isinstance(recs, list) else [recs])]
