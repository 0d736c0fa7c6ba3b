"""The follow-up's headline numbers with intervals, and its findings as records.

Everything here works on the follow-up's estimator (the exact subspace sweep across
checkpoints, `pdeinf.pipeline.load_variants`) through `pdeinf.analysis.coherence`:

- `dynamics_intervals`: mean diagonal, mean off-diagonal and their ratio per checkpoint, each
  a mean over seeds x influence batches with a hierarchical-bootstrap interval.
- `spectrum_intervals`: log10 condition number, effective rank and effective rank / rank of
  eta_hat per checkpoint, same aggregation.
- `rollout_statistics`: `rollout_link_statistics` on a `coherence.rollout_link` result, or None
  (with the reason) when the design is too small for it.
- `correlation_units`, `needed_design`: the power analysis of a correlation. With z-scores
  (population standard deviations) over the (seed, class, batch) units, r + IF_i with the
  influence function of Pearson's r, `IF_i = z_x z_y - r (z_x^2 + z_y^2) / 2`, averages to r
  exactly and its spread is r's first-order (delta-method) sampling spread, so its per-(seed,
  batch) mean over classes is a value measured once per (seed, batch) whose hierarchical mean
  is r; its variance components give `decisive_design` (a linearised plug-in: approximate),
  through `pdeinf.analysis.verdicts.needed_for_rule` with the record's verdict.
- `finding_record`, `rollout_findings`: the `{"pde", "model", "estimate", "low", "high",
  "n_seeds", "n_batches", "verdict", "rule", "paper", "needed", ...}` records the notebooks
  write under `"findings"`, with verdicts from `pdeinf.analysis.verdicts`.
- `describe_rollout_link`: the plain-words reading of the pooled vs within-class link.

Pure: xarray in, xarray / dicts out.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pdeinf.analysis.coherence import normalized_pi
from pdeinf.analysis.rollout_stats import rollout_link_statistics
from pdeinf.analysis.statistics import decisive_design, hierarchical_bootstrap, pearson_units
from pdeinf.analysis.verdicts import (
    DECISIVE_WORDS,
    PAPER_ROLLOUT_PEARSON,
    apply_rule,
    describe_rule,
    needed_for_rule,
)
from pdeinf.errors import InputError

#: Bootstrap settings of every headline interval in the follow-up notebooks.
N_RESAMPLES = 1000
RANDOM_STATE = 0


def _mean_over_units(da: xr.DataArray) -> xr.DataArray:
    return da.mean(("seed", "batch"))


def dynamics_intervals(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "none",
    n_resamples: int = N_RESAMPLES, random_state: int = RANDOM_STATE,
) -> xr.DataArray:
    """Mean diagonal, mean off-diagonal and off/diagonal ratio of Pi per checkpoint.

    Per (seed, epoch, batch) matrix: the mean of its N diagonal entries, the mean of its
    N(N-1) off-diagonal entries and their ratio (scale-free); each averaged over seeds x
    batches, with the two-stage bootstrap interval (`n_resamples`, `random_state`).
    Returns dims `(ci, quantity, epoch)`, quantity in ("diagonal", "off-diagonal", "ratio").
    """
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch="all")
    s, e, b, c, t = npi.shape[:5]
    n = c * t
    flat = npi.values.reshape(s, e, b, n, n)
    diag = np.trace(flat, axis1=-2, axis2=-1) / n
    off = (flat.sum(axis=(-2, -1)) - diag * n) / (n * (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = off / diag
    values = np.stack([diag, off, ratio], axis=-1)  # [S, E, B, 3]
    if not np.all(np.isfinite(values)):
        raise InputError(f"ds['pi'] (variant {variant!r}): a matrix has a zero diagonal mean")
    data = xr.DataArray(values, dims=("seed", "epoch", "batch", "quantity"),
                        coords={"seed": npi["seed"].values, "epoch": npi["epoch"].values,
                                "batch": npi["batch"].values,
                                "quantity": ["diagonal", "off-diagonal", "ratio"]})
    out = hierarchical_bootstrap(data, _mean_over_units, n_resamples=n_resamples,
                                 random_state=random_state, vectorized=True)
    out.attrs.update(variant=variant, normalization=normalization)
    return out.transpose("ci", "quantity", "epoch")


def spectrum_intervals(
    spec: xr.Dataset, *, n_resamples: int = N_RESAMPLES, random_state: int = RANDOM_STATE,
) -> xr.DataArray:
    """log10 condition number, effective rank and effective rank / rank of eta_hat per
    checkpoint (`coherence.spectrum` output), each a mean over seeds x batches with its
    bootstrap interval. A quantity with a non-finite value anywhere (an infinite condition
    number, no stored rank) is left out. Returns dims `(ci, quantity, epoch)`.
    """
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
    out = hierarchical_bootstrap(data.astype(np.float64), _mean_over_units,
                                 n_resamples=n_resamples, random_state=random_state,
                                 vectorized=True)
    return out.transpose("ci", "quantity", "epoch")


# --------------------------------------------------------------------------- rollout link


def rollout_statistics(
    link: xr.Dataset, *, n_resamples: int = N_RESAMPLES, n_permutations: int = N_RESAMPLES,
    random_state: int = RANDOM_STATE,
) -> tuple[xr.Dataset | None, str]:
    """`rollout_link_statistics` of a `coherence.rollout_link` result over the horizons whose
    errors are finite everywhere; `(None, reason)` when there are fewer than 3 (seed, batch)
    pairs per class (the smoke profile: 1 x 1), a constant or non-finite R, or no such dt."""
    for name in ("ratio", "rollout_error"):
        if not isinstance(link, xr.Dataset) or name not in link:
            raise InputError(f"link: expected coherence.rollout_link output with {name!r}")
    n_units = link.sizes["seed"] * link.sizes["batch"]
    if n_units < 3:
        return None, (f"{link.sizes['seed']} seed(s) x {link.sizes['batch']} batch(es): "
                      "intervals need at least 3 (seed, batch) pairs per class")
    if not np.all(np.isfinite(link["ratio"].values)):
        return None, "R is not finite for every (seed, class, batch)"
    error = link["rollout_error"]
    finite_dt = [dt for dt in error["dt"].values
                 if np.all(np.isfinite(error.sel(dt=dt).values))]
    if not finite_dt:
        return None, "no horizon has a finite rollout error for every (seed, class, batch)"
    stats = rollout_link_statistics(link["ratio"], error.sel(dt=finite_dt),
                                    n_resamples=n_resamples, n_permutations=n_permutations,
                                    random_state=random_state)
    return stats, ""


def correlation_units(ratio: xr.DataArray, error: xr.DataArray, *,
                      within_class: bool = False) -> xr.DataArray:
    """Per-(seed, batch) contributions to the Pearson r of R with the error at one dt.

    ratio, error: dims `(seed, class, batch)`. With population z-scores over all (seed, class,
    batch) (after subtracting each class's mean from both when `within_class`) and r their
    Pearson correlation, returns the mean over classes of the linearised contributions
    `r + z_R z_err - r (z_R^2 + z_err^2) / 2` (r plus Pearson's influence function), dims
    `(seed, batch)`: its mean over (seed, batch) is exactly the pooled (resp. within-class
    pooled) Pearson r, its spread r's delta-method sampling spread
    (`pdeinf.analysis.statistics.pearson_units`).
    """
    dims = ("seed", "class", "batch")
    for name, da in (("ratio", ratio), ("error", error)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(dims):
            raise InputError(f"{name}: expected an xr.DataArray with dims {dims}")
    x = ratio.transpose(*dims).astype(np.float64)
    y = error.transpose(*dims).astype(np.float64)
    if within_class:
        x = x - x.mean(("seed", "batch"))
        y = y - y.mean(("seed", "batch"))
    units = pearson_units(x, y)
    return units.assign_coords(seed=ratio["seed"].values, batch=ratio["batch"].values)


def needed_design(units: xr.DataArray, *, null: float = 0.0, verdict=None) -> dict:
    """`pdeinf.analysis.statistics.decisive_design` of the hierarchical mean of `units` (dims
    seed, batch) against `null`, given the measured verdict word (None: the plug-in decides at
    the measured design). Records use `needed_for_rule`, which takes the null from the rule."""
    decisive = None if verdict is None else str(verdict) in DECISIVE_WORDS
    return decisive_design(units, null=null, decisive=decisive)


def finding_record(
    name: str, estimate_ci, *, pde: str, model: str, n_seeds: int, n_batches: int,
    paper=None, needed=None, **extra,
) -> dict:
    """One finding as the notebooks write it under `results["findings"][name]`.

    estimate_ci: `(estimate, low, high)` (NaN where not measurable: verdict "inconclusive").
    The verdict and the rule text come from `pdeinf.analysis.verdicts.VERDICT_RULES[name]`.
    """
    est, low, high = (float("nan") if v is None else float(v) for v in estimate_ci)
    return {
        "pde": pde, "model": model, "estimate": est, "low": low, "high": high,
        "n_seeds": int(n_seeds), "n_batches": int(n_batches),
        "verdict": str(apply_rule(name, (est, low, high))), "rule": describe_rule(name),
        "paper": None if paper is None else float(paper), "needed": needed, **extra,
    }


def paper_rollout_pearson(pde: str, model: str, dt: int) -> float | None:
    """The follow-up's published Pearson r at horizon dt (None where it gives none)."""
    values = PAPER_ROLLOUT_PEARSON.get(f"{pde}-{model.lower()}")
    return values[dt - 1] if values is not None and 1 <= dt <= len(values) else None


def finding_dts(link: xr.Dataset, wanted=(1, 16)) -> list[int]:
    """The horizons the findings use: `wanted`, each capped at the longest dt of `link`."""
    longest = int(link["dt"].values.max())
    return sorted({min(int(dt), longest) for dt in wanted})


def rollout_findings(link: xr.Dataset, stats: xr.Dataset | None, *, pde: str, model: str,
                     dts=(1, 16)) -> dict[str, list[dict]]:
    """Records of `rollout_link_negative` (pooled Pearson) and `rollout_link_within_class`
    (Pearson after removing class means) at each dt of `finding_dts(link, dts)`. Without
    `stats` (design too small) the pooled estimate is `link["correlation"]` with no interval."""
    n_seeds, n_batches = link.sizes["seed"], link.sizes["batch"]
    out: dict[str, list[dict]] = {"rollout_link_negative": [], "rollout_link_within_class": []}
    for dt in finding_dts(link, dts):
        error = link["rollout_error"].sel(dt=dt)
        for name, quantity, within in (("rollout_link_negative", "pearson", False),
                                       ("rollout_link_within_class", "within_class_pooled", True)):
            units = None
            if stats is not None and dt in stats["dt"].values:
                ci = tuple(float(v) for v in stats[quantity].sel(dt=dt).values)
                units = correlation_units(link["ratio"], error, within_class=within)
            else:
                est = float(link["correlation"].sel(dt=dt)) if not within else math.nan
                ci = (est, math.nan, math.nan)
            paper = paper_rollout_pearson(pde, model, dt) if not within else None
            record = finding_record(name, ci, pde=pde, model=model, n_seeds=n_seeds,
                                    n_batches=n_batches, paper=paper, dt=int(dt))
            if units is not None:
                record["needed"] = needed_for_rule(name, units, estimate=ci[0],
                                                   verdict=record["verdict"])
            out[name].append(record)
    return out


def _interval(ci) -> str:
    est, low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{est:+.2f} (no interval)" if math.isfinite(est) else "undefined"
    return f"{est:+.2f} [{low:+.2f}, {high:+.2f}]"


def _side(ci) -> int:
    """-1 / +1 when the interval lies below / above 0, else 0."""
    _, low, high = ci
    if math.isfinite(high) and high < 0:
        return -1
    if math.isfinite(low) and low > 0:
        return 1
    return 0


def describe_rollout_link(stats: xr.Dataset, dt: int, *, paper: float | None = None) -> str:
    """One plain-words sentence on what the data support at horizon dt: the pooled Pearson and
    Spearman, the within-class link (pooled after removing class means, and per class), with
    intervals and permutation p-values, and whether the link is between or within classes."""
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
    pooled, within = _side(pick["pearson"]), _side(pick["within_class_pooled"])
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
