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

RECORD_KEYS = {"finding", "layer", "pde", "model", "estimate", "low", "high", "interval",
               "per_seed", "n_seeds", "n_batches", "n_failed", "null", "p", "p_adjusted", "paper",
               "size", "rule", "estimable", "needed", "dt", "seeds", "direction", "verdict"}


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
def test_seed_correlations_are_each_seeds_pearson(within_class):
    link = planted_link(within=0.3, between=0.2, noise=1.0, rng_seed=1)
    x, y = link["ratio"], link["rollout_error"].sel(dt=2)
    r = fu.seed_correlations(x, y, within_class=within_class)
    assert r.dims == ("seed",)
    for s in range(x.sizes["seed"]):
        xv, yv = x.isel(seed=s).values, y.isel(seed=s).values
        if within_class:  # centred within (seed, class)
            xv = xv - xv.mean(axis=1, keepdims=True)
            yv = yv - yv.mean(axis=1, keepdims=True)
        assert float(r[s]) == pytest.approx(np.corrcoef(xv.ravel(), yv.ravel())[0, 1], abs=1e-12)


def test_between_class_link_is_reported_as_between_not_within():
    link = planted_link(within=0.0, between=1.0, noise=0.5)
    stats, why = fu.rollout_statistics(link, n_permutations=200)
    assert why == "" and stats is not None
    found = fu.rollout_findings(link, pde="CE", model="unet")
    pooled = {r["dt"]: r for r in found["rollout_link_negative"]}
    within = {r["dt"]: r for r in found["rollout_link_within_class"]}
    assert set(pooled) == set(within) == {1, 16}
    # far stronger than the follow-up's -0.57: same direction, larger (beyond its +-0.25 band)
    assert pooled[1]["verdict"] == "same direction, larger" and pooled[1]["high"] < -0.9
    assert within[1]["verdict"] == "inconclusive" and within[1]["low"] < 0 < within[1]["high"]
    assert pooled[1]["paper"] == -0.57 and pooled[16]["paper"] == -0.019
    assert within[1]["paper"] is None
    for record in [*pooled.values(), *within.values()]:
        assert set(record) == RECORD_KEYS
        assert (record["n_seeds"], record["n_batches"]) == (4, 1)  # one correlation per seed
    # each seed's value is the plain Pearson r of the seed's (class, batch) points
    r0 = np.corrcoef(link["ratio"].isel(seed=0).values.ravel(),
                     link["rollout_error"].sel(dt=1).isel(seed=0).values.ravel())[0, 1]
    assert pooled[1]["per_seed"][0] == pytest.approx(r0, abs=1e-12)
    text = fu.describe_rollout_link(stats, 1, paper=-0.57)
    assert "between classes, not (detectably) within" in text
    assert "follow-up: -0.57" in text


def test_within_class_link_is_reported_as_within():
    link = planted_link(within=1.0, between=0.0, noise=0.3)
    stats, _ = fu.rollout_statistics(link, n_permutations=200)
    found = fu.rollout_findings(link, pde="NS", model="vit")
    assert all(r["direction"] == "paper side" for r in found["rollout_link_within_class"])
    # pooled over classes the offsets dilute the link: negative, but with 4 seeds not decided
    assert all(r["estimate"] < 0 for r in found["rollout_link_negative"])
    assert "within classes it is negative" in fu.describe_rollout_link(stats, 16)
    need = found["rollout_link_within_class"][0]["needed"]
    assert need["n_seeds"] is not None and need["n_seeds"] >= 2


def test_positive_link_contradicts_the_follow_up():
    link = planted_link(within=-1.0, between=-1.0, noise=0.3)
    stats, _ = fu.rollout_statistics(link, n_permutations=100)
    found = fu.rollout_findings(link, pde="CE", model="vit")
    assert all(r["verdict"] == "contradicted" for r in found["rollout_link_negative"])
    assert "opposite sign" in fu.describe_rollout_link(stats, 1)


def test_one_seed_gives_no_interval_and_no_verdict(sweep):
    small = make_sweep(seeds=(10,), batches=(0,), epochs=(1,), noise=0.5, rng_seed=2)
    ratio = co.rollout_ratio(small).values
    link = co.rollout_link(small, make_rollouts(small, ratio))
    stats, why = fu.rollout_statistics(link)
    assert stats is None and "1 seed" in why
    found = fu.rollout_findings(link, pde="CE", model="unet")
    pooled = found["rollout_link_negative"]
    assert [r["dt"] for r in pooled] == [1, 16]
    assert pooled[0]["estimate"] == pytest.approx(-1.0)  # 3 points on an exact line
    assert all(math.isnan(r["low"]) and r["verdict"] == "not estimable"
               for rs in found.values() for r in rs)


def test_findings_cap_dt_at_the_longest_rollout():
    link = planted_link(within=1.0, between=0.0, dts=(1, 2, 3, 4, 5, 6))
    assert fu.finding_dts(link) == [1, 6]
    found = fu.rollout_findings(link, pde="NS", model="unet")
    assert [r["dt"] for r in found["rollout_link_negative"]] == [1, 6]
    assert found["rollout_link_negative"][1]["paper"] == -0.40  # the published dt = 6 value


def test_rollout_statistics_drops_horizons_without_data():
    link = planted_link(within=1.0, between=0.0)
    link["rollout_error"].loc[{"dt": 16, "seed": 0, "class": "A", "batch": 0}] = np.nan
    stats, _ = fu.rollout_statistics(link, n_permutations=20)
    assert list(stats["dt"].values) == [1, 2]


def test_paper_rollout_pearson_lookup():
    assert fu.paper_rollout_pearson("NS", "ViT", 1) == -0.80
    assert fu.paper_rollout_pearson("NS", "vit", 17) is None
    assert fu.paper_rollout_pearson("KdV", "vit", 1) is None


# --------------------------------------------------------------------------- dynamics, spectrum


def test_dynamics_intervals_estimate_the_mean_of_per_matrix_values(sweep):
    ci = fu.dynamics_intervals(sweep)
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
    # PSD Gram matrices: mean off-diagonal <= mean diagonal
    assert np.all(ci.sel(quantity="ratio", ci="estimate").values <= 1 + 1e-12)
    assert np.all(ci.sel(ci="low").values <= ci.sel(ci="high").values)
    assert ci.attrs["n_seeds"] == s and "t-interval" in ci.attrs["method"]


def test_spectrum_intervals_estimate_the_means(sweep):
    spec = co.spectrum(sweep)
    ci = fu.spectrum_intervals(spec)
    np.testing.assert_allclose(ci.sel(ci="estimate", quantity="effective_rank"),
                               spec["effective_rank"].mean(("seed", "batch")))
    np.testing.assert_allclose(ci.sel(ci="estimate", quantity="effective_rank_fraction"),
                               (spec["effective_rank"] / spec["rank"]).mean(("seed", "batch")))
    assert np.all(ci.sel(quantity="effective_rank_fraction").values <= 1 + 1e-12)
    with pytest.raises(InputError, match="spec"):
        fu.spectrum_intervals(xr.Dataset())
