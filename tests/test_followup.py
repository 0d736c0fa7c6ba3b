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


# --------------------------------------------------------------------------- plain-words readings


def _ci(quantity: str, rows, epochs=(1, 10), n_seeds=3) -> xr.DataArray:
    """A `(ci, quantity, epoch)` interval array of one quantity: rows (estimate, low, high)."""
    return xr.DataArray(np.array(rows, dtype=float).T[:, None, :], dims=("ci", "quantity", "epoch"),
                        coords={"ci": ["estimate", "low", "high"], "quantity": [quantity],
                                "epoch": list(epochs)}, attrs={"n_seeds": n_seeds, "n_batches": 2})


@pytest.mark.parametrize("first,last,trend", [
    ((0.1, 0.05, 0.15), (0.4, 0.3, 0.5), "grows during training (intervals disjoint)"),
    ((0.4, 0.3, 0.5), (0.1, 0.05, 0.15), "shrinks during training (intervals disjoint)"),
    ((0.1, 0.0, 0.35), (0.4, 0.3, 0.5), "cannot be told apart"),
    ((0.1, math.nan, math.nan), (0.4, math.nan, math.nan), "cannot be judged without an interval"),
])
def test_describe_dynamics_reads_the_first_and_final_intervals(first, last, trend):
    text = fu.describe_dynamics(_ci("ratio", [first, last]))
    assert trend in text
    assert "epoch 1 " in text and "epoch 10 " in text
    assert ("(no interval)" in text) == math.isnan(first[1])


@pytest.mark.parametrize("final,reading", [
    ((0.2, 0.1, 0.3), "anisotropic: a few modes dominate"),
    ((0.4, 0.2, 0.6), "not shown to be anisotropic"),
    ((0.2, math.nan, math.nan), "no claim without an interval"),
])
def test_describe_spectrum_reads_the_effective_rank_fraction(final, reading):
    frac = _ci("effective_rank_fraction", [(0.9, 0.8, 1.0), final])
    cond = _ci("log10_condition_number", [(3.0, 2.0, 4.0), (5.0, 4.5, 5.5)])
    lines = fu.describe_spectrum(xr.concat([frac, cond], dim="quantity")).splitlines()
    assert lines[0].startswith(f"final eta_hat: effective rank / rank {final[0]:.3g} ")
    assert lines[0].endswith(reading) or reading + " (" in lines[0]
    assert lines[1] == "final eta_hat: log10 condition number 5 [4.5, 5.5]"
    assert fu.describe_spectrum(cond) == lines[1]


def test_interval_text():
    assert fu.interval_text((-0.5, -0.7, -0.3)) == "-0.50 [-0.70, -0.30]"
    assert fu.interval_text((1.234, math.nan, math.nan), ".3g") == "1.23 (no interval)"
    assert fu.interval_text((math.nan, math.nan, math.nan)) == "undefined"


def test_rollout_statements_describe_each_finding_horizon():
    link = planted_link(within=0.0, between=1.0, noise=0.5)
    stats, why = fu.rollout_statistics(link, n_permutations=50)
    lines = fu.rollout_statements(link, stats, why, pde="CE", model="unet")
    assert [line.split(":")[0] for line in lines] == ["dt=1", "dt=16"]
    assert lines[0] == fu.describe_rollout_link(stats, 1, paper=-0.57)
    assert fu.rollout_statements(link, None, "1 seed: no", pde="CE", model="unet") == [
        "no interval over seeds: 1 seed: no"]


# --------------------------------------------------------------------------- the smoke run
# Guarantees that hold at any profile (mathematics, round-off tolerance only), on the smoke
# pipeline's sweeps and rollouts, which notebooks 08-10 read.


@pytest.fixture(scope="module")
def smoke_sweeps(smoke_home):
    from pdeinf import pipeline
    from pdeinf.config import get_profile

    smoke = get_profile("smoke")
    return {(pde, model): pipeline.load_variants(smoke, pde, model, progress=False)
            for pde in smoke.pdes for model in smoke.models}


@pytest.mark.slow
def test_smoke_spectrum_and_dynamics_invariants(smoke_sweeps):
    """eta_hat = (JQ)^T (JQ) / M is a Gram matrix, so its eigenvalues are >= 0 (round-off
    tolerance); the effective rank exp(H(p)) is at most the number of positive eigenvalues; a
    condition number is >= 1; the rank r is at most N; and for the PSD raw Gauss-Newton Pi,
    |Pi_nm| <= (Pi_nn + Pi_mm) / 2, so the mean off-diagonal is at most the mean diagonal:
    every per-matrix ratio, hence its mean over seeds, is <= 1."""
    for (pde, model), ds in smoke_sweeps.items():
        spec = co.spectrum(ds)
        eig = spec.eigenvalues.values
        top = np.nanmax(eig, axis=-1, keepdims=True)
        finite = np.isfinite(eig)
        assert np.all(eig[finite] >= -1e-6 * np.broadcast_to(top, eig.shape)[finite])
        n_positive = np.sum(finite & (eig > 0), axis=-1)
        assert np.all(spec.effective_rank.values <= n_positive + 1e-9)
        cond = spec.condition_number.values
        assert np.all(cond[np.isfinite(cond)] >= 1.0)
        assert np.all(ds["rank"].values <= ds.sizes["t_resp"] * ds.sizes["c_resp"])
        est = fu.dynamics_intervals(ds).sel(ci="estimate")
        assert np.all(np.isfinite(est.values))
        assert np.all(est.sel(quantity="ratio").values <= 1 + 1e-9), (pde, model)
        assert np.all(est.sel(quantity="diagonal").values > 0), (pde, model)


@pytest.mark.slow
def test_smoke_rollout_link_invariants(smoke_sweeps):
    """R comes from the RAW matrix: recomputed here directly from ds["pi"]. For the PSD
    Gauss-Newton block A (T x T): 1^T A 1 >= 0 gives R >= -1 and |A_ij| <= (A_ii + A_jj) / 2
    gives R <= T - 1. Correlations lie in [-1, 1] or are NaN with a reason; each seed's
    correlation is the Pearson r of that seed's (class, batch) values."""
    from pdeinf import pipeline

    for (pde, model), ds in smoke_sweeps.items():
        link = co.rollout_link(ds, pipeline.ensure_rollouts("smoke", pde, model, progress=False))
        final = ds["pi"].sel(variant="gauss-newton", epoch=ds.epoch.values.max())
        raw = final.transpose("seed", "batch", "c_resp", "t_resp", "c_pert", "t_pert").values
        n_times = raw.shape[-1]
        for k in range(raw.shape[2]):
            block = raw[:, :, k, :, k, :]
            diag = np.trace(block, axis1=-2, axis2=-1)
            direct = (block.sum(axis=(-2, -1)) - diag) / diag
            np.testing.assert_allclose(
                link.ratio.isel({"class": k}).transpose("seed", "batch").values, direct,
                rtol=1e-10)
        ratio = link.ratio.values
        assert np.all(ratio >= -1 - 1e-9) and np.all(ratio <= n_times - 1 + 1e-9)
        r = link.correlation.values
        assert np.all(np.abs(r[np.isfinite(r)]) <= 1 + 1e-12), (pde, model)
        assert all(why for ok, why in zip(np.isfinite(r), link.reason.values) if not ok)
        stats, _ = fu.rollout_statistics(link)
        if stats is not None:
            x = link.ratio.transpose("seed", "class", "batch").values
            for dt in stats.dt.values:
                y = link.rollout_error.sel(dt=dt).transpose("seed", "class", "batch").values
                direct = [np.corrcoef(x[s].ravel(), y[s].ravel())[0, 1] for s in range(len(x))]
                np.testing.assert_allclose(stats.per_seed.sel(quantity="pearson", dt=dt).values,
                                           direct, atol=1e-10)


@pytest.mark.slow
def test_smoke_variant_pi_invariants(smoke_sweeps):
    """Every variant is finite; Gauss-Newton and Euclidean Pi are symmetric PSD
    (`analysis.invariants`; the Adam and drift-bra matrices pair different vectors on the two
    sides and are not symmetric, so nothing of the kind is asserted for them)."""
    from pdeinf.analysis.invariants import pi_invariant_violations

    for (pde, model), ds in smoke_sweeps.items():
        assert np.all(np.isfinite(ds["pi"].values)), (pde, model)
        violations = pi_invariant_violations(ds)
        assert not violations, (pde, model, violations)
