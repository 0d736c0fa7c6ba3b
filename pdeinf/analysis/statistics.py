"""Intervals over seeds and influence batches, and how many of each a finding needs.

The influence analyses are measured per (training seed, influence batch): seeds are independent
trainings, batches are nested inside a seed (the same trained model, different test
trajectories). Uncertainty therefore has two levels, and both are resampled here:

- `hierarchical_bootstrap`: two-stage (seed, then batch within seed) bootstrap of any statistic,
  percentile interval, with an extra `ci` dimension ("estimate", "low", "high").
- `variance_components`: the between-seed and between-batch (within-seed) variances of a value
  measured once per (seed, batch), from the balanced one-way random-effects ANOVA.
- `seeds_batches_needed`: from those components and the measured effect, the standard error
  `sqrt(s_seed^2 / S + s_batch^2 / (S * B))` of the hierarchical mean on a grid of (S, B), and
  whether the interval would exclude the null (normal approximation).
- `decisive_design`: the compact `needed` summary of a finding record: the smallest design
  (seeds x batches) whose plug-in interval would give a decisive verdict, or "decisive at the
  measured design", "beyond the grid", "not estimable" (`describe_needed` words it). Units for
  statistics that are not plain means: `pearson_units`, `spearman_units`, `ratio_units`;
  independent differences: `unit_components` + `independent_difference`.

Pure: xarray / numpy in, xarray / pandas out.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from pdeinf.analysis.seed_stats import (  # noqa: F401  (the seed-level inference, public here)
    fisher_z_interval,
    holm,
    seed_interval,
    seeds_needed,
    t_test_p,
    tost_p,
)
from pdeinf.errors import InputError

CI_LABELS = ("estimate", "low", "high")
#: Elements of one vectorised bootstrap chunk (float64: 16 Mi elements = 128 MiB).
_CHUNK_ELEMENTS = 1 << 24

Statistic = Callable[[xr.DataArray], "xr.DataArray | float"]


def _check_common(data, seed_dim: str, batch_dim: str, confidence: float) -> None:
    if not isinstance(data, xr.DataArray):
        raise InputError(f"data: expected an xr.DataArray, got {type(data).__name__}")
    if batch_dim not in data.dims:
        raise InputError(f"data: no batch dimension {batch_dim!r} (dims {data.dims})")
    if data.sizes[batch_dim] == 0:
        raise InputError(f"data: the batch dimension {batch_dim!r} is empty (0 batches)")
    if seed_dim is not None and seed_dim in data.dims and data.sizes[seed_dim] == 0:
        raise InputError(f"data: the seed dimension {seed_dim!r} is empty (0 seeds)")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise InputError(f"confidence: must lie strictly between 0 and 1, got {confidence!r}")
    values = np.asarray(data.values)
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(f"data: expected numbers, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise InputError("data: contains NaN or Inf; drop or fill the missing (seed, batch) "
                         "entries before bootstrapping")


def _as_dataarray(value, what: str) -> xr.DataArray:
    if isinstance(value, xr.DataArray):
        return value.astype(np.float64)
    try:
        return xr.DataArray(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise InputError(f"statistic: returned {type(value).__name__} for {what}; "
                         "expected an xr.DataArray or a float") from exc


def hierarchical_bootstrap(
    data: xr.DataArray,
    statistic: Statistic,
    *,
    seed_dim: str | None = "seed",
    batch_dim: str = "batch",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state: int = 0,
    vectorized: bool = False,
) -> xr.DataArray:
    """Two-stage bootstrap interval of `statistic(data)` over seeds and batches.

    Each replicate draws S seeds with replacement from the S seeds of `data`, then, for each
    drawn seed independently, B batches with replacement from that seed's B batches, and
    recomputes the statistic. The interval is the **percentile** interval of the replicates:
    the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles (linear interpolation).
    The "estimate" is the statistic of the original data, not the replicate mean.

    Read the interval with its level count in mind: resampling S seeds estimates the
    between-seed variance with the factor (S - 1) / S and a normal rather than a t tail, so with
    S = 3 the interval is too narrow (coverage well below the nominal level); resampling batches
    as well adds back roughly s_batch^2 / (S B), which is why both levels are resampled.

    data: dims include `batch_dim` and usually `seed_dim` (any other dims are carried along:
    lags, classes, times). Balanced: every seed has the same B batches; no NaN.
    Without `seed_dim` (absent from data, or None), or with one seed, only batches are resampled
    (attrs["resampled"] says so); the interval then ignores between-seed variation. For one
    value per seed (validation losses), pass `batch_dim="seed", seed_dim=None`.
    statistic: maps a DataArray shaped like `data` (seed and batch coordinates replaced by
    positions 0..S-1, 0..B-1) to a float or a DataArray (it may keep other dims, e.g. per lag).
    With `vectorized=True` it receives a leading `resample` dim and must keep it: it is then
    called on chunks of replicates instead of once per replicate (same draws, same result).
    random_state: seed of `numpy.random.default_rng`; the draws do not depend on `vectorized`.

    Returns the statistic's DataArray with a leading `ci` dim, coords ("estimate", "low",
    "high"); attrs `n_resamples`, `random_state`, `confidence`, `n_seeds`, `n_batches`,
    `method`, `resampled`, `n_nonfinite` (replicates where the statistic was NaN: they are
    left out of the quantiles).
    """
    _check_common(data, seed_dim, batch_dim, confidence)
    if not (isinstance(n_resamples, (int, np.integer)) and n_resamples >= 1):
        raise InputError(f"n_resamples: must be a positive integer, got {n_resamples!r}")
    if not isinstance(random_state, (int, np.integer)):
        raise InputError(f"random_state: must be an integer seed, got {random_state!r}")
    if not callable(statistic):
        raise InputError("statistic: must be callable (DataArray -> DataArray or float)")

    has_seed = seed_dim is not None and seed_dim in data.dims
    n_seeds = data.sizes[seed_dim] if has_seed else 1
    n_batches = data.sizes[batch_dim]
    lead = (seed_dim, batch_dim) if has_seed else (batch_dim,)
    ordered = data.transpose(*lead, ...)
    arr = np.asarray(ordered.values, dtype=np.float64)
    if not has_seed:
        arr = arr[None]
    rest_dims = ordered.dims[len(lead):]
    coords = {k: v for k, v in ordered.coords.items() if not set(v.dims) & {seed_dim, batch_dim}}
    lead_coords = {batch_dim: np.arange(n_batches)}
    if has_seed:
        lead_coords[seed_dim] = np.arange(n_seeds)

    def wrap(values: np.ndarray, resample: bool) -> xr.DataArray:
        if not has_seed:
            values = values[:, 0] if resample else values[0]
        dims = (("resample",) if resample else ()) + lead + rest_dims
        return xr.DataArray(values, dims=dims, coords={**coords, **lead_coords})

    estimate = _as_dataarray(statistic(wrap(arr, False)), "the original data")

    rng = np.random.default_rng(int(random_state))
    if n_seeds > 1:
        seed_idx = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    else:
        seed_idx = np.zeros((n_resamples, 1), dtype=np.int64)
    batch_idx = rng.integers(0, n_batches, size=(n_resamples, n_seeds, n_batches))

    boot = _replicates(statistic, wrap, arr, seed_idx, batch_idx, estimate, vectorized)
    low, high, n_nonfinite = _percentile_interval(boot, confidence)
    ci = np.stack([estimate.values, low, high], axis=0)
    resampled = ("seeds, then batches within each drawn seed" if n_seeds > 1 else
                 "batches only (one seed: between-seed variation is not in the interval)")
    return xr.DataArray(
        ci,
        dims=("ci", *estimate.dims),
        coords={**estimate.coords, "ci": list(CI_LABELS)},
        name=estimate.name,
        attrs={
            "n_resamples": int(n_resamples),
            "random_state": int(random_state),
            "confidence": float(confidence),
            "n_seeds": int(n_seeds),
            "n_batches": int(n_batches),
            "method": "percentile",
            "resampled": resampled,
            "n_nonfinite": n_nonfinite,
        },
    )


def _replicates(statistic, wrap, arr, seed_idx, batch_idx, estimate, vectorized) -> np.ndarray:
    """The statistic of every resample `[n_resamples, *estimate.shape]` (draws given)."""
    replicates = []
    if vectorized:
        chunk = max(1, _CHUNK_ELEMENTS // max(arr.size, 1))
        for start in range(0, len(seed_idx), chunk):
            si, bi = seed_idx[start:start + chunk], batch_idx[start:start + chunk]
            out = _as_dataarray(statistic(wrap(arr[si[:, :, None], bi], True)), "a chunk")
            if "resample" not in out.dims or out.sizes["resample"] != len(si):
                raise InputError("statistic: with vectorized=True it must keep the leading "
                                 f"'resample' dim (got dims {out.dims})")
            replicates.append(out.transpose("resample", *estimate.dims).values)
    else:
        for r in range(len(seed_idx)):
            out = _as_dataarray(statistic(wrap(arr[seed_idx[r][:, None], batch_idx[r]], False)),
                                "a replicate")
            replicates.append(out.transpose(*estimate.dims).values[None])
    boot = np.concatenate(replicates, axis=0)
    if boot.shape[1:] != estimate.shape:
        raise InputError(f"statistic: replicates have shape {boot.shape[1:]}, the original "
                         f"data gives {estimate.shape}; it must not depend on the resample")
    return boot


def _percentile_interval(boot: np.ndarray, confidence: float):
    """`(low, high, n_nonfinite)`: percentile interval over the replicates (axis 0); replicates
    where the statistic is NaN are left out and counted."""
    alpha = (1.0 - confidence) / 2.0
    finite = np.isfinite(boot)
    n_nonfinite = int((~finite).any(axis=tuple(range(1, boot.ndim))).sum()) if boot.ndim > 1 \
        else int((~finite).sum())
    with np.errstate(all="ignore"):
        if finite.all():
            low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
                low, high = np.nanquantile(boot, [alpha, 1.0 - alpha], axis=0)
    return low, high, n_nonfinite


# --------------------------------------------------------------------------- power


def _unit_values(data: xr.DataArray, statistic, seed_dim: str, batch_dim: str) -> np.ndarray:
    """The per-(seed, batch) values `[S, B]` the power analysis works on."""
    if not isinstance(data, xr.DataArray):
        raise InputError(f"data: expected an xr.DataArray, got {type(data).__name__}")
    for dim in (seed_dim, batch_dim):
        if dim not in data.dims:
            raise InputError(f"data: no {dim!r} dimension (dims {data.dims})")
    values = data if statistic is None else statistic(data)
    if not isinstance(values, xr.DataArray) or set(values.dims) != {seed_dim, batch_dim}:
        got = values.dims if isinstance(values, xr.DataArray) else type(values).__name__
        raise InputError(f"statistic: must reduce data to one value per ({seed_dim}, "
                         f"{batch_dim}) (dims exactly those two); got {got}")
    arr = np.asarray(values.transpose(seed_dim, batch_dim).values, dtype=np.float64)
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"data: variance components need at least 2 seeds and 2 batches, "
                         f"got {arr.shape[0]} x {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise InputError("data: the per-(seed, batch) values contain NaN or Inf")
    return arr


def variance_components(
    data: xr.DataArray, statistic: Callable[[xr.DataArray], xr.DataArray] | None = None, *,
    seed_dim: str = "seed", batch_dim: str = "batch",
) -> dict:
    """Mean and variance components of a value measured once per (seed, batch).

    Balanced one-way random-effects ANOVA (method of moments): with S seeds x B batches,
    `s_batch^2 = MS_within` (pooled within-seed variance, ddof 1) and
    `s_seed^2 = max(0, (MS_between - MS_within) / B)` where `MS_between = B * var(seed means)`.
    data: dims `(seed, batch)`, or any dims that `statistic` reduces to exactly those two.
    Returns {"mean", "s_seed", "s_batch", "n_seeds", "n_batches"} (standard deviations).
    """
    arr = _unit_values(data, statistic, seed_dim, batch_dim)
    n_seeds, n_batches = arr.shape
    ms_within = float(np.mean(np.var(arr, axis=1, ddof=1)))
    ms_between = float(n_batches * np.var(arr.mean(axis=1), ddof=1))
    var_seed = max(0.0, (ms_between - ms_within) / n_batches)
    return {"mean": float(arr.mean()), "s_seed": math.sqrt(var_seed),
            "s_batch": math.sqrt(ms_within), "n_seeds": n_seeds, "n_batches": n_batches}


def _design_grid(n_seeds, n_batches, confidence) -> tuple[list[int], list[int]]:
    """The (seeds, batches) grids of a power analysis as int lists; InputError on an empty or
    non-positive grid or a confidence outside (0, 1)."""
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise InputError(f"confidence: must lie strictly between 0 and 1, got {confidence!r}")
    grid_s = [int(s) for s in np.atleast_1d(n_seeds)]
    grid_b = [int(b) for b in np.atleast_1d(n_batches)]
    if not grid_s or not grid_b or min(grid_s) < 1 or min(grid_b) < 1:
        raise InputError("n_seeds, n_batches: need non-empty grids of positive integers")
    return grid_s, grid_b


def seeds_batches_needed(
    data: xr.DataArray,
    statistic: Callable[[xr.DataArray], xr.DataArray] | None = None,
    *,
    null: float = 0.0,
    n_seeds=(2, 3, 4, 5, 6, 8, 10, 15, 20),
    n_batches=(1, 2, 3, 6, 12, 18, 36),
    confidence: float = 0.95,
    seed_dim: str = "seed",
    batch_dim: str = "batch",
) -> pd.DataFrame:
    """How many seeds x batches the interval of the hierarchical mean needs to exclude `null`.

    From the measured effect `d = mean - null` and the variance components of
    `variance_components`, for each (S, B) on the grid: standard error
    `se = sqrt(s_seed^2 / S + s_batch^2 / (S B))`, half-width `z se` with
    `z = Phi^-1((1 + confidence) / 2)`, `excludes_null = |d| > z se`, and the power of the
    two-sided test if the true effect were `d`: `Phi(|d|/se - z) + Phi(-|d|/se - z)`.
    Normal approximation with plug-in components: optimistic for few seeds (a t quantile with
    S - 1 degrees of freedom would be wider) and blind to the uncertainty of `d` itself.

    Returns a DataFrame with columns n_seeds, n_batches, n_runs (S B), std_error, half_width,
    excludes_null, power; `df.attrs` holds effect, null, s_seed, s_batch, confidence and the
    measured design (n_seeds_measured, n_batches_measured).
    """
    grid_s, grid_b = _design_grid(n_seeds, n_batches, confidence)
    comp = variance_components(data, statistic, seed_dim=seed_dim, batch_dim=batch_dim)
    effect = comp["mean"] - float(null)
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    rows = []
    for s in grid_s:
        for b in grid_b:
            se = math.sqrt(comp["s_seed"] ** 2 / s + comp["s_batch"] ** 2 / (s * b))
            if se == 0.0:
                power, excludes = (1.0, True) if effect != 0 else (0.0, False)
            else:
                snr = abs(effect) / se
                power = float(stats.norm.cdf(snr - z) + stats.norm.cdf(-snr - z))
                excludes = bool(abs(effect) > z * se)
            rows.append((s, b, s * b, se, z * se, excludes, power))
    table = pd.DataFrame(rows, columns=["n_seeds", "n_batches", "n_runs", "std_error",
                                        "half_width", "excludes_null", "power"])
    table.attrs = {"effect": effect, "null": float(null), "mean": comp["mean"],
                   "s_seed": comp["s_seed"], "s_batch": comp["s_batch"],
                   "confidence": float(confidence),
                   "n_seeds_measured": comp["n_seeds"], "n_batches_measured": comp["n_batches"]}
    return table


# --------------------------------------------------------------------------- decisive design

#: The designs the power analysis of a finding searches: seeds x batches per seed.
DESIGN_SEEDS = (2, 3, 4, 5, 6, 8, 10, 15, 20)
DESIGN_BATCHES = (1, 2, 3, 6, 12, 18, 36)

#: `decisive_design` statuses.
DECISIVE_AS_MEASURED = "decisive at the measured design"
LARGER_DESIGN = "larger design"
BEYOND_GRID = "beyond the grid"
NOT_ESTIMABLE = "not estimable"
NEEDED_STATUSES = (DECISIVE_AS_MEASURED, LARGER_DESIGN, BEYOND_GRID, NOT_ESTIMABLE)


class _NotEstimable(Exception):
    """Internal: the measured design gives no spread to project (one seed, a NaN value)."""


def unit_components(
    units: xr.DataArray, *, seed_dim: str = "seed", batch_dim: str = "batch",
    n_batches: int | None = None,
) -> dict:
    """Mean and spread components of a value measured once per (seed, batch), or once per seed.

    dims (seed, batch) with at least 2 batches: `variance_components` (s_seed, s_batch).
    dims (seed,), or (seed, batch) with one batch: the two levels cannot be separated, so the
    whole spread of the per-seed values (std, ddof 1) is counted as between-seed: `s_seed` is
    that std, `s_batch` is None and only seeds vary in `decisive_design` (conservative: more
    batches are assumed not to help). `n_batches` then states how many batches stand behind
    each per-seed value (default: the batch dim's size, or 1).
    Returns {"mean", "s_seed", "s_batch", "n_seeds", "n_batches"}; InputError for other dims,
    fewer than 2 seeds or a non-finite value.
    """
    if not isinstance(units, xr.DataArray):
        raise InputError(f"units: expected an xr.DataArray, got {type(units).__name__}")
    if seed_dim not in units.dims or not set(units.dims) <= {seed_dim, batch_dim}:
        raise InputError(f"units: dims must be ({seed_dim}, {batch_dim}) or ({seed_dim},), got "
                         f"{units.dims}")
    if units.sizes[seed_dim] < 2:
        raise InputError(f"units: at least 2 seeds are needed, got {units.sizes[seed_dim]}")
    if not np.all(np.isfinite(np.asarray(units.values, dtype=np.float64))):
        raise InputError("units: the per-(seed, batch) values contain NaN or Inf")
    if batch_dim in units.dims and units.sizes[batch_dim] >= 2:
        return variance_components(units, seed_dim=seed_dim, batch_dim=batch_dim)
    per_seed = units.mean(batch_dim) if batch_dim in units.dims else units
    per_seed = np.asarray(per_seed.values, dtype=np.float64)
    measured = units.sizes.get(batch_dim, 1) if n_batches is None else int(n_batches)
    return {"mean": float(per_seed.mean()), "s_seed": float(np.std(per_seed, ddof=1)),
            "s_batch": None, "n_seeds": int(per_seed.size), "n_batches": int(measured)}


def independent_difference(a: dict, b: dict) -> dict:
    """Components of `mean(a) - mean(b)` for two independent data sets measured on the same
    design (two PDEs, two independently bootstrapped models): the variances add level by level.
    If either side has one batch (s_batch None), both are reduced to per-seed spreads
    (`s_seed^2 + s_batch^2 / B`) and only seeds vary. The measured design is the smaller one."""
    n_seeds = min(int(a["n_seeds"]), int(b["n_seeds"]))
    n_batches = min(int(a["n_batches"]), int(b["n_batches"]))
    if a["s_batch"] is None or b["s_batch"] is None:
        var = sum(c["s_seed"] ** 2 + (0.0 if c["s_batch"] is None else
                                      c["s_batch"] ** 2 / int(c["n_batches"])) for c in (a, b))
        return {"mean": a["mean"] - b["mean"], "s_seed": math.sqrt(var), "s_batch": None,
                "n_seeds": n_seeds, "n_batches": n_batches}
    return {"mean": a["mean"] - b["mean"],
            "s_seed": math.sqrt(a["s_seed"] ** 2 + b["s_seed"] ** 2),
            "s_batch": math.sqrt(a["s_batch"] ** 2 + b["s_batch"] ** 2),
            "n_seeds": n_seeds, "n_batches": n_batches}


def pearson_units(x: xr.DataArray, y: xr.DataArray, *, seed_dim: str = "seed",
                  batch_dim: str = "batch") -> xr.DataArray:
    """Per-(seed, batch) contributions to the Pearson r of x with y pooled over all entries.

    x, y: the same dims, including `seed_dim` and `batch_dim` (any others, e.g. classes or
    pairs, are pooled). With population z-scores over all entries and r their correlation,
    each entry contributes `r + z_x z_y - r (z_x^2 + z_y^2) / 2` (r plus Pearson's influence
    function); returns their mean over the other dims, dims (seed, batch): its mean is exactly
    r, its spread r's first-order (delta-method) sampling spread, clustered by (seed, batch).
    A constant x or y gives NaN.
    """
    for name, da in (("x", x), ("y", y)):
        if not isinstance(da, xr.DataArray) or not {seed_dim, batch_dim} <= set(da.dims):
            raise InputError(f"{name}: expected an xr.DataArray with dims {seed_dim}, {batch_dim}")
    if set(x.dims) != set(y.dims):
        raise InputError(f"x, y: dims differ ({x.dims} vs {y.dims})")
    order = (seed_dim, batch_dim, *[d for d in x.dims if d not in (seed_dim, batch_dim)])
    xv = np.asarray(x.transpose(*order).values, dtype=np.float64)
    yv = np.asarray(y.transpose(*order).values, dtype=np.float64)
    if xv.shape != yv.shape:
        raise InputError(f"x, y: shapes differ ({xv.shape} vs {yv.shape})")
    with np.errstate(divide="ignore", invalid="ignore"):
        zx = (xv - xv.mean()) / xv.std()
        zy = (yv - yv.mean()) / yv.std()
    r = float(np.mean(zx * zy))
    contribution = r + zx * zy - 0.5 * r * (zx * zx + zy * zy)
    per_unit = contribution.reshape(*contribution.shape[:2], -1).mean(axis=-1)
    coords = {d: x[d].values for d in (seed_dim, batch_dim) if d in x.coords}
    return xr.DataArray(per_unit, dims=(seed_dim, batch_dim), coords=coords)


def spearman_units(x: xr.DataArray, y: xr.DataArray, *, seed_dim: str = "seed",
                   batch_dim: str = "batch") -> xr.DataArray:
    """`pearson_units` of the pooled average ranks of x and y: per-(seed, batch) contributions
    whose mean is exactly the pooled Spearman correlation (the ranks are held fixed: their own
    sampling variation is ignored, a first-order approximation)."""
    from scipy.stats import rankdata

    def ranked(da):
        return da.copy(data=rankdata(np.asarray(da.values, dtype=np.float64).ravel())
                       .reshape(da.shape))

    return pearson_units(ranked(x), ranked(y), seed_dim=seed_dim, batch_dim=batch_dim)


def ratio_units(numerator: xr.DataArray, denominator: xr.DataArray) -> xr.DataArray:
    """Linearised per-unit contributions to the ratio of means `mean(n) / mean(d)`:
    `r + (n - r d) / mean(d)`, whose mean is exactly r (delta method). Same dims as the inputs."""
    r = float(numerator.mean()) / float(denominator.mean())
    return r + (numerator - r * denominator) / float(denominator.mean())


def _clears(effect: float, band_gap: float | None, se: float, z: float) -> list[str]:
    """Which boundaries a plug-in interval `estimate +- z se` clears."""
    out = []
    if abs(effect) > z * se:
        out.append("null")
    if band_gap is not None and band_gap > z * se:
        out.append("paper band")
    return out


def decisive_design(
    data,
    *,
    estimate: float | None = None,
    null: float = 0.0,
    band: tuple[float, float] | None = None,
    decisive: bool | None = None,
    n_batches_measured: int | None = None,
    n_seeds=DESIGN_SEEDS,
    n_batches=DESIGN_BATCHES,
    confidence: float = 0.95,
    seed_dim: str = "seed",
    batch_dim: str = "batch",
) -> dict:
    """How many seeds x batches the measured effect and spread need for a decisive verdict.

    data: the per-(seed, batch) values the interval was computed from (or per-seed values;
    see `unit_components`), or their components (a dict as `unit_components` /
    `independent_difference` return). estimate: the finding's statistic (default: the units'
    mean); effect = estimate - null. For statistics that are not a plain mean of the units
    (medians, correlations, ratios) pass linearised units (`pearson_units`, `spearman_units`,
    `ratio_units`) or the closest per-unit values: the projection is then approximate.

    Plug-in normal approximation as in `seeds_batches_needed`: at S seeds x B batches the
    interval is `estimate +- z se`, `se = sqrt(s_seed^2 / S + s_batch^2 / (S B))` (only seeds
    vary when s_batch is None: `se = s_seed / sqrt(S)` at the measured B). A design is decisive
    when that interval clears the null, or, with `band` = (low, high) (a "value" rule: the
    paper's number +- tolerance), misses the band (contradicted); so for value rules the
    decisive design is the smaller of "excludes the null" and "excludes the paper value".

    decisive: whether the measured verdict (the bootstrap interval's) is decisive. True:
    status "decisive at the measured design". False: only designs with at least the measured
    seeds and batches, other than the measured one, are searched (a subset of an inconclusive
    design is never reported as enough). None: the plug-in decides at the measured design.
    The search takes the fewest runs S x B, then the fewest seeds, among the grid (`n_seeds` x
    `n_batches`, plus the measured values). n_batches_measured: with per-seed values (only
    seeds vary), the number of batches behind each value, reported as the design's batches.

    Returns {"effect", "s_seed", "s_batch", "n_seeds", "n_batches", "status", "criterion"}:
    status is one of NEEDED_STATUSES; n_seeds / n_batches are the measured design (decisive),
    the smallest sufficient design (larger design) or None (beyond the grid: "largest" holds
    the grid's largest [S, B]; not estimable: "reason" says why: fewer than 2 seeds, NaN);
    criterion is which boundaries the plug-in interval clears at that design ("null", "paper
    band", "null, paper band") or None.
    """
    grid_s, grid_b = _design_grid(n_seeds, n_batches, confidence)
    if band is not None:
        band = (float(band[0]), float(band[1]))
        if not (math.isfinite(band[0]) and math.isfinite(band[1]) and band[0] <= band[1]):
            raise InputError(f"band: expected finite (low, high) with low <= high, got {band}")
    try:
        comp = _components(data, seed_dim, batch_dim, n_batches_measured)
    except _NotEstimable as why:
        return _not_estimable(estimate, null, decisive, data, seed_dim, batch_dim, str(why))
    est = comp["mean"] if estimate is None else float(estimate)
    if not math.isfinite(est):
        return _not_estimable(None, null, decisive, data, seed_dim, batch_dim,
                              "the statistic is undefined")
    effect = est - float(null)
    band_gap = None if band is None else max(band[0] - est, est - band[1], 0.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    s_seed, s_batch = comp["s_seed"], comp["s_batch"]
    seeds_only = s_batch is None

    def se(s: int, b: int) -> float:
        return s_seed / math.sqrt(s) if seeds_only else \
            math.sqrt(s_seed ** 2 / s + s_batch ** 2 / (s * b))

    out = {"effect": effect, "s_seed": s_seed, "s_batch": s_batch}
    m_s, m_b = int(comp["n_seeds"]), int(comp["n_batches"])
    at_measured = _clears(effect, band_gap, se(m_s, m_b), z)
    if decisive or (decisive is None and at_measured):
        return {**out, "n_seeds": m_s, "n_batches": m_b, "status": DECISIVE_AS_MEASURED,
                "criterion": ", ".join(at_measured) or None}
    seeds = sorted({s for s in grid_s if s >= m_s} | {m_s})
    batches = [m_b] if seeds_only else sorted({b for b in grid_b if b >= m_b} | {m_b})
    designs = sorted(((s, b) for s in seeds for b in batches if (s, b) != (m_s, m_b)),
                     key=lambda d: (d[0] * d[1], d[0]))
    for s, b in designs:
        cleared = _clears(effect, band_gap, se(s, b), z)
        if cleared:
            return {**out, "n_seeds": s, "n_batches": b, "status": LARGER_DESIGN,
                    "criterion": ", ".join(cleared)}
    return {**out, "n_seeds": None, "n_batches": None, "status": BEYOND_GRID,
            "criterion": None, "largest": [max(seeds), max(batches)]}


def _components(data, seed_dim, batch_dim, n_batches_measured) -> dict:
    if isinstance(data, dict):
        missing = [k for k in ("mean", "s_seed", "s_batch", "n_seeds", "n_batches")
                   if k not in data]
        if missing:
            raise InputError(f"data: components lack {missing}")
        if int(data["n_seeds"]) < 2:
            raise _NotEstimable(_seeds_reason(int(data["n_seeds"])))
        values = [data["mean"], data["s_seed"]] + ([] if data["s_batch"] is None
                                                   else [data["s_batch"]])
        if not all(math.isfinite(float(v)) for v in values):
            raise _NotEstimable("a non-finite value")
        comp = dict(data)
        if n_batches_measured is not None and comp["s_batch"] is None:
            comp["n_batches"] = int(n_batches_measured)
        return comp
    if not isinstance(data, xr.DataArray):
        raise InputError(f"data: expected an xr.DataArray of units or a components dict, got "
                         f"{type(data).__name__}")
    if seed_dim in data.dims and data.sizes[seed_dim] < 2:
        raise _NotEstimable(_seeds_reason(data.sizes[seed_dim]))
    if not np.all(np.isfinite(np.asarray(data.values, dtype=np.float64))):
        raise _NotEstimable("a per-(seed, batch) value is NaN or Inf")
    return unit_components(data, seed_dim=seed_dim, batch_dim=batch_dim,
                           n_batches=n_batches_measured)


def _seeds_reason(n_seeds: int) -> str:
    return f"{n_seeds} seed{'' if n_seeds == 1 else 's'}: no between-seed spread"


def _not_estimable(estimate, null, decisive, data, seed_dim, batch_dim, reason) -> dict:
    effect = None
    if estimate is not None and math.isfinite(float(estimate)):
        effect = float(estimate) - float(null)
    out = {"effect": effect, "s_seed": None, "s_batch": None, "n_seeds": None,
           "n_batches": None, "criterion": None}
    if decisive:  # the measured verdict is decisive all the same
        if isinstance(data, dict):
            design = int(data.get("n_seeds", 1)), int(data.get("n_batches", 1))
        else:
            design = int(data.sizes.get(seed_dim, 1)), int(data.sizes.get(batch_dim, 1))
        return {**out, "n_seeds": design[0], "n_batches": design[1],
                "status": DECISIVE_AS_MEASURED}
    return {**out, "status": NOT_ESTIMABLE, "reason": reason}


def describe_needed(needed) -> str:
    """The `decisive_design` summary in a few words (README table, notebook lines): "8 x 3",
    "decisive at 3 x 3 (as measured)", "beyond the grid (> 20 x 36)", "not estimable (...)";
    "–" for None. Older summaries without a status read as S x B or beyond the grid."""
    if not needed:
        return "–"
    status = needed.get("status")
    design = f"{needed.get('n_seeds')} x {needed.get('n_batches')}"
    if status == DECISIVE_AS_MEASURED:
        return f"decisive at {design} (as measured)"
    if status == NOT_ESTIMABLE:
        return f"not estimable ({needed.get('reason') or 'no spread'})"
    if status == BEYOND_GRID or needed.get("n_seeds") is None:
        largest = needed.get("largest")
        return "beyond the grid" + (f" (> {largest[0]} x {largest[1]})" if largest else "")
    return design
