"""The findings registry, the evaluator's two-part verdicts and Holm's adjustment, intervals of
xarray data over seeds, and the rollout-link statistics, on synthetic data whose answer is known
(planted effects and links between or within classes)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from pdeinf.analysis import paper_numbers as pn
from pdeinf.analysis import registry
from pdeinf.analysis.evaluate import (
    CONTRADICTED,
    DIRECTION_ONLY,
    INCONCLUSIVE,
    LARGER,
    NOT_ESTIMABLE,
    REPRODUCED,
    SMALLER,
    adjust_records,
    evaluate_finding,
)
from pdeinf.analysis.rollout_stats import _permuted_within, rollout_link_statistics
from pdeinf.analysis.statistics import seed_mean_ci
from pdeinf.errors import InputError

# --------------------------------------------------------------------------- registry


def test_registry_is_consistent_and_hashes_its_file():
    assert set(registry.FINDING_RULES) == set(registry.rule_table().index)
    for name, rule in registry.FINDING_RULES.items():
        assert rule.name == name and rule.layer in registry.LAYERS
        assert name in rule.text() and rule.statistic in rule.text()
        # every published number lies on the side of the null the rule expects
        for value in rule.paper_values.values():
            assert (value - rule.null) * rule.paper_sign > 0, (name, value)
        if rule.size_kind is not None and rule.paper_values:
            assert rule.size_band[0] < rule.size_band[1]
    for key, values in registry.PAPER_ROLLOUT_PEARSON.items():
        assert len(values) == 16 and all(-1 < v < 0 for v in values), key
    assert len(registry.rules_hash()) == 64
    with pytest.raises(InputError, match="unknown finding"):
        registry.describe_rule("no-such-finding")


def test_paper_numbers_come_from_the_plot_readings():
    """The registry's numbers are the readings of `paper_numbers`, not copies."""
    rules = registry.FINDING_RULES
    intra = pn.LAG_CURVES[("C", "CE", "vit")]["intra"]
    lag1 = (np.mean(intra[-1]) + np.mean(intra[1])) / 2
    assert rules["lag0_ridge"].paper_values["CE-vit"] == pytest.approx(np.mean(intra[0]) / lag1)
    assert rules["temporal_decay"].paper_values["CE-vit"] == pytest.approx(
        lag1 - (np.mean(intra[-8]) + np.mean(intra[8])) / 2)
    ntk = pn.NTK_TOP_EIGENVALUE
    assert rules["vit_smaller_ntk_eigenvalue"].paper_values["NS"] == pytest.approx(
        ntk[("NS", "unet")]["median"] - ntk[("NS", "vit")]["median"])


# --------------------------------------------------------------------------- evaluator


def planted(rng, mean, *, sd=0.05, shape=(5, 3)):
    return mean + sd * rng.standard_normal(shape)


def test_two_part_verdicts_on_planted_sizes():
    """temporal_decay CE-vit: the paper's 0.85 with a declared band of x0.5..x2."""
    rng = np.random.default_rng(0)
    paper = registry.FINDING_RULES["temporal_decay"].paper_values["CE-vit"]

    def verdict(mean):
        return evaluate_finding("temporal_decay", planted(rng, mean), key="CE-vit")["verdict"]

    assert verdict(paper) == REPRODUCED
    assert verdict(0.1 * paper) == SMALLER
    assert verdict(5 * paper) == LARGER
    assert verdict(-paper) == CONTRADICTED
    assert evaluate_finding("temporal_decay", planted(rng, 0.0, sd=1.0),
                            key="CE-vit")["verdict"] == INCONCLUSIVE
    # the paper gives no number for a rule without size: direction only
    rec = evaluate_finding("similarity_decay", planted(rng, -0.4, shape=(5,)), scale="fisher-z")
    assert rec["verdict"] == DIRECTION_ONLY and rec["size"] is None


def test_record_carries_per_seed_values_and_the_t_interval():
    values = np.array([[1.0, 1.2], [0.8, 1.0], [1.1, 1.3], [0.9, 0.9], [1.0, 1.4]])
    rec = evaluate_finding("temporal_decay", values, key="CE-unet", pde="CE", model="unet")
    means = values.mean(axis=1)
    assert rec["per_seed"] == pytest.approx(means.tolist())
    low, high = stats.t.interval(0.95, 4, loc=means.mean(), scale=stats.sem(means))
    assert (rec["low"], rec["high"]) == pytest.approx((low, high))
    assert rec["p"] == pytest.approx(stats.ttest_1samp(means, 0.0).pvalue)
    paper = registry.FINDING_RULES["temporal_decay"].paper_values["CE-unet"]
    assert rec["size"]["value"] == pytest.approx(means.mean() / paper)
    assert rec["needed"]["n_seeds"] >= 2 and rec["n_failed"] == 0


def test_failed_units_make_a_record_not_estimable():
    values = np.ones((5, 6)) + 0.1 * np.random.default_rng(1).standard_normal((5, 6))
    values[2, 4] = np.nan  # 1 of 30 units: above the 2.5% share
    rec = evaluate_finding("temporal_decay", values, key="CE-vit")
    assert rec["verdict"] == NOT_ESTIMABLE and rec["n_failed"] == 1 and math.isnan(rec["low"])
    one_seed = evaluate_finding("temporal_decay", values[:1], key="CE-vit")
    assert one_seed["verdict"] == NOT_ESTIMABLE


def test_holm_within_each_layer_can_undo_a_marginal_direction():
    """A record significant alone (p ~ 0.03) loses its direction among 10 null records of its
    layer, and keeps it when the others are in another layer."""
    rng = np.random.default_rng(5)
    marginal = np.array([0.1, 0.6, 0.35, 0.5, 0.25])  # t-test p about 0.02
    alone = evaluate_finding("temporal_decay", marginal, key="CE-vit")
    assert 0.005 < alone["p"] < 0.05 and alone["direction"] == "paper side"
    nulls = [evaluate_finding("inter_below_intra", rng.standard_normal(5), key="CE-vit")
             for _ in range(10)]
    adjusted = adjust_records([alone, *nulls])
    assert adjusted[0]["p_adjusted"] > alone["p"] and adjusted[0]["direction"] == "undecided"
    other_layer = [evaluate_finding("rollout_link_within_class",
                                    np.tanh(rng.standard_normal(5)), scale="fisher-z")
                   for _ in range(10)]
    kept = adjust_records([alone, *other_layer])
    assert kept[0]["p_adjusted"] == pytest.approx(alone["p"]) and kept[0]["direction"] == "paper side"


def test_direction_words_of_our_rules():
    rng = np.random.default_rng(2)
    assert evaluate_finding("intervention_effect", planted(rng, -0.5))["verdict"] == "improves"
    assert evaluate_finding("intervention_effect", planted(rng, 0.5))["verdict"] == "worsens"


def test_fisher_z_scale_reports_correlations():
    r = np.array([-0.62, -0.55, -0.70, -0.58, -0.66])
    rec = evaluate_finding("rollout_link_negative", r, key="CE-vit dt=1", scale="fisher-z")
    assert rec["estimate"] == pytest.approx(np.tanh(np.arctanh(r).mean()))
    assert -1 < rec["low"] < rec["estimate"] < rec["high"] < 0
    assert rec["verdict"] == REPRODUCED  # the follow-up's -0.65 within +-0.25
    with pytest.raises(InputError, match="outside"):
        evaluate_finding("rollout_link_negative", [0.5, 1.5], scale="fisher-z")


def test_seed_mean_ci_against_a_direct_computation():
    rng = np.random.default_rng(3)
    data = xr.DataArray(rng.standard_normal((2, 4, 3)), dims=("q", "seed", "batch"),
                        coords={"q": ["a", "b"]})
    out = seed_mean_ci(data)
    for q in ("a", "b"):
        means = data.sel(q=q).mean("batch").values
        half = stats.t.ppf(0.975, 3) * stats.sem(means)
        np.testing.assert_allclose(out.sel(q=q).values,
                                   [means.mean(), means.mean() - half, means.mean() + half])
    with pytest.raises(InputError, match="seed"):
        seed_mean_ci(data.isel(seed=0))


# --------------------------------------------------------------------------- rollout link

CLASSES = ["CE-RP", "CE-CRP", "CE-RPUI"]
DTS = np.arange(1, 17)


def link_data(rng, *, within_slope, n_seeds=5, n_batches=10, noise=0.05):
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


def test_link_statistics_are_per_seed_correlations():
    ratio, error = link_data(np.random.default_rng(0), within_slope=-0.5)
    out = rollout_link_statistics(ratio, error, n_permutations=50)
    for dt in DTS[::5]:
        per_seed, centred, spear, by_class = [], [], [], {c: [] for c in CLASSES}
        for s in range(ratio.sizes["seed"]):
            x = ratio.isel(seed=s)
            y = error.isel(seed=s).sel(dt=dt)
            per_seed.append(np.corrcoef(x.values.ravel(), y.values.ravel())[0, 1])
            spear.append(stats.spearmanr(x.values.ravel(), y.values.ravel())[0])
            xc, yc = x - x.mean("batch"), y - y.mean("batch")
            centred.append(np.corrcoef(xc.values.ravel(), yc.values.ravel())[0, 1])
            for c in CLASSES:
                by_class[c].append(np.corrcoef(x.sel({"class": c}), y.sel({"class": c}))[0, 1])
        for name, values in (("pearson", per_seed), ("spearman", spear),
                             ("within_class_pooled", centred)):
            np.testing.assert_allclose(out.per_seed.sel(quantity=name, dt=dt), values, atol=1e-12)
            assert float(out[name].sel(ci="estimate", dt=dt)) == pytest.approx(
                np.tanh(np.arctanh(values).mean()))
        for c in CLASSES:
            assert float(out.within_class.sel(ci="estimate", dt=dt, **{"class": c})) == \
                pytest.approx(np.tanh(np.arctanh(by_class[c]).mean()))


def test_link_only_between_classes():
    """No within-class link: the pooled correlation is strongly negative in every data set,
    while the within-class interval covers 0 in most of 12 independent data sets (nominal
    95%) and the within-(seed, class) permutation test rarely rejects."""
    covers, quiet, estimates = 0, 0, []
    for k in range(12):
        ratio, error = link_data(np.random.default_rng(100 + k), within_slope=0.0)
        out = rollout_link_statistics(ratio, error, n_permutations=300, random_state=k)
        assert bool((out.pearson.sel(ci="high") < -0.5).all())
        assert bool((out.p_pearson <= 2 / 301).all())
        wc = out.within_class_pooled.sel(dt=8)
        covers += bool(wc.sel(ci="low") < 0 < wc.sel(ci="high"))
        quiet += bool(out.p_within_class_pooled.sel(dt=8) > 0.05)
        estimates.append(float(wc.sel(ci="estimate")))
    assert covers >= 10 and quiet >= 10
    assert abs(np.mean(estimates)) < 0.1


def test_link_within_classes():
    ratio, error = link_data(np.random.default_rng(4), within_slope=-2.0)
    out = rollout_link_statistics(ratio, error, n_permutations=1000)
    late = out.sel(dt=slice(4, None))  # the random walk dominates the first steps less later
    assert bool((late.within_class_pooled.sel(ci="high") < 0).all())
    assert bool((late.within_class.sel(ci="high") < 0).all())
    assert bool((late.p_within_class_pooled <= 2 / 1001).all())
    assert bool((late.p_within_class < 0.05).all())


def test_seed_differences_inside_a_class_are_not_a_within_class_link():
    """Seeds that shift R and the error of a class together (a seed effect, not a link within
    the seed's batches) give no within-class link once centred within (seed, class)."""
    rng = np.random.default_rng(9)
    ratio, error = link_data(rng, within_slope=0.0)
    shift = rng.standard_normal((ratio.sizes["seed"], 1, 1))
    ratio = ratio + shift
    error = error - 5.0 * shift[..., None]
    out = rollout_link_statistics(ratio, error, n_permutations=200)
    wc = out.within_class_pooled.sel(dt=8)
    assert float(wc.sel(ci="low")) < 0 < float(wc.sel(ci="high"))


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
    with pytest.raises(InputError, match="2 seeds"):
        rollout_link_statistics(ratio.isel(seed=[0]), error.isel(seed=[0]))


def test_every_rule_is_defined_in_the_method_page():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    missing = [name for name in registry.FINDING_RULES if f"`{name}`" not in text]
    assert not missing, f"docs/method.md does not define {missing}"
