"""Analyses of pdeinf.analysis.coherence on synthetic sweeps with planted structure.

`make_sweep` builds Pi = G^T G from gradients whose structure is known exactly: example (c, t)
has gradient g = sum_k w(t - k) a[c, k] over orthonormal vectors a[c, k] with a band w of width
one step, so without noise the intra-class Gram is exactly banded (|dt| <= 2) and inter-class
entries are exactly zero. Analyses must recover that structure.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from pdeinf.analysis import coherence as co
from pdeinf.analysis import followup as fu
from pdeinf.errors import InputError
from pdeinf.influence.normalize import normalize

CLASSES = ("CE-RP", "CE-CRP", "CE-RPUI")
BAND = {0: 1.0, 1: 0.6}  # w(0), w(+-1); w = 0 beyond


def planted_gradients(rng, n_classes, n_times, noise, inter):
    """G [P, N] (n = c * T + t) with the banded intra-class structure plus optional parts."""
    n = n_classes * n_times
    p = 3 * n
    basis, _ = np.linalg.qr(rng.standard_normal((p, p)))
    a = basis[:, :n].reshape(p, n_classes, n_times)  # orthonormal a[:, c, k]
    shared = basis[:, n:n + n_times]  # time features shared by all classes
    g = np.zeros((p, n_classes, n_times))
    for c in range(n_classes):
        for t in range(n_times):
            for k in range(n_times):
                g[:, c, t] += BAND.get(abs(t - k), 0.0) * a[:, c, k]
            g[:, c, t] += inter * shared[:, t]
    g = g.reshape(p, n)
    return g + noise * rng.standard_normal(g.shape) / math.sqrt(p)


def make_sweep(*, seeds=(10, 35), epochs=(1, 5), batches=(0, 1, 2), n_classes=3, n_times=16,
               noise=0.0, inter=0.0, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    classes = list(CLASSES[:n_classes])
    n = n_classes * n_times
    shape = (len(seeds), len(epochs), len(batches))
    pi = np.zeros((*shape, 2, n, n))
    losses = rng.uniform(0.5, 2.0, size=(*shape, n))
    eig = np.full((*shape, n), np.nan)
    rank = np.zeros(shape, dtype=int)
    for i in range(len(seeds)):
        for j, epoch in enumerate(epochs):
            for k in range(len(batches)):
                g = planted_gradients(rng, n_classes, n_times, noise, inter)
                amplitude = (1.0 + i + 0.5 * k) / epoch
                pi[i, j, k, 0] = amplitude * g.T @ g
                white = rng.standard_normal((3 * n, n)) / math.sqrt(3 * n)
                pi[i, j, k, 1] = amplitude * white.T @ white  # no temporal structure at all
                r = 5 + k + i
                rank[i, j, k] = r
                eig[i, j, k, :r] = rng.permutation(10.0 ** (-0.5 * np.arange(r)))
    # [..., N, N] -> labelled (t_resp, c_resp, t_pert, c_pert), n = c * T + t
    pi_l = pi.reshape(*shape, 2, n_classes, n_times, n_classes, n_times)
    pi_l = pi_l.transpose(0, 1, 2, 3, 5, 4, 7, 6)
    t = np.arange(n_times)
    cidx = np.arange(n_classes)
    distance = (np.abs(t[:, None, None, None] - t[None, None, :, None]) + 1.0
                + 2.0 * (cidx[None, :, None, None] != cidx[None, None, None, :]))
    distance = distance * ~((t[:, None, None, None] == t[None, None, :, None])
                            & (cidx[None, :, None, None] == cidx[None, None, None, :]))  # self: 0
    distance = np.broadcast_to(distance, (*shape, n_times, n_classes, n_times, n_classes)).copy()
    coords = {"seed": list(seeds), "epoch": list(epochs), "batch": list(batches),
              "variant": ["gauss-newton", "euclidean"], "t_resp": t, "c_resp": classes,
              "t_pert": t, "c_pert": classes, "t": t, "c": classes, "mode": np.arange(n)}
    dims7 = ("seed", "epoch", "batch", "t_resp", "c_resp", "t_pert", "c_pert")
    return xr.Dataset(
        {
            "pi": (("seed", "epoch", "batch", "variant", "t_resp", "c_resp", "t_pert", "c_pert"),
                   pi_l),
            "losses": (("seed", "epoch", "batch", "t", "c"),
                       losses.reshape(*shape, n_classes, n_times).transpose(0, 1, 2, 4, 3)),
            "eta_eigenvalues": (("seed", "epoch", "batch", "mode"), eig),
            "rank": (("seed", "epoch", "batch"), rank),
            "input_distance": (dims7, distance),
        },
        coords=coords,
    )


def flat_matrices(ds, variant, epoch):
    """Pi as [S, B, N, N] (n = c * T + t), built with explicit loops (the reference order)."""
    pi = ds["pi"].sel(variant=variant, epoch=epoch)
    values = pi.transpose("seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert").values
    n_times, n_classes = values.shape[2], values.shape[3]
    n = n_classes * n_times
    out = np.zeros((*values.shape[:2], n, n))
    for cr in range(n_classes):
        for tr in range(n_times):
            for cp in range(n_classes):
                for tp in range(n_times):
                    out[:, :, cr * n_times + tr, cp * n_times + tp] = values[:, :, tr, cr, tp, cp]
    return out


@pytest.fixture(scope="module")
def exact():
    return make_sweep()


@pytest.fixture(scope="module")
def noisy():
    return make_sweep(noise=0.8, inter=0.3, rng_seed=1)


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("kind", ["standard", "cosine", "loss", "row"])
def test_heatmap_matches_loop_reference(noisy, kind):
    epoch = 5
    flat = flat_matrices(noisy, "gauss-newton", epoch)
    losses = noisy["losses"].sel(epoch=epoch).transpose("seed", "batch", "c", "t").values
    losses = losses.reshape(*flat.shape[:2], -1)
    norm = normalize(flat, kind, losses=losses)
    t_count = noisy.sizes["t_resp"]
    expected = np.zeros((t_count, t_count))
    for tr in range(t_count):
        for tp in range(t_count):
            vals = [norm[:, :, c * t_count + tr, c * t_count + tp] for c in range(3)]
            expected[tr, tp] = np.median(np.stack(vals))
    heat = co.temporal_heatmap(noisy, variant="gauss-newton", normalization=kind, epoch=epoch)
    assert heat.dims == ("t_resp", "t_pert")
    np.testing.assert_allclose(heat.values, expected, rtol=1e-12, atol=1e-12)


def test_heatmap_recovers_planted_band(exact):
    heat = co.temporal_heatmap(exact, normalization="none").values
    dt = np.subtract.outer(np.arange(16), np.arange(16))
    assert np.all(heat[np.abs(dt) >= 3] == pytest.approx(0.0, abs=1e-12))
    assert np.all(heat[np.abs(dt) <= 2] > 0.1)
    # interior rows: w(0)^2 + 2 w(1)^2 on the diagonal, 2 w(0) w(1) at |dt| = 1, w(1)^2 at 2
    amp = np.median([(1.0 + i + 0.5 * k) / 5 for i in range(2) for k in range(3)])
    assert heat[8, 8] == pytest.approx(amp * (1 + 2 * 0.36), rel=1e-10)
    assert heat[8, 7] == pytest.approx(amp * 2 * 0.6, rel=1e-10)
    assert heat[8, 6] == pytest.approx(amp * 0.36, rel=1e-10)


def test_class_matrix_is_exactly_block_diagonal(exact):
    for lag in (0, 1, -2, 5):
        cm = co.class_matrix(exact, normalization="none", lag=lag)
        assert cm.dims == ("c_resp", "c_pert")
        assert list(cm["c_resp"].values) == list(CLASSES)
        off = ~np.eye(3, dtype=bool)
        assert np.all(cm.values[off] == pytest.approx(0.0, abs=1e-12))
        if abs(lag) <= 2:
            assert np.all(np.diag(cm.values) > 0.05)


def test_class_matrix_lag_matches_manual_selection(noisy):
    flat = flat_matrices(noisy, "euclidean", 5)
    norm = normalize(flat, "standard")
    cm = co.class_matrix(noisy, variant="euclidean", epoch=5, lag=2).values
    for a in range(3):
        for b in range(3):
            vals = [norm[:, :, a * 16 + t, b * 16 + t - 2] for t in range(2, 16)]
            assert cm[a, b] == pytest.approx(np.median(np.stack(vals)), rel=1e-12)


def test_horizon_curve_planted_band_and_counts(exact):
    curve = co.horizon_curve(exact, normalization="none")
    assert list(curve["dt"].values) == list(range(-11, 12))
    med = curve.sel(quantile=0.5)
    for d in range(-11, 12):
        intra = float(med.sel(pair="intra", dt=d))
        assert (intra > 0.1) if abs(d) <= 2 else intra == pytest.approx(0.0, abs=1e-12)
        assert float(curve.sel(pair="inter", dt=d, quantile=0.75)) == pytest.approx(0.0, abs=1e-12)
    # counts: seeds x batches x classes x (T - |dt|) intra, x 6 ordered class pairs inter
    assert int(curve["count"].sel(pair="intra", dt=-4)) == 2 * 3 * 3 * 12
    assert int(curve["count"].sel(pair="inter", dt=0)) == 2 * 3 * 6 * 16
    q = curve.sel(pair="intra", dt=1).values
    assert q[0] <= q[1] <= q[2]


def test_variant_ridge_recovers_the_planted_band(noisy):
    """The lag-0 ridge of each (seed, batch) standardized matrix at the final checkpoint, from
    explicit loops over the flat matrix, averaged over batches then seeds."""
    est, low, high = fu.variant_ridge(noisy, "gauss-newton")
    flat = normalize(flat_matrices(noisy, "gauss-newton", 5), "standard")
    n_t = noisy.sizes["t_resp"]
    per_seed = []
    for s in range(flat.shape[0]):
        ratios = []
        for b in range(flat.shape[1]):
            lag0, lag1 = [], []
            for c in range(noisy.sizes["c_resp"]):
                for tr in range(n_t):
                    for tp in range(n_t):
                        value = flat[s, b, c * n_t + tr, c * n_t + tp]
                        (lag0 if tr == tp else lag1 if abs(tr - tp) == 1 else []).append(value)
            ratios.append(np.mean(lag0) / np.mean(lag1))
        per_seed.append(np.mean(ratios))
    assert est == pytest.approx(np.mean(per_seed))
    assert 1.0 < low < est < high  # self-influence dominates the first off-diagonal
    white, _, _ = fu.variant_ridge(noisy, "euclidean")  # a white Gram: no band beyond self
    assert abs(white) > 5 * est


def test_every_variant_and_normalization_selectable(noisy):
    base = co.temporal_heatmap(noisy, variant="gauss-newton")
    other = co.temporal_heatmap(noisy, variant="euclidean")
    assert not np.allclose(base.values, other.values)
    for kind in co.NORMALIZATIONS:
        heat = co.temporal_heatmap(noisy, variant="euclidean", normalization=kind)
        assert np.all(np.isfinite(heat.values))
    stacked = co.variant_heatmaps(noisy)
    assert list(stacked["variant"].values) == ["gauss-newton", "euclidean"]
    np.testing.assert_array_equal(stacked.sel(variant="euclidean").values, other.values)


def test_cosine_diagonal_is_one(noisy):
    npi = co.normalized_pi(noisy, normalization="cosine", epoch="all")
    flat = npi.values.reshape(*npi.shape[:3], 48, 48)
    np.testing.assert_allclose(np.diagonal(flat, axis1=-2, axis2=-1), 1.0, rtol=1e-12)


# --------------------------------------------------------------------------- dynamics, spectrum


def test_dynamics_scale_with_planted_epoch_factor(noisy):
    dyn = co.dynamics(noisy)
    assert list(dyn["epoch"].values) == [1, 5]
    # raw Pi at epoch e is (planted) amplitude / e times an epoch-independent law; a fresh
    # draw per epoch, so compare each quartile with the loop reference instead of a ratio
    for e in (1, 5):
        flat = flat_matrices(noisy, "gauss-newton", e).reshape(-1, 48, 48)
        diag = np.array([np.mean(np.diag(m)) for m in flat])
        off = np.array([(m.sum() - np.trace(m)) / (48 * 47) for m in flat])
        np.testing.assert_allclose(dyn.sel(part="diagonal", epoch=e).values,
                                   np.quantile(diag, [0.25, 0.5, 0.75]), rtol=1e-12)
        np.testing.assert_allclose(dyn.sel(part="off-diagonal", epoch=e).values,
                                   np.quantile(off, [0.25, 0.5, 0.75]), rtol=1e-12)
    # the planted exact band: mean diagonal w0^2 + 2 w1^2 minus edge losses, off-diagonal > 0
    exact = co.dynamics(make_sweep(seeds=(10,), batches=(0,), epochs=(1,)), normalization="none")
    diag_exact = (14 * (1 + 2 * 0.36) + 2 * (1 + 0.36)) / 16
    assert float(exact.sel(part="diagonal", quantile=0.5, epoch=1)) == pytest.approx(diag_exact)


def test_spectrum_exact_condition_and_effective_rank(exact):
    spec = co.spectrum(exact)
    r = exact["rank"].values
    np.testing.assert_allclose(spec["condition_number"].values, 10.0 ** (0.5 * (r - 1)), rtol=1e-12)
    for idx in np.ndindex(r.shape):
        lam = 10.0 ** (-0.5 * np.arange(r[idx]))
        p = lam / lam.sum()
        assert spec["effective_rank"].values[idx] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
        ordered = spec["eigenvalues"].values[idx]
        np.testing.assert_allclose(ordered[:r[idx]], lam, rtol=1e-12)
        assert np.all(np.isnan(ordered[r[idx]:]))
    np.testing.assert_array_equal(spec["rank"].values, r)


# --------------------------------------------------------------------------- similarity, rollouts


def test_similarity_monotone_map_gives_rank_correlation_minus_one(noisy):
    ds = noisy.copy()
    npi = co.normalized_pi(ds, variant="gauss-newton", normalization="standard", epoch="all")
    dist = np.exp(-npi.transpose("seed", "epoch", "batch", "t_resp", "c_resp", "t_pert", "c_pert"))
    ds["input_distance"] = dist
    sim = co.similarity(ds)
    assert sim.attrs["spearman_rho"] == pytest.approx(-1.0, abs=1e-12)
    med = sim["median"].values
    ok = np.isfinite(med)
    assert np.all(np.diff(med[ok]) < 0)
    assert sim.attrs["n_pairs"] == 2 * 3 * (48 * 48 - 48)  # final epoch only
    # overlapping bins: bin k spans [edge_k, edge_k+2), so it ends where bin k + 2 starts
    np.testing.assert_allclose(sim["upper"].values[:-2], sim["lower"].values[2:])
    assert np.all(sim["lower"].values[1:] < sim["upper"].values[:-1])


def test_similarity_planted_distance_bins(exact, noisy):
    # exact band: influence is exactly 0 wherever the planted distance is >= 4 (|dt| >= 3 or
    # another class) and positive at distance 2, 3 (|dt| = 1, 2 in the same class)
    sim = co.similarity(exact, n_bins=6)
    assert sim.sizes["bin"] == 6
    far = sim["lower"].values >= 4.0
    assert far.any()
    np.testing.assert_allclose(sim["median"].values[far], 0.0, atol=1e-12)
    assert 3.0 < sim["upper"].values[0] < 4.0  # first bin: distances 2 and 3 only
    assert sim["median"].values[0] > 0.1
    assert sim.attrs["spearman_rho"] < 0
    assert co.similarity(noisy).attrs["spearman_rho"] < 0
    intra = co.similarity(noisy, pairs="intra")
    assert intra.attrs["n_pairs"] == 2 * 3 * 3 * (16 * 16 - 16)


def make_rollouts(ds, ratio, a=2.0, b=1.0, n_starts=4, horizon=16):
    """Per-step SMSE equal to a - b * R for every step and start (NaN past the trajectory end)."""
    seeds, batches = ds["seed"].values, ds["batch"].values
    classes = ds["c_resp"].values
    step = a - b * ratio  # [S, C, B]
    values = np.broadcast_to(step[..., None, None], (*step.shape, n_starts, horizon)).copy()
    for s in range(n_starts):
        values[..., s, horizon - s:] = np.nan  # later starts reach fewer steps
    return xr.DataArray(values, dims=("seed", "class", "trajectory", "start", "horizon"),
                        coords={"seed": seeds, "class": classes, "trajectory": batches,
                                "start": np.arange(n_starts), "horizon": np.arange(1, horizon + 1)})


def raw_ratio(ds):
    """R per (seed, class, batch) straight from ds["pi"] (gauss-newton, final epoch) in numpy."""
    pi = ds["pi"].sel(variant="gauss-newton").isel(epoch=-1)
    raw = pi.transpose("seed", "batch", "c_resp", "t_resp", "c_pert", "t_pert").values
    s, b, c = raw.shape[:3]
    ratio = np.zeros((s, c, b))
    for i in range(s):
        for k in range(c):
            for j in range(b):
                block = raw[i, j, k, :, k, :]
                ratio[i, k, j] = (block.sum() - np.trace(block)) / np.trace(block)
    return ratio


def test_rollout_link_uses_the_raw_matrix_and_exact_anticorrelation(noisy):
    ratio = raw_ratio(noisy)
    link = co.rollout_link(noisy, make_rollouts(noisy, ratio))
    assert link.attrs["normalization"] == "none"
    np.testing.assert_allclose(link["ratio"].values, ratio, rtol=1e-12)
    np.testing.assert_allclose(co.rollout_ratio(noisy).values, ratio, rtol=1e-12)
    np.testing.assert_allclose(link["correlation"].values, -1.0, atol=1e-12)
    # cumulative error for dt = dt * (a - b R) (median over the starts reaching dt)
    np.testing.assert_allclose(link["rollout_error"].sel(dt=16).values, 16 * (2.0 - ratio))
    assert list(link["dt"].values) == list(range(1, 17))
    assert all(r == "" for r in link["reason"].values)


def test_rollout_link_standardized_on_request_differs_from_raw(noisy):
    npi = co.normalized_pi(noisy, normalization="standard").values[:, 0]  # [S, B, C, T, C, T]
    standard = np.stack([[[(npi[s, b, c, :, c, :].sum() - np.trace(npi[s, b, c, :, c, :]))
                           / np.trace(npi[s, b, c, :, c, :]) for b in range(3)]
                          for c in range(3)] for s in range(2)])
    got = co.rollout_ratio(noisy, normalization="standard").values
    np.testing.assert_allclose(got, standard, rtol=1e-12)
    # row standardization rescales each row differently: R is not scale-invariant under it
    assert not np.allclose(got, raw_ratio(noisy))


def test_rollout_link_too_few_points_gives_nan_with_reason():
    ds = make_sweep(seeds=(10,), batches=(0,), epochs=(1,), n_classes=2, noise=0.5)
    roll = make_rollouts(ds, np.array([[[0.1], [0.2]]]))
    link = co.rollout_link(ds, roll)
    assert np.all(np.isnan(link["correlation"].values))
    assert "fewer than 3 points" in str(link["reason"].values[0])


def test_all_16_published_correlations_per_pde_and_model():
    from pdeinf.analysis.registry import FINDING_RULES, PAPER_ROLLOUT_PEARSON

    assert set(co.PAPER_ROLLOUT_CORRELATION) == {("CE", "vit"), ("CE", "unet"),
                                                 ("NS", "vit"), ("NS", "unet")}
    for (pde, model), values in co.PAPER_ROLLOUT_CORRELATION.items():
        assert sorted(values) == list(range(1, 17))
        assert all(-1 <= v < 0 for v in values.values())  # all published links are negative
        # one source: the verdict registry holds the same numbers
        assert tuple(values[dt] for dt in range(1, 17)) == PAPER_ROLLOUT_PEARSON[f"{pde}-{model}"]
        rule = FINDING_RULES["rollout_link_negative"].paper_values
        assert all(rule[f"{pde}-{model} dt={dt}"] == values[dt] for dt in range(1, 17))
    assert co.PAPER_ROLLOUT_CORRELATION[("NS", "vit")][1] == -0.80
    assert co.PAPER_ROLLOUT_CORRELATION[("NS", "vit")][16] == -0.64
    series = co.paper_rollout_correlation("CE", "UNet")
    assert list(series.index) == list(range(1, 17)) and series[14] == -0.024
    with pytest.raises(InputError, match="pde/model"):
        co.paper_rollout_correlation("KdV", "unet")


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_input_error(noisy):
    with pytest.raises(InputError, match="variant"):
        co.temporal_heatmap(noisy, variant="nope")
    with pytest.raises(InputError, match="normalization"):
        co.horizon_curve(noisy, normalization="zscore")
    with pytest.raises(InputError, match="epoch"):
        co.class_matrix(noisy, epoch=99)
    with pytest.raises(InputError, match="lag"):
        co.class_matrix(noisy, lag=16)
    broken = noisy.copy(deep=True)
    broken["pi"][0, -1, 0, 0, 0, 0, 0, 0] = np.nan  # final epoch, gauss-newton
    with pytest.raises(InputError, match="NaN"):
        co.temporal_heatmap(broken)
    with pytest.raises(InputError, match="rollouts"):
        co.rollout_link(noisy, xr.DataArray(np.zeros((2, 2)), dims=("a", "b")))
    with pytest.raises(InputError, match="pi"):
        co.temporal_heatmap(noisy.drop_vars("pi"))


def test_combine_variants_from_single_variant_sweeps(noisy):
    singles = {}
    for name in ("gauss-newton", "euclidean"):
        one = noisy.copy()
        one["pi"] = noisy["pi"].sel(variant=name, drop=True)
        singles[name] = one.drop_vars("variant")
        singles[name].attrs["metric"] = name
    assert co.variants(singles["euclidean"]) == ["euclidean"]
    np.testing.assert_array_equal(
        co.temporal_heatmap(singles["euclidean"], variant="euclidean").values,
        co.temporal_heatmap(noisy, variant="euclidean").values)
    with pytest.raises(InputError, match="variant"):
        co.temporal_heatmap(singles["euclidean"], variant="gauss-newton")
    both = co.combine_variants(singles)
    assert co.variants(both) == ["gauss-newton", "euclidean"]
    np.testing.assert_array_equal(both["pi"].values, noisy["pi"].values)
