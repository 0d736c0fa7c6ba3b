"""Inference over training seeds: t-intervals of seed means, equivalence tests, Holm's
adjustment, the power of a seeds design, and correlations averaged on Fisher's z scale.

Seeds are the unit of replication: each is an independent training, and the influence batches
measured on one trained model are nested inside its seed. The mean of a seed's batches is one
draw of the seed-level quantity, so a t-interval over the S seed means with S - 1 degrees of
freedom covers at its nominal level whatever the split of the variance between seeds and
batches (exactly so for normal seed means; `tests/test_seed_stats.py` checks it by simulation).

Missing units are NaN in a `[seeds, batches]` array. They are counted, never dropped silently:
`failed_share` is the fraction of NaN units, and callers report a statistic as not estimable
above `MAX_FAILED_SHARE`.

Pure numpy / scipy; no xarray, no files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, stats

from pdeinf.errors import InputError

#: Above this share of failed (NaN) units an interval is not reported (NaN).
MAX_FAILED_SHARE = 0.025
#: Power and the confidence of the upper bound on the seed variance used by `seeds_needed`.
POWER = 0.80
VARIANCE_BOUND_LEVEL = 0.80
#: The largest design `seeds_needed` searches.
MAX_SEEDS = 200


def as_seed_batch(values, what: str = "values") -> np.ndarray:
    """`values` as a float64 array shaped [seeds, batches]: a 1-D array is one batch per seed.

    NaN marks a missing unit; +-Inf is refused (an overflow is a failure to report, not a
    value)."""
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
    """The per-seed means of a `[seeds, batches]` array and what failed.

    seed_means: [S] mean over each seed's non-missing batches (NaN where a seed has none);
    n_units: S x B; n_failed: NaN units; design: (S, B)."""

    seed_means: np.ndarray
    n_units: int
    n_failed: int
    design: tuple[int, int]

    @property
    def failed_share(self) -> float:
        return self.n_failed / self.n_units

    @property
    def usable(self) -> np.ndarray:
        """The finite seed means."""
        return self.seed_means[np.isfinite(self.seed_means)]


def summarize_seeds(values, what: str = "values") -> SeedSummary:
    """`SeedSummary` of `values` ([seeds, batches], NaN = failed unit)."""
    arr = as_seed_batch(values, what)
    finite = np.isfinite(arr)
    counts = finite.sum(axis=1)
    sums = np.where(finite, arr, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return SeedSummary(means, int(arr.size), int((~finite).sum()), tuple(arr.shape))


def _t_parts(means: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error and degrees of freedom of finite seed means."""
    s = means.size
    if s < 2:
        return (float(means.mean()) if s else math.nan), math.nan, 0
    return float(means.mean()), float(means.std(ddof=1) / math.sqrt(s)), s - 1


def _check_level(level: float, what: str = "level") -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise InputError(f"{what}: must lie strictly between 0 and 1, got {level!r}")
    return float(level)


def seed_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): the mean of the seed means and its t-interval (S - 1 df).

    values: `[seeds, batches]` (NaN for a missing batch) or `[seeds]`. Each seed's value is the
    mean of its non-missing batches. With more than `MAX_FAILED_SHARE` of the units missing, or
    fewer than 2 seeds with a value, the bounds are NaN (the estimate is kept when it exists).
    A zero spread gives a zero-width interval (all seeds agree exactly).
    """
    level = _check_level(level)
    summary = summarize_seeds(values)
    est, se, df = _t_parts(summary.usable)
    if df < 1 or summary.failed_share > MAX_FAILED_SHARE:
        return est, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2.0, df)) * se
    return est, est - half, est + half


def t_test_p(values, null: float = 0.0) -> float:
    """Two-sided p-value of the one-sample t-test of the seed means against `null` (NaN when
    not estimable, as in `seed_interval`). Equal seed means give 0 or 1 exactly."""
    summary = summarize_seeds(values)
    est, se, df = _t_parts(summary.usable)
    if df < 1 or summary.failed_share > MAX_FAILED_SHARE or not math.isfinite(est):
        return math.nan
    if se == 0.0:
        return 1.0 if est == null else 0.0
    return float(2.0 * stats.t.sf(abs(est - null) / se, df))


def tost_p(values, low: float, high: float) -> float:
    """p-value of the two one-sided t-tests that the seed-mean lies inside (low, high):
    the larger of the p-values of H0: mean <= low and H0: mean >= high. Equivalence is shown at
    level alpha when the result is below alpha (the (1 - 2 alpha) t-interval lies inside the
    band). NaN when not estimable."""
    if not low < high:
        raise InputError(f"band: expected low < high, got ({low}, {high})")
    summary = summarize_seeds(values)
    est, se, df = _t_parts(summary.usable)
    if df < 1 or summary.failed_share > MAX_FAILED_SHARE or not math.isfinite(est):
        return math.nan
    if se == 0.0:
        return 0.0 if low < est < high else 1.0
    p_low = stats.t.sf((est - low) / se, df)
    p_high = stats.t.cdf((est - high) / se, df)
    return float(max(p_low, p_high))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), same order as the input.
    NaN p-values stay NaN and do not count towards the family size."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise InputError("pvalues: must lie in [0, 1]")
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _power(effect: float, sd: float, n_seeds: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test at S seeds: the noncentral t probability
    P(|T| > t_crit) written as an expectation over the chi-square of the variance estimate,
    E_V[Phi(nc - c sqrt(V / df)) + Phi(-nc - c sqrt(V / df))], V ~ chi2(df) (stable for any
    noncentrality, unlike scipy's nct tails)."""
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
    """Upper `bound_level` confidence bound on the standard deviation of the seed means
    (chi-square with S - 1 df); NaN with fewer than 2 seeds."""
    means = summarize_seeds(values).usable
    if means.size < 2:
        return math.nan
    df = means.size - 1
    return math.sqrt(df * means.var(ddof=1) / stats.chi2.ppf(1.0 - bound_level, df))


def seeds_needed(values, effect: float, *, level: float = 0.95, power: float = POWER,
                 bound_level: float = VARIANCE_BOUND_LEVEL) -> int | None:
    """The fewest seeds (at the measured batches per seed) whose two-sided t-test at
    `1 - level` rejects a true `effect` with probability `power`, with the seed-mean spread
    taken at its upper `bound_level` confidence bound (so a lucky small spread does not make
    a design look enough). None when the effect is zero or not finite, or beyond `MAX_SEEDS`.
    A zero measured spread needs 2 seeds."""
    level, power = _check_level(level), _check_level(power, "power")
    sd = seed_sd_upper(values, bound_level)
    if not (math.isfinite(effect) and effect != 0.0 and math.isfinite(sd)):
        return None
    if sd == 0.0:
        return 2
    alpha = 1.0 - level
    lo, hi = 2, MAX_SEEDS
    if _power(abs(effect), sd, hi, alpha) < power:
        return None
    while lo < hi:  # power grows with the number of seeds
        mid = (lo + hi) // 2
        if _power(abs(effect), sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def fisher_z(r):
    """Fisher's z = atanh(r), with |r| = 1 clipped just inside (+-(1 - 1e-12)) so that a perfect
    correlation stays finite."""
    return np.arctanh(np.clip(r, -1.0 + 1e-12, 1.0 - 1e-12))


def fisher_z_interval(correlations, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of a correlation measured once per seed: the t-interval of the
    per-seed Fisher z = atanh(r) (`seed_interval`), transformed back with tanh. `correlations`:
    [seeds] or [seeds, batches] (NaN = failed unit); |r| = 1 is clipped just inside (+-1 - 1e-12)."""
    r = as_seed_batch(correlations, "correlations")
    finite = r[np.isfinite(r)]
    if np.any(np.abs(finite) > 1.0):
        raise InputError("correlations: a value lies outside [-1, 1]")
    z = fisher_z(r)
    est, low, high = seed_interval(z, level)
    return float(np.tanh(est)), float(np.tanh(low)), float(np.tanh(high))
