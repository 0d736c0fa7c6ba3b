"""The follow-up layer's notebook-facing functions (pdeinf.analysis.followup) on synthetic data
with known answers: exact identities, planted between- vs within-class links, verdict records."""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from test_analysis import make_rollouts, make_sweep

from pdeinf.analysis import coherence as co
from pdeinf.analysis import followup as fu
from pdeinf.errors import InputError

RECORD_KEYS = {"pde", "model", "estimate", "low", "high", "n_seeds", "n_batches", "verdict",
               "rule", "paper", "needed", "dt"}


@pytest.fixture(scope="module")
def sweep():
    return make_sweep(noise=0.8, inter=0.3, rng_seed=5)


def planted_link(*, within: float, between: float, n_seeds=4, n_batches=8, noise=0.05,
                 rng_seed=0, dts=(1, 2, 16)):
    """A rollout_link-shaped Dataset: R = class offset + unit-variance spread; error at every dt
    = dt * (2 + between * class offset - within * spread + noise). `between` > 0 gives a pooled
    negative link through the class offsets only when `within` = 0."""
    rng = np.random.default_rng(rng_seed)
    classes = ["A", "B", "C"]
    offset = np.array([0.0, 1.0, 2.0])[None, :, None] * 5.0
    spread = rng.standard_normal((n_seeds, 3, n_batches))
    ratio = offset + spread
    base = 2.0 - between * offset - within * spread
    error = np.stack([dt * (base + noise * rng.standard_normal(base.shape)) for dt in dts], -1)
    coords = {"seed": np.arange(n_seeds), "class": classes, "batch": np.arange(n_batches),
              "dt": list(dts)}
    corr = [np.corrcoef(ratio.ravel(), error[..., k].ravel())[0, 1] for k in range(len(dts))]
    return xr.Dataset({"ratio": (("seed", "class", "batch"), ratio),
                       "rollout_error": (("seed", "class", "batch", "dt"), error),
                       "correlation": ("dt", np.array(corr))}, coords=coords)


# --------------------------------------------------------------------------- correlations


@pytest.mark.parametrize("within_class", [False, True])
def test_correlation_units_average_to_the_pearson_correlation(within_class):
    link = planted_link(within=0.3, between=0.2, noise=1.0, rng_seed=1)
    x, y = link["ratio"], link["rollout_error"].sel(dt=2)
    units = fu.correlation_units(x, y, within_class=within_class)
    assert units.dims == ("seed", "batch")
    xv, yv = x.values, y.values
    if within_class:
        xv = xv - xv.mean(axis=(0, 2), keepdims=True)
        yv = yv - yv.mean(axis=(0, 2), keepdims=True)
    assert float(units.mean()) == pytest.approx(np.corrcoef(xv.ravel(), yv.ravel())[0, 1],
                                                abs=1e-12)


def test_between_class_link_is_reported_as_between_not_within():
    link = planted_link(within=0.0, between=1.0, noise=0.5)
    stats, why = fu.rollout_statistics(link, n_resamples=300, n_permutations=200)
    assert why == "" and stats is not None
    found = fu.rollout_findings(link, stats, pde="CE", model="unet")
    pooled = {r["dt"]: r for r in found["rollout_link_negative"]}
    within = {r["dt"]: r for r in found["rollout_link_within_class"]}
    assert set(pooled) == set(within) == {1, 16}
    assert pooled[1]["verdict"] == "reproduced" and pooled[1]["high"] < -0.5
    assert within[1]["verdict"] == "inconclusive" and within[1]["low"] < 0 < within[1]["high"]
    assert pooled[1]["paper"] == -0.57 and pooled[16]["paper"] == -0.019
    assert within[1]["paper"] is None
    for record in [*pooled.values(), *within.values()]:
        assert set(record) == RECORD_KEYS
        assert (record["n_seeds"], record["n_batches"]) == (4, 8)
        assert record["rule"].startswith(("rollout_link_negative", "rollout_link_within_class"))
    # the pooled estimate is the plain Pearson r the follow-up computes
    assert pooled[1]["estimate"] == pytest.approx(float(link["correlation"].sel(dt=1)), abs=1e-12)
    text = fu.describe_rollout_link(stats, 1, paper=-0.57)
    assert "between classes, not (detectably) within" in text
    assert "follow-up: -0.57" in text


def test_within_class_link_is_reported_as_within():
    link = planted_link(within=1.0, between=0.0, noise=0.3)
    stats, _ = fu.rollout_statistics(link, n_resamples=300, n_permutations=200)
    found = fu.rollout_findings(link, stats, pde="NS", model="vit")
    assert all(r["verdict"] == "reproduced" for rs in found.values() for r in rs)
    assert "holds within classes too" in fu.describe_rollout_link(stats, 16)
    need = found["rollout_link_within_class"][0]["needed"]
    assert need is not None and need["n_seeds"] is not None and need["effect"] < 0


def test_positive_link_contradicts_the_follow_up():
    link = planted_link(within=-1.0, between=-1.0, noise=0.3)
    stats, _ = fu.rollout_statistics(link, n_resamples=200, n_permutations=100)
    found = fu.rollout_findings(link, stats, pde="CE", model="vit")
    assert all(r["verdict"] == "contradicted" for r in found["rollout_link_negative"])
    assert "opposite sign" in fu.describe_rollout_link(stats, 1)


def test_one_seed_one_batch_gives_no_interval_and_inconclusive_verdicts(sweep):
    small = make_sweep(seeds=(10,), batches=(0,), epochs=(1,), noise=0.5, rng_seed=2)
    ratio = co.rollout_ratio(small).values
    link = co.rollout_link(small, make_rollouts(small, ratio))
    stats, why = fu.rollout_statistics(link)
    assert stats is None and "1 seed(s) x 1 batch(es)" in why
    found = fu.rollout_findings(link, None, pde="CE", model="unet")
    pooled = found["rollout_link_negative"]
    assert [r["dt"] for r in pooled] == [1, 16]
    assert pooled[0]["estimate"] == pytest.approx(-1.0)  # 3 points on an exact line
    assert all(math.isnan(r["low"]) and r["verdict"] == "inconclusive" and r["needed"] is None
               for rs in found.values() for r in rs)


def test_findings_cap_dt_at_the_longest_rollout():
    link = planted_link(within=1.0, between=0.0, dts=(1, 2, 3, 4, 5, 6))
    assert fu.finding_dts(link) == [1, 6]
    stats, _ = fu.rollout_statistics(link, n_resamples=50, n_permutations=20)
    found = fu.rollout_findings(link, stats, pde="NS", model="unet")
    assert [r["dt"] for r in found["rollout_link_negative"]] == [1, 6]
    assert found["rollout_link_negative"][1]["paper"] == -0.40  # the published dt = 6 value


def test_rollout_statistics_drops_horizons_without_data():
    link = planted_link(within=1.0, between=0.0)
    link["rollout_error"].loc[{"dt": 16, "seed": 0, "class": "A", "batch": 0}] = np.nan
    stats, _ = fu.rollout_statistics(link, n_resamples=50, n_permutations=20)
    assert list(stats["dt"].values) == [1, 2]


# --------------------------------------------------------------------------- power, records


def test_needed_design_finds_the_smallest_sufficient_design():
    rng = np.random.default_rng(0)
    strong = xr.DataArray(0.5 + 0.05 * rng.standard_normal((3, 4)), dims=("seed", "batch"))
    need = fu.needed_design(strong)
    assert need["status"] == "decisive at the measured design"  # already excluded as measured
    assert (need["n_seeds"], need["n_batches"]) == (3, 4)
    null = xr.DataArray(np.array([[1.0, -1.0], [-1.0, 1.0]]), dims=("seed", "batch"))
    need = fu.needed_design(null)  # zero effect: no design suffices
    assert need["n_seeds"] is None and need["status"] == "beyond the grid"
    need = fu.needed_design(strong.isel(seed=[0]))  # one seed: nothing to estimate
    assert need["status"] == "not estimable" and need["n_seeds"] is None
    # an inconclusive measured verdict is never answered with a design it already had
    weak = xr.DataArray(0.02 + 0.05 * rng.standard_normal((3, 4)), dims=("seed", "batch"))
    need = fu.needed_design(weak, verdict="inconclusive")
    assert need["status"] in ("larger design", "beyond the grid")
    if need["n_seeds"] is not None:
        assert need["n_seeds"] >= 3 and need["n_batches"] >= 4


def test_finding_record_applies_the_registered_rule():
    rec = fu.finding_record("rollout_link_negative", (-0.6, -0.8, -0.3), pde="CE", model="vit",
                            n_seeds=3, n_batches=18, paper=-0.65, dt=1)
    assert rec["verdict"] == "reproduced" and rec["paper"] == -0.65 and rec["dt"] == 1
    rec = fu.finding_record("rollout_link_negative", (-0.6, None, None), pde="CE", model="vit",
                            n_seeds=1, n_batches=1)
    assert rec["verdict"] == "inconclusive" and math.isnan(rec["low"])
    with pytest.raises(InputError, match="finding"):
        fu.finding_record("no_such_rule", (0, 0, 0), pde="CE", model="vit", n_seeds=1,
                          n_batches=1)


def test_paper_rollout_pearson_lookup():
    assert fu.paper_rollout_pearson("NS", "ViT", 1) == -0.80
    assert fu.paper_rollout_pearson("NS", "vit", 17) is None
    assert fu.paper_rollout_pearson("KdV", "vit", 1) is None


# --------------------------------------------------------------------------- dynamics, spectrum


def test_dynamics_intervals_estimate_the_mean_of_per_matrix_values(sweep):
    ci = fu.dynamics_intervals(sweep, n_resamples=100)
    assert ci.dims == ("ci", "quantity", "epoch")
    raw = sweep["pi"].sel(variant="gauss-newton").transpose(
        "seed", "epoch", "batch", "c_resp", "t_resp", "c_pert", "t_pert").values
    s, e, b = raw.shape[:3]
    flat = raw.reshape(s, e, b, 48, 48)
    diag = np.trace(flat, axis1=-2, axis2=-1) / 48
    off = (flat.sum(axis=(-2, -1)) - 48 * diag) / (48 * 47)
    np.testing.assert_allclose(ci.sel(ci="estimate", quantity="diagonal"), diag.mean(axis=(0, 2)))
    np.testing.assert_allclose(ci.sel(ci="estimate", quantity="ratio"),
                               (off / diag).mean(axis=(0, 2)))
    # PSD Gram matrices: mean off-diagonal <= mean diagonal, for every resample too
    assert np.all(ci.sel(quantity="ratio").values <= 1 + 1e-12)
    assert np.all(ci.sel(ci="low").values <= ci.sel(ci="high").values)
    assert ci.attrs["n_resamples"] == 100 and ci.attrs["random_state"] == 0


def test_spectrum_intervals_estimate_the_means(sweep):
    spec = co.spectrum(sweep)
    ci = fu.spectrum_intervals(spec, n_resamples=100)
    np.testing.assert_allclose(ci.sel(ci="estimate", quantity="effective_rank"),
                               spec["effective_rank"].mean(("seed", "batch")))
    np.testing.assert_allclose(ci.sel(ci="estimate", quantity="effective_rank_fraction"),
                               (spec["effective_rank"] / spec["rank"]).mean(("seed", "batch")))
    assert np.all(ci.sel(quantity="effective_rank_fraction").values <= 1 + 1e-12)
    with pytest.raises(InputError, match="spec"):
        fu.spectrum_intervals(xr.Dataset())


def test_correlation_units_spread_is_the_delta_method_spread_of_r():
    # bivariate normal, correlation rho: Var(r) ~ (1 - rho^2)^2 / n, so the per-unit
    # contributions (one class) must have variance (1 - rho^2)^2
    rho, rng = 0.6, np.random.default_rng(4)
    x = rng.standard_normal((100, 1, 200))
    y = rho * x + math.sqrt(1 - rho ** 2) * rng.standard_normal(x.shape)
    dims = ("seed", "class", "batch")
    units = fu.correlation_units(xr.DataArray(x, dims=dims), xr.DataArray(y, dims=dims))
    assert float(units.var()) == pytest.approx((1 - rho ** 2) ** 2, rel=0.05)
