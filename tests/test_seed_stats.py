"""Seed-level inference: coverage of the t-interval by simulation, the equivalence test, Holm's
adjustment and the power of a design against direct computations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from pdeinf.analysis.statistics import (
    fisher_z_interval,
    holm,
    seed_interval,
    seed_sd_upper,
    seeds_needed,
    summarize_seeds,
    t_test_p,
    tost_p,
)
from pdeinf.analysis.statistics import seed_interval as public_seed_interval
from pdeinf.errors import InputError

DESIGNS = [(3, 1), (3, 3), (5, 2), (10, 1)]
SEED_SHARES = [0.0, 0.5, 1.0]


@pytest.mark.parametrize(("design", "share"), list(itertools.product(DESIGNS, SEED_SHARES)))
def test_seed_interval_covers_the_true_mean(design, share):
    """Normal seed and batch effects with total variance 1: the 95% interval covers the true
    mean in at least 93% of 2000 simulated studies in every cell."""
    n_seeds, n_batches = design
    rng = np.random.default_rng(1000 * n_seeds + 10 * n_batches + int(10 * share))
    truth, n_sim, covered = 0.7, 2000, 0
    for _ in range(n_sim):
        seed_effect = rng.normal(0.0, math.sqrt(share), size=(n_seeds, 1))
        batch_effect = rng.normal(0.0, math.sqrt(1.0 - share), size=(n_seeds, n_batches))
        _, low, high = seed_interval(truth + seed_effect + batch_effect)
        covered += low <= truth <= high
    assert covered / n_sim >= 0.93


def test_seed_interval_is_the_t_interval_of_seed_means():
    values = np.array([[1.0, 2.0, np.nan], [3.0, 5.0, 4.0], [0.5, 1.5, 1.0]])
    # one NaN of 9 units is above the 2.5% failure share: no interval
    est, low, high = seed_interval(values)
    assert est == pytest.approx(np.mean([1.5, 4.0, 1.0]))
    assert math.isnan(low) and math.isnan(high)
    full = np.array([[1.0, 2.0], [3.0, 5.0], [0.5, 1.5], [2.0, 2.0]])
    means = full.mean(axis=1)
    ref = stats.t.interval(0.9, len(means) - 1, loc=means.mean(), scale=stats.sem(means))
    est, low, high = public_seed_interval(full, level=0.9)
    assert est == pytest.approx(means.mean())
    assert (low, high) == pytest.approx(ref)


def test_failures_are_counted_and_one_seed_is_not_estimable():
    summary = summarize_seeds(np.array([[1.0] * 40 + [np.nan]] * 3))
    assert summary.n_failed == 3 and summary.n_units == 123
    assert summary.failed_share > 0.0
    assert math.isnan(seed_interval([[1.0, 2.0]])[1])
    with pytest.raises(InputError, match="Inf"):
        seed_interval([[1.0], [np.inf]])
    with pytest.raises(InputError, match="shape"):
        seed_interval(np.zeros((2, 2, 2)))


def test_t_test_matches_scipy():
    means = np.array([0.3, 0.9, 0.5, 1.2])
    assert t_test_p(means, null=0.2) == pytest.approx(stats.ttest_1samp(means, 0.2).pvalue)


def test_tost_agrees_with_the_interval_inside_the_band():
    """TOST at alpha rejects non-equivalence exactly when the (1 - 2 alpha) interval lies
    inside the band."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        values = rng.normal(1.0, 0.4, size=5)
        band = (0.5, 1.6)
        _, low, high = seed_interval(values, level=0.90)
        assert (tost_p(values, *band) < 0.05) == (band[0] < low and high < band[1])


def test_holm_against_the_step_down_definition():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005, 0.5])
    adjusted = holm(p)
    finite = [0.01, 0.04, 0.03, 0.005, 0.5]
    m = len(finite)
    order = np.argsort(finite)
    ref = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * finite[i]))
        ref[i] = running
    assert math.isnan(adjusted[2])
    np.testing.assert_allclose(np.delete(adjusted, 2), ref)
    assert np.all(np.delete(adjusted, 2) >= np.array(finite))


def test_seeds_needed_reaches_the_power_by_simulation():
    """At the returned design a simulated t-test with the bounded spread rejects >= 80% of the
    time; one seed fewer does not reach the power."""
    values = np.array([0.2, 0.9, 0.5, 0.4])
    effect = 0.5
    n = seeds_needed(values, effect)
    sd = seed_sd_upper(values)
    assert sd > np.std(values, ddof=1)
    rng = np.random.default_rng(0)

    def simulated_power(s):
        draws = rng.normal(effect, sd, size=(20000, s))
        return np.mean(stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05)

    assert simulated_power(n) >= 0.79
    assert simulated_power(n - 1) < 0.80
    assert seeds_needed(values, 0.0) is None


def test_fisher_z_interval_brackets_the_seed_correlations():
    r = np.array([0.55, 0.62, 0.48, 0.70, 0.58])
    est, low, high = fisher_z_interval(r)
    assert est == pytest.approx(np.tanh(np.arctanh(r).mean()))
    assert -1 < low < est < high < 1
    with pytest.raises(InputError, match="outside"):
        fisher_z_interval([0.5, 1.5])


def test_power_matches_the_noncentral_t_and_stays_finite():
    from pdeinf.analysis.statistics import _power

    for n, effect in ((3, 0.5), (6, 1.0), (12, 0.3)):
        crit = stats.t.ppf(0.975, n - 1)
        nc = effect * math.sqrt(n)
        ref = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
        assert _power(effect, 1.0, n, 0.05) == pytest.approx(ref, rel=1e-6)
    # a large effect (where scipy's nct tails return NaN) needs few seeds, not many
    powers = [_power(2.94, 0.374, n, 0.05) for n in range(2, 15)]
    assert all(math.isfinite(p) for p in powers) and powers[1] > 0.99
    assert seeds_needed(np.random.default_rng(0).normal(4.0, 0.5, (5, 6)), 2.94) == 3
