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
from pdeinf.analysis.rollout_stats import RANDOM_STATE, rollout_link_statistics
from pdeinf.analysis.seed_paper_findings import ridge_units
from pdeinf.analysis.statistics import interval_side, seed_interval, seed_mean_ci
from pdeinf.errors import InputError

#: Permutations of the rollout link's tests (their random state: `RANDOM_STATE`).
N_PERMUTATIONS = 1000


def dynamics_intervals(ds: xr.Dataset, *, variant: str = "gauss-newton",
                       normalization: str = "none") -> xr.DataArray:
    """Per checkpoint, the mean diagonal, mean off-diagonal entry and their ratio of each
    (seed, epoch, batch) matrix Pi, with the t-interval over seed means (`seed_mean_ci`): dims
    `(ci, quantity, epoch)`, quantity "diagonal", "off-diagonal", "ratio"."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch="all")
    diag, off = ag.diagonal_means(ag.flatten(npi.values))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = off / diag
    values = np.stack([diag, off, ratio], axis=-1)  # [S, E, B, 3]
    if not np.all(np.isfinite(values)):
        raise InputError(f"ds['pi'] (variant {variant!r}): a matrix has a zero diagonal mean")
    data = xr.DataArray(values, dims=("seed", "epoch", "batch", "quantity"),
                        coords={"seed": npi["seed"].values, "epoch": npi["epoch"].values,
                                "batch": npi["batch"].values,
                                "quantity": ["diagonal", "off-diagonal", "ratio"]})
    out = seed_mean_ci(data)
    out.attrs.update(variant=variant, normalization=normalization)
    return out.transpose("ci", "quantity", "epoch")


def spectrum_intervals(spec: xr.Dataset) -> xr.DataArray:
    """Per checkpoint, log10 condition number, effective rank and effective rank / rank of
    eta_hat (`coherence.spectrum` output) with their t-intervals over seed means, dims `(ci,
    quantity, epoch)`; a quantity not finite everywhere is left out."""
    if not isinstance(spec, xr.Dataset) or "effective_rank" not in spec:
        raise InputError("spec: expected the xr.Dataset of pdeinf.analysis.coherence.spectrum")
    parts = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        parts["log10_condition_number"] = np.log10(spec["condition_number"])
        parts["effective_rank"] = spec["effective_rank"]
        if "rank" in spec:
            parts["effective_rank_fraction"] = spec["effective_rank"] / spec["rank"]
    kept = {k: v.transpose("seed", "epoch", "batch") for k, v in parts.items()
            if np.all(np.isfinite(v.values))}
    if not kept:
        raise InputError("spec: no spectrum quantity is finite for every (seed, epoch, batch)")
    data = xr.concat(list(kept.values()), dim="quantity").assign_coords(quantity=list(kept))
    return seed_mean_ci(data.astype(np.float64)).transpose("ci", "quantity", "epoch")


def rollout_statistics(link: xr.Dataset, *, n_permutations: int = N_PERMUTATIONS,
                       random_state: int = RANDOM_STATE) -> tuple[xr.Dataset | None, str]:
    """`(rollout_link_statistics, "")` of a `coherence.rollout_link` result over the horizons
    whose errors are finite everywhere; `(None, reason)` with fewer than 2 seeds, a non-finite
    R, or no such dt."""
    for name in ("ratio", "rollout_error"):
        if not isinstance(link, xr.Dataset) or name not in link:
            raise InputError(f"link: expected coherence.rollout_link output with {name!r}")
    if link.sizes["seed"] < 2:
        return None, f"{link.sizes['seed']} seed: intervals over seeds need at least 2"
    if not np.all(np.isfinite(link["ratio"].values)):
        return None, "R is not finite for every (seed, class, batch)"
    error = link["rollout_error"]
    finite_dt = [dt for dt in error["dt"].values
                 if np.all(np.isfinite(error.sel(dt=dt).values))]
    if not finite_dt:
        return None, "no horizon has a finite rollout error for every (seed, class, batch)"
    stats = rollout_link_statistics(link["ratio"], error.sel(dt=finite_dt),
                                    n_permutations=n_permutations, random_state=random_state)
    return stats, ""


def seed_correlations(ratio: xr.DataArray, error: xr.DataArray, *,
                      within_class: bool = False, zero_spread: str = "tolerance") -> xr.DataArray:
    """Per seed, the Pearson correlation of R with the rollout error at one dt (both dims
    `(seed, class, batch)`) over its (class, batch) units, dims (seed,); with `within_class`,
    both centred within each (seed, class) first. NaN where either is constant."""
    dims = ("seed", "class", "batch")
    for name, da in (("ratio", ratio), ("error", error)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(dims):
            raise InputError(f"{name}: expected an xr.DataArray with dims {dims}")
    x = np.asarray(ratio.transpose(*dims).values, dtype=np.float64)
    y = np.asarray(error.transpose(*dims).values, dtype=np.float64)
    if within_class:
        x = x - x.mean(axis=2, keepdims=True)
        y = y - y.mean(axis=2, keepdims=True)
    s = x.shape[0]
    r = ag.pearson(x.reshape(s, -1), y.reshape(s, -1), zero_spread=zero_spread)
    return xr.DataArray(r, dims=("seed",), coords={"seed": ratio["seed"].values})


def paper_rollout_pearson(pde: str, model: str, dt: int) -> float | None:
    """The follow-up's published Pearson r at horizon dt (None where it gives none)."""
    return PAPER_ROLLOUT_CORRELATION.get((pde, model.lower()), {}).get(dt)


def finding_dts(link: xr.Dataset, wanted=(1, 16)) -> list[int]:
    """The horizons the findings use: `wanted`, each capped at the longest dt of `link`."""
    longest = int(link["dt"].values.max())
    return sorted({min(int(dt), longest) for dt in wanted})


def rollout_findings(link: xr.Dataset, *, pde: str, model: str,
                     dts=(1, 16)) -> dict[str, list[dict]]:
    """Records of `rollout_link_negative` and `rollout_link_within_class` (`seed_correlations`
    without / with centring) at each dt of `finding_dts(link, dts)`, on Fisher's z scale."""
    out: dict[str, list[dict]] = {"rollout_link_negative": [], "rollout_link_within_class": []}
    for dt in finding_dts(link, dts):
        error = link["rollout_error"].sel(dt=dt)
        for name, within in (("rollout_link_negative", False),
                             ("rollout_link_within_class", True)):
            r = seed_correlations(link["ratio"], error, within_class=within)
            out[name].append(evaluate_units(
                name, r, key=None if within else f"{pde}-{model.lower()} dt={dt}",
                pde=pde, model=model, scale="fisher-z", dt=int(dt)))
    return out


def variant_ridge(ds: xr.Dataset, variant: str) -> tuple[float, float, float]:
    """(estimate, low, high) over seeds of the lag-0 ridge (`lag0_ridge`, pooled over
    classes) of one variant's row-standardized Pi at the final checkpoint."""
    npi = normalized_pi(ds, variant=variant, normalization="standard").isel(epoch=0, drop=True)
    values = ridge_units(npi).sel(cls="all", drop=True).transpose("seed", "batch").values
    return seed_interval(values)


def _interval(ci) -> str:
    est, low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{est:+.2f} (no interval)" if math.isfinite(est) else "undefined"
    return f"{est:+.2f} [{low:+.2f}, {high:+.2f}]"


def describe_rollout_link(stats: xr.Dataset, dt: int, *, paper: float | None = None) -> str:
    """What the data support at horizon dt, in plain words: the pooled Pearson and Spearman,
    the within-class link (pooled and per class) with intervals and permutation p-values, and
    whether the link is between or within classes."""
    pick = {q: tuple(float(v) for v in stats[q].sel(dt=dt).values)
            for q in ("pearson", "spearman", "within_class_pooled")}
    within = stats["within_class"]
    per_class = ", ".join(
        f"{c} {_interval(tuple(float(v) for v in within.sel({'class': c, 'dt': dt}).values))}"
        for c in stats["class"].values)
    paper_text = f" (follow-up: {paper:+.2f})" if paper is not None else ""
    text = (f"dt={dt}: pooled Pearson {_interval(pick['pearson'])}{paper_text}, permutation "
            f"p={float(stats['p_pearson'].sel(dt=dt)):.3f}; Spearman {_interval(pick['spearman'])}; "
            f"within classes (class means removed) {_interval(pick['within_class_pooled'])}, "
            f"p={float(stats['p_within_class_pooled'].sel(dt=dt)):.3f}; per class: {per_class}. ")
    pooled, within = (interval_side(*pick[q][1:]) for q in ("pearson", "within_class_pooled"))
    if pooled < 0 and within < 0:
        return text + "The negative link holds within classes too, not only between them."
    if pooled < 0 and within == 0:
        return text + ("The pooled link is negative but within classes the interval includes 0: "
                       "the link is between classes, not (detectably) within.")
    if pooled < 0:
        return text + ("The pooled link is negative but within classes it is positive: the "
                       "pooled sign comes from differences between classes.")
    if pooled > 0:
        return text + "The pooled link is positive: the opposite sign to the follow-up's."
    if within < 0:
        return text + ("No pooled link can be told from 0, but within classes it is negative "
                       "(class differences mask it).")
    return text + "No link can be told from 0 at this design, pooled or within classes."
