"""Intervals, verdict rules, power analysis and rollout-link statistics on synthetic data whose
answer is known: hierarchical data with planted seed and batch variance components, effects of
known sign, and rollout links planted between or within classes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from pdeinf.analysis.rollout_stats import _permuted_within, rollout_link_statistics
from pdeinf.analysis.statistics import (
    hierarchical_bootstrap,
    seeds_batches_needed,
    variance_components,
)
from pdeinf.analysis.verdicts import (
    PAPER_ROLLOUT_PEARSON,
    RULES,
    VERDICT_RULES,
    Verdict,
    apply_rule,
    describe_rule,
    rule_table,
    verdict,
)
from pdeinf.errors import InputError


def hierarchical(rng, n_seeds, n_batches, *, mean=0.0, s_seed=1.0, s_batch=1.0, extra=None):
    """x[s, b] = mean + a_s + e_sb, a ~ N(0, s_seed^2), e ~ N(0, s_batch^2) (plus extra dims)."""
    shape = (n_seeds, n_batches) + (() if extra is None else (len(extra[1]),))
    a = s_seed * rng.standard_normal((n_seeds, 1) + shape[2:])
    e = s_batch * rng.standard_normal(shape)
    dims = ("seed", "batch") + (() if extra is None else (extra[0],))
    coords = {} if extra is None else {extra[0]: extra[1]}
    return xr.DataArray(mean + a + e, dims=dims, coords=coords)


def grand_mean(da):
    return da.mean(("seed", "batch"))


# --------------------------------------------------------------------------- bootstrap


def test_vectorized_and_looped_bootstrap_agree():
    data = hierarchical(np.random.default_rng(0), 4, 5, extra=("lag", [-1, 0, 1]))
    looped = hierarchical_bootstrap(data, grand_mean, n_resamples=150, random_state=3)
    vector = hierarchical_bootstrap(data, grand_mean, n_resamples=150, random_state=3,
                                    vectorized=True)
    xr.testing.assert_allclose(looped, vector)
    assert looped.dims == ("ci", "lag")
    assert list(looped["ci"].values) == ["estimate", "low", "high"]
    np.testing.assert_allclose(looped.sel(ci="estimate"), data.mean(("seed", "batch")))
    assert bool((looped.sel(ci="low") <= looped.sel(ci="estimate")).all())
    assert bool((looped.sel(ci="estimate") <= looped.sel(ci="high")).all())
    assert looped.attrs["n_resamples"] == 150 and looped.attrs["random_state"] == 3
    assert looped.attrs["n_seeds"] == 4 and looped.attrs["n_batches"] == 5
    assert looped.attrs["confidence"] == 0.95 and looped.attrs["method"] == "percentile"


def test_coverage_of_known_mean():
    """200 synthetic experiments (10 seeds x 8 batches, equal variance components): the 95%
    interval of the hierarchical mean covers the true mean in roughly 95% of them."""
    rng = np.random.default_rng(2024)
    truth, covered, n_exp = 0.3, 0, 200
    for k in range(n_exp):
        data = hierarchical(rng, 10, 8, mean=truth)
        ci = hierarchical_bootstrap(data, grand_mean, n_resamples=800, random_state=k,
                                    vectorized=True)
        covered += bool(ci.sel(ci="low") <= truth <= ci.sel(ci="high"))
    assert 0.88 <= covered / n_exp <= 0.99


def test_interval_shrinks_with_more_batches():
    rng = np.random.default_rng(5)
    widths = {}
    for n_batches in (4, 64):
        data = hierarchical(rng, 6, n_batches, s_seed=0.0, s_batch=1.0)
        ci = hierarchical_bootstrap(data, grand_mean, n_resamples=1000, vectorized=True)
        widths[n_batches] = float(ci.sel(ci="high") - ci.sel(ci="low"))
    # pure batch noise: width ~ 1/sqrt(S B), so 16x the batches should quarter it
    assert widths[64] < widths[4] / 2.5


def test_batch_only_interval_matches_bootstrap_variance():
    """One seed: the bootstrap distribution of a mean of B values has variance
    (B - 1) / B * s^2 / B (s^2 with ddof 1), so the 95% half-width is ~1.96 times its root."""
    rng = np.random.default_rng(11)
    data = xr.DataArray(rng.standard_normal((1, 40)), dims=("seed", "batch"))
    ci = hierarchical_bootstrap(data, grand_mean, n_resamples=4000, vectorized=True)
    half = float(ci.sel(ci="high") - ci.sel(ci="low")) / 2
    s2 = float(np.var(data.values, ddof=1))
    expected = stats.norm.ppf(0.975) * math.sqrt((40 - 1) / 40 * s2 / 40)
    assert half == pytest.approx(expected, rel=0.08)
    assert "batches only" in ci.attrs["resampled"]


def test_single_seed_same_as_no_seed_dimension():
    rng = np.random.default_rng(1)
    data = xr.DataArray(rng.standard_normal((1, 7)), dims=("seed", "batch"))
    one = hierarchical_bootstrap(data, grand_mean, n_resamples=300)
    flat = hierarchical_bootstrap(data.isel(seed=0), lambda d: d.mean("batch"), n_resamples=300)
    np.testing.assert_allclose(one.values, flat.values)
    assert one.attrs["n_seeds"] == 1 and flat.attrs["n_seeds"] == 1
    assert "batches only" in flat.attrs["resampled"]
    # one value per seed (validation losses): the seeds are the resampled units
    per_seed = data.isel(seed=0).rename(batch="seed")
    by_seed = hierarchical_bootstrap(per_seed, lambda d: d.mean("seed"), seed_dim=None,
                                     batch_dim="seed", n_resamples=300)
    np.testing.assert_allclose(by_seed.values, flat.values)


def test_interval_of_a_constant_is_degenerate():
    data = xr.DataArray(np.full((3, 6, 4), 2.5), dims=("seed", "batch", "lag"))
    ci = hierarchical_bootstrap(data, grand_mean, n_resamples=200)
    np.testing.assert_array_equal(ci.values, 2.5)


def test_statistic_returning_a_float():
    data = hierarchical(np.random.default_rng(2), 3, 4)
    ci = hierarchical_bootstrap(data, lambda d: float(d.values.max()), n_resamples=100)
    assert ci.dims == ("ci",)
    assert float(ci.sel(ci="estimate")) == pytest.approx(float(data.max()))
    assert float(ci.sel(ci="high")) <= float(data.max())  # a resample draws existing values


@pytest.mark.parametrize("bad, message", [
    (xr.DataArray(np.zeros((3, 0)), dims=("seed", "batch")), "0 batches"),
    (xr.DataArray(np.array([[1.0, np.nan]]), dims=("seed", "batch")), "NaN"),
    (xr.DataArray(np.zeros((3, 2)), dims=("seed", "time")), "batch dimension"),
])
def test_bootstrap_refuses_bad_data(bad, message):
    with pytest.raises(InputError, match=message):
        hierarchical_bootstrap(bad, grand_mean, n_resamples=10)


def test_bootstrap_refuses_bad_arguments():
    data = hierarchical(np.random.default_rng(0), 2, 3)
    with pytest.raises(InputError, match="confidence"):
        hierarchical_bootstrap(data, grand_mean, confidence=1.5)
    with pytest.raises(InputError, match="n_resamples"):
        hierarchical_bootstrap(data, grand_mean, n_resamples=0)
    with pytest.raises(InputError, match="resample"):
        hierarchical_bootstrap(data, lambda d: d.mean(), n_resamples=10, vectorized=True)


# --------------------------------------------------------------------------- power


def test_variance_components_exact_on_constructed_data():
    """Seed means and within-seed deviations chosen exactly: ANOVA returns them exactly."""
    means = np.array([1.0, 3.0, 2.0, 6.0])
    dev = np.array([-1.5, -0.5, 0.5, 1.5])  # zero mean, var(ddof=1) = 5/3
    data = xr.DataArray(means[:, None] + dev[None, :] * np.array([1, -1, 1, -1])[:, None],
                        dims=("seed", "batch"))
    comp = variance_components(data)
    assert comp["mean"] == pytest.approx(means.mean())
    assert comp["s_batch"] ** 2 == pytest.approx(5 / 3)
    assert comp["s_seed"] ** 2 == pytest.approx(np.var(means, ddof=1) - (5 / 3) / 4)


def test_variance_components_recover_known_values():
    data = hierarchical(np.random.default_rng(9), 400, 10, mean=0.5, s_seed=2.0, s_batch=1.0)
    comp = variance_components(data)
    assert comp["s_seed"] == pytest.approx(2.0, rel=0.1)
    assert comp["s_batch"] == pytest.approx(1.0, rel=0.05)
    assert comp["mean"] == pytest.approx(0.5, abs=0.3)


def test_seeds_batches_needed_table():
    rng = np.random.default_rng(4)
    data = hierarchical(rng, 300, 12, mean=0.4, s_seed=0.5, s_batch=2.0,
                        extra=("lag", [0, 1]))
    table = seeds_batches_needed(data, lambda d: d.sel(lag=1, drop=True),
                                 n_seeds=(2, 3, 5, 10, 30), n_batches=(1, 6, 18))
    a = table.attrs
    se = np.sqrt(a["s_seed"] ** 2 / table.n_seeds + a["s_batch"] ** 2 / table.n_runs)
    np.testing.assert_allclose(table.std_error, se)
    np.testing.assert_allclose(table.half_width, stats.norm.ppf(0.975) * se)
    assert a["s_seed"] == pytest.approx(0.5, rel=0.25) and a["s_batch"] == pytest.approx(2, rel=0.05)
    pivot = table.pivot(index="n_seeds", columns="n_batches", values="power")
    assert (np.diff(pivot.values, axis=0) >= 0).all() and (np.diff(pivot.values, axis=1) >= 0).all()
    # the largest design resolves an effect of 0.4; two seeds of one batch do not
    big = table[(table.n_seeds == 30) & (table.n_batches == 18)].iloc[0]
    small = table[(table.n_seeds == 2) & (table.n_batches == 1)].iloc[0]
    assert big.excludes_null and not small.excludes_null
    np.testing.assert_array_equal(table.excludes_null,
                                  np.abs(a["effect"]) > table.half_width)


def test_power_matches_simulated_rejection_rate():
    """The power column is the rejection rate of the z-test on the hierarchical mean: simulate
    experiments at the true components and count."""
    s_seed, s_batch, effect, n_seeds, n_batches = 0.5, 1.0, 0.45, 5, 6
    rng = np.random.default_rng(8)
    # a 2 x 2 pilot whose ANOVA components are exactly the true ones: seed means effect +- q,
    # within-seed deviations +-dev (var ddof 1 = 2 dev^2 = s_batch^2;
    # MS_between = 2 * 2 q^2 = s_batch^2 + 2 s_seed^2)
    dev = s_batch / math.sqrt(2)
    q = math.sqrt((2 * s_seed ** 2 + s_batch ** 2) / 4)
    pilot = xr.DataArray(effect + np.array([-q, q])[:, None] + np.array([-dev, dev])[None, :],
                         dims=("seed", "batch"))
    table = seeds_batches_needed(pilot, n_seeds=(n_seeds,), n_batches=(n_batches,))
    assert table.attrs["s_seed"] == pytest.approx(s_seed)
    assert table.attrs["s_batch"] == pytest.approx(s_batch)
    row = table.iloc[0]
    n_exp = 4000
    sims = (effect + s_seed * rng.standard_normal((n_exp, n_seeds, 1))
            + s_batch * rng.standard_normal((n_exp, n_seeds, n_batches))).mean(axis=(1, 2))
    rate = np.mean(np.abs(sims) > row.half_width)
    assert rate == pytest.approx(row.power, abs=0.03)


def test_power_refuses_bad_input():
    data = hierarchical(np.random.default_rng(0), 1, 4)
    with pytest.raises(InputError, match="at least 2 seeds"):
        seeds_batches_needed(data)
    data = hierarchical(np.random.default_rng(0), 3, 4, extra=("lag", [0, 1]))
    with pytest.raises(InputError, match="one value per"):
        seeds_batches_needed(data)


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("mean, sd, expected", [
    (1.0, 0.3, Verdict.REPRODUCED),
    (-1.0, 0.3, Verdict.CONTRADICTED),
    (0.0, 1.0, Verdict.INCONCLUSIVE),
])
@pytest.mark.parametrize("paper_sign", [1, -1])
def test_verdict_on_synthetic_effects(mean, sd, expected, paper_sign):
    rng = np.random.default_rng(21)
    data = hierarchical(rng, 5, 6, mean=paper_sign * mean, s_seed=sd / 2, s_batch=sd)
    ci = hierarchical_bootstrap(data, grand_mean, n_resamples=1000, vectorized=True)
    got = verdict(ci, paper_sign=paper_sign)
    assert got is expected
    assert got == expected.value  # a str as well


def test_verdict_value_rule_and_tuple_input():
    assert verdict((1.0, 0.9, 1.1), rule="value", paper_value=1.05) is Verdict.REPRODUCED
    assert verdict((1.0, 0.9, 1.1), rule="value", paper_value=2.0) is Verdict.CONTRADICTED
    assert verdict((1.0, 0.9, 1.1), rule="value", paper_value=1.5,
                   tolerance=0.45) is Verdict.REPRODUCED
    assert verdict((0.5, -0.1, 2.0), rule="value", paper_value=1.0) is Verdict.INCONCLUSIVE
    assert verdict((-0.5, -1.0, -0.1), rule="value", paper_value=1.0) is Verdict.CONTRADICTED
    assert verdict((0.3, 0.1, 0.49), null=0.5, paper_sign=1) is Verdict.CONTRADICTED
    assert verdict((0.3, 0.1, 0.5), null=0.5, paper_sign=1) is Verdict.INCONCLUSIVE  # touches
    assert verdict((0.3, 0.1, 0.45), null=0.5, paper_sign=-1) is Verdict.REPRODUCED
    assert verdict((0.3, math.nan, 0.45)) is Verdict.INCONCLUSIVE


def test_verdict_per_cell():
    ci = xr.DataArray(np.array([[1.0, -1.0, 0.0], [0.5, -1.5, -1.0], [1.5, -0.5, 1.0]]),
                      dims=("ci", "dt"), coords={"ci": ["estimate", "low", "high"],
                                                 "dt": [1, 2, 3]})
    out = verdict(ci, paper_sign=-1)
    assert out.dims == ("dt",)
    assert list(out.values) == ["contradicted", "reproduced", "inconclusive"]


def test_verdict_refuses_bad_arguments():
    with pytest.raises(InputError, match="paper_sign"):
        verdict((1, 0, 2), paper_sign=0)
    with pytest.raises(InputError, match="paper_value"):
        verdict((1, 0, 2), rule="value")
    with pytest.raises(InputError, match="rule"):
        verdict((1, 0, 2), rule="bayes")
    with pytest.raises(InputError, match="low bound"):
        verdict((1, 2, 0))
    with pytest.raises(InputError, match="ci"):
        verdict(xr.DataArray([1.0, 0.0, 2.0], dims="q"))


def test_finding_registry_is_consistent():
    assert set(VERDICT_RULES) == set(rule_table().index)
    for name, rule in VERDICT_RULES.items():
        assert rule.name == name
        assert rule.paper_sign in (1, -1) and rule.rule in RULES
        assert rule.study in ("seed paper", "follow-up", "ours")
        assert name in describe_rule(name) and rule.statistic in describe_rule(name)
        if rule.rule == "value":
            assert rule.paper_values
        # every published number lies on the side of the null the rule expects
        for value in rule.paper_values.values():
            if rule.rule == "value" or name != "ns_models_comparable":
                assert (value - rule.null) * rule.paper_sign > 0, (name, value)
    for key, values in PAPER_ROLLOUT_PEARSON.items():
        assert len(values) == 16 and all(-1 < v < 0 for v in values), key
    with pytest.raises(InputError, match="unknown finding"):
        describe_rule("no-such-finding")


def test_apply_rule_uses_the_registry():
    assert apply_rule("rollout_link_negative", (-0.6, -0.7, -0.5)) is Verdict.REPRODUCED
    assert apply_rule("similarity_decay", (0.3, 0.2, 0.4)) is Verdict.CONTRADICTED
    assert apply_rule("correlation_length", (0.85, 0.7, 0.95), key="CE") is Verdict.REPRODUCED
    assert apply_rule("correlation_length", (0.85, 0.7, 0.95), key="NS") is Verdict.CONTRADICTED
    with pytest.raises(InputError, match="key"):
        apply_rule("correlation_length", (0.85, 0.7, 0.95))


# --------------------------------------------------------------------------- rollout link

CLASSES = ["CE-RP", "CE-CRP", "CE-RPUI"]
DTS = np.arange(1, 17)


def link_data(rng, *, within_slope, n_seeds=4, n_batches=10, noise=0.05):
    """R per (seed, class, batch) around a class mean; the cumulative error grows with dt around
    a class level that falls with the class's mean R (the between-class link), plus
    `within_slope` x (R - class mean) (the within-class link) and a random walk in dt."""
    class_r = np.array([0.2, 0.5, 0.8])
    r = class_r[None, :, None] + 0.1 * rng.standard_normal((n_seeds, 3, n_batches))
    level = 1.0 - class_r  # classes with larger R roll out better
    step = (level[None, :, None] + within_slope * (r - class_r[None, :, None]))[..., None]
    walk = noise * np.cumsum(rng.standard_normal((n_seeds, 3, n_batches, len(DTS))), axis=-1)
    err = step * DTS + walk
    coords = {"class": CLASSES}
    ratio = xr.DataArray(r, dims=("seed", "class", "batch"), coords=coords)
    error = xr.DataArray(err, dims=("seed", "class", "batch", "dt"), coords={**coords, "dt": DTS})
    return ratio, error


def test_link_statistics_are_the_plain_correlations():
    ratio, error = link_data(np.random.default_rng(0), within_slope=-0.5)
    out = rollout_link_statistics(ratio, error, n_resamples=50, n_permutations=50)
    x = ratio.values.ravel()
    for k, dt in enumerate(DTS):
        y = error.sel(dt=dt).values.ravel()
        assert float(out.pearson.sel(ci="estimate", dt=dt)) == pytest.approx(np.corrcoef(x, y)[0, 1])
        assert float(out.spearman.sel(ci="estimate", dt=dt)) == pytest.approx(
            stats.spearmanr(x, y)[0])
        xc = (ratio - ratio.mean(("seed", "batch"))).values.ravel()
        yc = (error.sel(dt=dt) - error.sel(dt=dt).mean(("seed", "batch"))).values.ravel()
        assert float(out.within_class_pooled.sel(ci="estimate", dt=dt)) == pytest.approx(
            np.corrcoef(xc, yc)[0, 1])
        for c in CLASSES:
            r = np.corrcoef(ratio.sel({"class": c}).values.ravel(),
                            error.sel({"class": c, "dt": dt}).values.ravel())[0, 1]
            assert float(out.within_class.sel(ci="estimate", dt=dt, **{"class": c})) == \
                pytest.approx(r)


def test_link_only_between_classes():
    """No within-class link: the pooled correlation is strongly negative in every data set,
    while the within-class interval covers 0 in most of 12 independent data sets (nominal
    95%) and the within-class permutation test rarely rejects."""
    covers, quiet, estimates = 0, 0, []
    n_sets = 12
    for k in range(n_sets):
        ratio, error = link_data(np.random.default_rng(100 + k), within_slope=0.0)
        out = rollout_link_statistics(ratio, error, n_resamples=300, n_permutations=300,
                                      random_state=k)
        assert bool((out.pearson.sel(ci="high") < -0.5).all())
        assert bool((out.p_pearson <= 2 / 301).all())
        assert (apply_rule("rollout_link_negative", out.pearson) == "reproduced").all()
        wc = out.within_class_pooled.sel(dt=8)
        covers += bool(wc.sel(ci="low") < 0 < wc.sel(ci="high"))
        quiet += bool(out.p_within_class_pooled.sel(dt=8) > 0.05)
        estimates.append(float(wc.sel(ci="estimate")))
    assert covers >= 10 and quiet >= 10
    assert abs(np.mean(estimates)) < 0.1


def test_link_within_classes():
    ratio, error = link_data(np.random.default_rng(4), within_slope=-2.0)
    out = rollout_link_statistics(ratio, error, n_resamples=1000, n_permutations=1000)
    late = out.sel(dt=slice(4, None))  # the random walk dominates the first steps less later
    assert bool((late.within_class_pooled.sel(ci="high") < 0).all())
    assert bool((late.within_class.sel(ci="high") < 0).all())
    assert bool((late.p_within_class_pooled <= 2 / 1001).all())
    assert bool((late.p_within_class < 0.05).all())
    assert (apply_rule("rollout_link_within_class", late.within_class_pooled)
            == "reproduced").all()


def test_permutations_stay_within_groups():
    groups = np.repeat([0, 1, 2], [3, 5, 4])
    perms = _permuted_within(groups, 200, np.random.default_rng(0))
    assert (groups[perms] == groups[None, :]).all()
    assert all(sorted(p) == list(range(groups.size)) for p in perms)
    assert len({tuple(p) for p in perms}) > 100


def test_link_refuses_bad_input():
    ratio, error = link_data(np.random.default_rng(0), within_slope=0.0)
    bad = error.copy()
    bad[0, 0, 0, 3] = np.nan
    with pytest.raises(InputError, match="rollout_error: contains NaN"):
        rollout_link_statistics(ratio, bad)
    with pytest.raises(InputError, match="class"):
        rollout_link_statistics(ratio, error.assign_coords({"class": ["a", "b", "c"]}))
    with pytest.raises(InputError, match="dims"):
        rollout_link_statistics(ratio.isel(batch=0), error)
