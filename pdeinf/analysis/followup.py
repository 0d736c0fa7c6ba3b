"""The follow-up's headline numbers with t-intervals over seed means, its rollout-link records
(`evaluate.evaluate_units`, Fisher's z) and their plain-words reading, on its estimator (the
subspace sweep across checkpoints) through `pdeinf.analysis.coherence`. Pure: xarray in, out.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.coherence import PAPER_ROLLOUT_CORRELATION, normalized_pi
from pdeinf.analysis.evaluate import evaluate_units
from pdeinf.analysis.rollout_stats import rollout_link_statistics
from pdeinf.analysis.seed_paper_findings import ridge_units
from pdeinf.analysis.statistics import interval_side, interval_text, seed_interval, seed_mean_ci
from pdeinf.errors import InputError

#: Permutations of the rollout link's tests (random state: `rollout_stats.RANDOM_STATE`).
N_PERMUTATIONS = 1000


def dynamics_intervals(ds: xr.Dataset, *, variant: str = "gauss-newton",
                       normalization: str = "none") -> xr.DataArray:
    """Per checkpoint, the mean diagonal, mean off-diagonal entry and their ratio of each
    (seed, epoch, batch) matrix Pi, with the t-interval over seed means (`seed_mean_ci`): dims
    `(ci, quantity, epoch)`, quantity "diagonal", "off-diagonal", "ratio"."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch="all")
    diag, off = ag.diagonal_means(ag.flatten(npi.values))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.stack([diag, off, off / diag], axis=-1)  # [S, E, B, 3]
    if not np.all(np.isfinite(values)):
        raise InputError(f"ds['pi'] (variant {variant!r}): a matrix has a zero diagonal mean")
    dims = ("seed", "epoch", "batch")
    data = xr.DataArray(values, dims=(*dims, "quantity"),
                        coords={**{d: npi[d].values for d in dims},
                                "quantity": ["diagonal", "off-diagonal", "ratio"]})
    out = seed_mean_ci(data).assign_attrs(variant=variant, normalization=normalization)
    return out.transpose("ci", "quantity", "epoch")


def spectrum_intervals(spec: xr.Dataset) -> xr.DataArray:
    """Per checkpoint, log10 condition number, effective rank and effective rank / rank of
    eta_hat (`coherence.spectrum` output) with their t-intervals over seed means, dims `(ci,
    quantity, epoch)`; a quantity not finite everywhere is left out."""
    if not isinstance(spec, xr.Dataset) or "effective_rank" not in spec:
        raise InputError("spec: expected the xr.Dataset of pdeinf.analysis.coherence.spectrum")
    with np.errstate(divide="ignore", invalid="ignore"):
        parts = {"log10_condition_number": np.log10(spec["condition_number"]),
                 "effective_rank": spec["effective_rank"]}
        if "rank" in spec:
            parts["effective_rank_fraction"] = spec["effective_rank"] / spec["rank"]
    kept = {k: v.transpose("seed", "epoch", "batch") for k, v in parts.items()
            if np.all(np.isfinite(v.values))}
    if not kept:
        raise InputError("spec: no spectrum quantity is finite for every (seed, epoch, batch)")
    data = xr.concat(list(kept.values()), dim="quantity").assign_coords(quantity=list(kept))
    return seed_mean_ci(data.astype(np.float64)).transpose("ci", "quantity", "epoch")


def describe_dynamics(dyn_ci: xr.DataArray) -> str:
    """The ratio of `dynamics_intervals` at the first and the final checkpoint, and whether the
    cross-example share grows or shrinks (intervals disjoint), cannot be told apart (they
    overlap) or cannot be judged (no interval)."""
    ratio = dyn_ci.sel(quantity="ratio").transpose("epoch", "ci")
    first, last = ratio.values[0], ratio.values[-1]  # (estimate, low, high)
    trend = ("cannot be judged without an interval" if not np.all(np.isfinite([first, last]))
             else "grows during training (intervals disjoint)" if first[2] < last[1]
             else "shrinks during training (intervals disjoint)" if first[1] > last[2]
             else "cannot be told apart between the first and final checkpoint (intervals overlap)")
    return (f"mean off-diagonal / mean diagonal raw influence: epoch {int(ratio.epoch[0])} "
            f"{interval_text(first, '.3g')}, epoch {int(ratio.epoch[-1])} "
            f"{interval_text(last, '.3g')}: the cross-example share {trend}")


def describe_spectrum(spec_ci: xr.DataArray) -> str:
    """At the final checkpoint of `spectrum_intervals`: effective rank / rank of eta_hat, read
    as anisotropic (a few modes dominate) where its interval lies below 0.5, and the log10
    condition number (each where `spec_ci` has it), one line each."""
    final = spec_ci.isel(epoch=-1)
    lines = [f"final eta_hat: {label} {interval_text(final.sel(quantity=q), '.3g')}"
             for q, label in (("effective_rank_fraction", "effective rank / rank"),
                              ("log10_condition_number", "log10 condition number"))
             if q in final.quantity]
    if "effective_rank_fraction" in final.quantity:
        high = float(final.sel(quantity="effective_rank_fraction", ci="high"))
        lines[0] += ": " + ("no claim without an interval" if not math.isfinite(high)
                            else "anisotropic: a few modes dominate (effective rank below half "
                            "the rank)" if high < 0.5
                            else "not shown to be anisotropic (the interval reaches 0.5)")
    return "\n".join(lines)


def rollout_statistics(link: xr.Dataset, *,
                       n_permutations: int = N_PERMUTATIONS) -> tuple[xr.Dataset | None, str]:
    """`(rollout_link_statistics, "")` of a `coherence.rollout_link` result over the horizons
    whose errors are finite everywhere; `(None, reason)` with fewer than 2 seeds, a non-finite
    R, or no such dt."""
    if not isinstance(link, xr.Dataset) or not {"ratio", "rollout_error"} <= set(link):
        raise InputError("link: expected coherence.rollout_link output (ratio, rollout_error)")
    if link.sizes["seed"] < 2:
        return None, f"{link.sizes['seed']} seed: intervals over seeds need at least 2"
    if not np.all(np.isfinite(link["ratio"].values)):
        return None, "R is not finite for every (seed, class, batch)"
    error = link["rollout_error"]
    finite_dt = [dt for dt in error["dt"].values if np.all(np.isfinite(error.sel(dt=dt).values))]
    if not finite_dt:
        return None, "no horizon has a finite rollout error for every (seed, class, batch)"
    return rollout_link_statistics(link["ratio"], error.sel(dt=finite_dt),
                                   n_permutations=n_permutations), ""


def seed_correlations(ratio: xr.DataArray, error: xr.DataArray, *,
                      within_class: bool = False, zero_spread: str = "tolerance") -> xr.DataArray:
    """Per seed, the Pearson correlation of R with the rollout error at one dt (both dims
    `(seed, class, batch)`) over its (class, batch) units, dims (seed,); with `within_class`,
    both centred within each (seed, class) first. NaN where either is constant."""
    dims = ("seed", "class", "batch")
    for name, da in (("ratio", ratio), ("error", error)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(dims):
            raise InputError(f"{name}: expected an xr.DataArray with dims {dims}")
    x, y = (np.asarray(da.transpose(*dims).values, dtype=np.float64) for da in (ratio, error))
    if within_class:
        x, y = (u - u.mean(axis=2, keepdims=True) for u in (x, y))
    r = ag.pearson(x.reshape(len(x), -1), y.reshape(len(y), -1), zero_spread=zero_spread)
    return xr.DataArray(r, dims=("seed",), coords={"seed": ratio["seed"].values})


def paper_rollout_pearson(pde: str, model: str, dt: int) -> float | None:
    """The follow-up's published Pearson r at horizon dt (None where it gives none)."""
    return PAPER_ROLLOUT_CORRELATION.get((pde, model.lower()), {}).get(dt)


def finding_dts(link: xr.Dataset, wanted=(1, 16)) -> list[int]:
    """The horizons the findings use: `wanted`, each capped at the longest dt of `link`."""
    return sorted({min(int(dt), int(link["dt"].values.max())) for dt in wanted})


def rollout_findings(link: xr.Dataset, *, pde: str, model: str,
                     dts=(1, 16)) -> dict[str, list[dict]]:
    """Records of `rollout_link_negative` and `rollout_link_within_class` (`seed_correlations`
    without / with centring) at each dt of `finding_dts(link, dts)`, on Fisher's z scale."""
    out: dict[str, list[dict]] = {"rollout_link_negative": [], "rollout_link_within_class": []}
    for dt in finding_dts(link, dts):
        error = link["rollout_error"].sel(dt=dt)
        for name, within in (("rollout_link_negative", False), ("rollout_link_within_class", True)):
            r = seed_correlations(link["ratio"], error, within_class=within)
            out[name].append(evaluate_units(
                name, r, key=None if within else f"{pde}-{model.lower()} dt={dt}",
                pde=pde, model=model, scale="fisher-z", dt=int(dt)))
    return out


def variant_ridge(ds: xr.Dataset, variant: str) -> tuple[float, float, float]:
    """(estimate, low, high) over seeds of the lag-0 ridge (`lag0_ridge`, pooled over
    classes) of one variant's row-standardized Pi at the final checkpoint."""
    npi = normalized_pi(ds, variant=variant, normalization="standard").isel(epoch=0, drop=True)
    return seed_interval(ridge_units(npi).sel(cls="all", drop=True).transpose("seed", "batch").values)


def describe_rollout_link(stats: xr.Dataset, dt: int, *, paper: float | None = None) -> str:
    """What the data support at horizon dt, in plain words: the pooled Pearson and Spearman,
    the within-class link (pooled and per class) with intervals and permutation p-values, and
    whether the link is between or within classes."""
    at = stats.sel(dt=dt)
    per_class = ", ".join(f"{c} {interval_text(at['within_class'].sel({'class': c}))}"
                          for c in stats["class"].values)
    paper_text = f" (follow-up: {paper:+.2f})" if paper is not None else ""
    text = (f"dt={dt}: pooled Pearson {interval_text(at['pearson'])}{paper_text}, permutation "
            f"p={float(at['p_pearson']):.3f}; Spearman {interval_text(at['spearman'])}; "
            f"within classes (class means removed) {interval_text(at['within_class_pooled'])}, "
            f"p={float(at['p_within_class_pooled']):.3f}; per class: {per_class}. ")
    pooled, within = (interval_side(*(float(v) for v in at[q].values[1:]))
                      for q in ("pearson", "within_class_pooled"))
    if pooled > 0:
        return text + "The pooled link is positive: the opposite sign to the follow-up's."
    if pooled < 0:
        return text + {
            -1: "The negative link holds within classes too, not only between them.",
            0: "The pooled link is negative but within classes the interval includes 0: the link "
               "is between classes, not (detectably) within.",
            1: "The pooled link is negative but within classes it is positive: the pooled sign "
               "comes from differences between classes."}[within]
    return text + ("No pooled link can be told from 0, but within classes it is negative (class "
                   "differences mask it)." if within < 0 else
                   "No link can be told from 0 at this design, pooled or within classes.")


def rollout_statements(link: xr.Dataset, stats: xr.Dataset | None, why: str = "", *,
                       pde: str, model: str) -> list[str]:
    """`describe_rollout_link` at each horizon of `finding_dts(link)` beside the follow-up's r;
    where `rollout_statistics` gave no `stats`, its reason `why`."""
    if stats is None:
        return [f"no interval over seeds: {why}"]
    return [describe_rollout_link(stats, dt, paper=paper_rollout_pearson(pde, model, dt))
            for dt in finding_dts(link) if dt in stats.dt.values]
