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
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise InputError(f"confidence: must lie strictly between 0 and 1, got {confidence!r}")
    grid_s = [int(s) for s in np.atleast_1d(n_seeds)]
    grid_b = [int(b) for b in np.atleast_1d(n_batches)]
    if not grid_s or not grid_b or min(grid_s) < 1 or min(grid_b) < 1:
        raise InputError("n_seeds, n_batches: need non-empty grids of positive integers")
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
