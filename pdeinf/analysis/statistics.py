"""Inference over training seeds, the unit of replication of every headline number:
t-intervals of seed means (S - 1 df; batches are nested in a seed, so this covers whatever the
split of the variance), equivalence tests, Holm's adjustment, the power of a seeds design and
correlations averaged on Fisher's z scale.

Values are `[seeds, batches]` arrays with NaN for a failed unit: counted, never dropped
silently; a statistic is not estimable (NaN) above `MAX_FAILED_SHARE` failed units or with
fewer than 2 seeds with a value.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import integrate, stats

from pdeinf.errors import InputError

MAX_FAILED_SHARE = 0.025  # above this share of failed units: not estimable
#: Power and the confidence of the upper bound on the seed variance used by `seeds_needed`.
POWER = 0.80
VARIANCE_BOUND_LEVEL = 0.80
MAX_SEEDS = 200  # the largest design `seeds_needed` searches
CI_LABELS = ("estimate", "low", "high")


def as_seed_batch(values, what: str = "values") -> np.ndarray:
    """`values` as a float64 `[seeds, batches]` array (1-D: one batch per seed); InputError
    for another shape, an empty array or +-Inf (mark a failed unit with NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{what}: expected shape [seeds, batches] (or [seeds]), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what}: empty ({arr.shape[0]} seeds x {arr.shape[1]} batches)")
    if np.isinf(arr).any():
        raise InputError(f"{what}: contains +-Inf; mark a failed unit with NaN")
    return arr


@dataclass(frozen=True)
class SeedSummary:
    """seed_means: [S] mean over each seed's non-missing batches (NaN where it has none);
    n_units: S x B; n_failed: NaN units; design: (S, B)."""

    seed_means: np.ndarray
    n_units: int
    n_failed: int
    design: tuple[int, int]

    @property
    def failed_share(self) -> float:
        return self.n_failed / self.n_units

    @property
    def usable(self) -> np.ndarray:  # the finite seed means
        return self.seed_means[np.isfinite(self.seed_means)]


def summarize_seeds(values, what: str = "values") -> SeedSummary:
    """`SeedSummary` of `values` ([seeds, batches], NaN = failed unit)."""
    arr = as_seed_batch(values, what)
    finite = np.isfinite(arr)
    counts = finite.sum(axis=1)
    means = np.where(counts > 0, np.where(finite, arr, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)
    return SeedSummary(means, int(arr.size), int((~finite).sum()), tuple(arr.shape))


def _t_parts(values) -> tuple[float, float, int]:
    """Mean, standard error and df of the finite seed means; df 0 where not estimable."""
    summary = summarize_seeds(values)
    means = summary.usable
    if means.size < 2 or summary.failed_share > MAX_FAILED_SHARE:
        return (float(means.mean()) if means.size else math.nan), math.nan, 0
    return float(means.mean()), float(means.std(ddof=1) / math.sqrt(means.size)), means.size - 1


def _check_level(level: float, what: str = "level") -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise InputError(f"{what}: must lie strictly between 0 and 1, got {level!r}")
    return float(level)


def seed_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): the mean of the seed means of `values` ([seeds, batches] or
    [seeds]) and its t-interval; NaN bounds when not estimable, zero width for a zero spread."""
    level = _check_level(level)
    est, se, df = _t_parts(values)
    if df < 1:
        return est, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2.0, df)) * se
    return est, est - half, est + half


def t_test_p(values, null: float = 0.0) -> float:
    """Two-sided p of the one-sample t-test of the seed means against `null` (NaN when not
    estimable; 0 or 1 for equal seed means)."""
    est, se, df = _t_parts(values)
    if df < 1 or not math.isfinite(est):
        return math.nan
    if se == 0.0:
        return 1.0 if est == null else 0.0
    return float(2.0 * stats.t.sf(abs(est - null) / se, df))


def tost_p(values, low: float, high: float) -> float:
    """p-value of the two one-sided t-tests that the seed mean lies inside (low, high): the
    larger of those of H0: mean <= low and H0: mean >= high; NaN when not estimable."""
    if not low < high:
        raise InputError(f"band: expected low < high, got ({low}, {high})")
    est, se, df = _t_parts(values)
    if df < 1 or not math.isfinite(est):
        return math.nan
    if se == 0.0:
        return 0.0 if low < est < high else 1.0
    return float(max(stats.t.sf((est - low) / se, df), stats.t.cdf((est - high) / se, df)))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in input order; NaN stays NaN, outside the family."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise InputError("pvalues: must lie in [0, 1]")
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def _power(effect: float, sd: float, n_seeds: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test at S seeds, E_V[Phi(nc - c sqrt(V / df)) +
    Phi(-nc - c sqrt(V / df))], V ~ chi2(df) (stable for any noncentrality, unlike nct)."""
    df = n_seeds - 1
    crit = stats.t.ppf(1.0 - alpha / 2.0, df)
    nc = effect * math.sqrt(n_seeds) / sd

    def integrand(v: float) -> float:
        scale = crit * math.sqrt(v / df)
        return (stats.norm.cdf(nc - scale) + stats.norm.cdf(-nc - scale)) * stats.chi2.pdf(v, df)

    lo, hi = stats.chi2.ppf([1e-12, 1.0 - 1e-12], df)
    value, _ = integrate.quad(integrand, lo, hi, limit=200)
    return float(min(1.0, max(0.0, value)))


def seed_sd_upper(values, bound_level: float = VARIANCE_BOUND_LEVEL) -> float:
    """Upper `bound_level` confidence bound (chi-square, S - 1 df) on the standard deviation of
    the seed means; NaN with fewer than 2 seeds."""
    means = summarize_seeds(values).usable
    if means.size < 2:
        return math.nan
    df = means.size - 1
    return math.sqrt(df * means.var(ddof=1) / stats.chi2.ppf(1.0 - bound_level, df))


def seeds_needed(values, effect: float, *, level: float = 0.95, power: float = POWER,
                 bound_level: float = VARIANCE_BOUND_LEVEL) -> int | None:
    """The fewest seeds (at the measured batches per seed) whose two-sided t-test at
    `1 - level` rejects a true `effect` with probability `power`, the seed-mean spread taken at
    its upper `bound_level` confidence bound; 2 for a zero spread, None for a zero or
    non-finite effect or beyond `MAX_SEEDS`."""
    level, power = _check_level(level), _check_level(power, "power")
    sd = seed_sd_upper(values, bound_level)
    if not (math.isfinite(effect) and effect != 0.0 and math.isfinite(sd)):
        return None
    if sd == 0.0:
        return 2
    if _power(abs(effect), sd, MAX_SEEDS, 1.0 - level) < power:
        return None
    # the power grows with the number of seeds: the first n in 2..MAX_SEEDS reaching it
    return 2 + bisect.bisect_left(range(2, MAX_SEEDS), True,
                                  key=lambda n: _power(abs(effect), sd, n, 1.0 - level) >= power)


def fisher_z(r):
    """Fisher's z = atanh(r), |r| = 1 clipped to 1 - 1e-12 (finite for a perfect correlation)."""
    return np.arctanh(np.clip(r, -1.0 + 1e-12, 1.0 - 1e-12))


def fisher_z_interval(correlations, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of a correlation measured per seed ([seeds] or [seeds, batches]):
    the `seed_interval` of its `fisher_z`, transformed back with tanh."""
    r = as_seed_batch(correlations, "correlations")
    if np.any(np.abs(r[np.isfinite(r)]) > 1.0):
        raise InputError("correlations: a value lies outside [-1, 1]")
    return tuple(float(np.tanh(v)) for v in seed_interval(fisher_z(r), level))


def interval_text(ci, fmt: str = "+.2f") -> str:
    """`estimate [low, high]` of `ci` (those three numbers, or a DataArray along `ci`) in format
    `fmt`; where a bound is not finite "estimate (no interval)" ("undefined" without an
    estimate)."""
    est, low, high = (float(v) for v in np.asarray(ci, dtype=np.float64))
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{est:{fmt}} (no interval)" if math.isfinite(est) else "undefined"
    return f"{est:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def interval_side(low: float, high: float) -> int:
    """-1 / +1 when the interval (low, high) lies wholly below / above 0, else 0."""
    return -1 if math.isfinite(high) and high < 0 else int(math.isfinite(low) and low > 0)


def seed_mean_ci(data: xr.DataArray, *, seed_dim: str = "seed", batch_dim: str | None = "batch",
                 confidence: float = 0.95) -> xr.DataArray:
    """`seed_interval` for every cell of the other dims of `data` (dims `seed_dim` and
    `batch_dim` unless None or absent): a leading `ci` dim (`CI_LABELS`); attrs `n_seeds`,
    `n_batches`, `confidence`, `method`."""
    if not isinstance(data, xr.DataArray) or seed_dim not in data.dims:
        raise InputError(f"data: expected an xr.DataArray with a {seed_dim!r} dim")
    confidence = _check_level(confidence, "confidence")
    units = [seed_dim] + ([batch_dim] if batch_dim is not None and batch_dim in data.dims else [])
    rest = [d for d in data.dims if d not in units]
    n_batches = data.sizes[units[1]] if len(units) > 1 else 1
    arr = np.asarray(data.transpose(*rest, *units).values, dtype=np.float64)
    arr = arr.reshape(-1, data.sizes[seed_dim], n_batches)
    cells = np.array([seed_interval(a, confidence) for a in arr])  # [cells, 3]
    out = cells.T.reshape(3, *[data.sizes[d] for d in rest])
    coords = {d: data[d].values for d in rest if d in data.coords}
    return xr.DataArray(out, dims=("ci", *rest), coords={"ci": list(CI_LABELS), **coords},
                        attrs={"n_seeds": int(data.sizes[seed_dim]), "n_batches": int(n_batches),
                               "confidence": confidence,
                               "method": "t-interval over seed means (S - 1 df)"})


def seed_spread(data: xr.DataArray, *, seed_dim: str = "seed", batch_dim: str = "batch") -> xr.DataArray:
    """Standard deviation over seeds (ddof 1) of the seed means over `batch_dim` (if present)
    per cell of the other dims; NaN with one seed."""
    per_seed = data.mean(batch_dim) if batch_dim in data.dims else data
    if per_seed.sizes[seed_dim] < 2:
        return xr.full_like(per_seed.isel({seed_dim: 0}, drop=True), np.nan, dtype=np.float64)
    return per_seed.std(seed_dim, ddof=1)
