"""`pdeinf.analysis.aggregate` against direct numpy loops written out here (float64, small random
matrices, agreement to 1e-12)."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.errors import InputError

C, T = 3, 4
N = C * T
TOL = {"rtol": 0.0, "atol": 1e-12}


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


@pytest.fixture(scope="module")
def blocks(rng):
    """Two leading dims (2, 3) of [C, T, C, T] blocks."""
    return rng.normal(size=(2, 3, C, T, C, T)) + 2.0


def _flat_loop(b: np.ndarray) -> np.ndarray:
    """[C, T, C, T] -> [N, N] with n = c T + t, by loops."""
    out = np.empty((N, N))
    for cr in range(C):
        for tr in range(T):
            for cp in range(C):
                for tp in range(T):
                    out[cr * T + tr, cp * T + tp] = b[cr, tr, cp, tp]
    return out


def _entries(b: np.ndarray, pair: str, lag: int) -> list[float]:
    """The entries of one [C, T, C, T] matrix at dt = lag, intra or inter class, row-major."""
    return [b[cr, tr, cp, tp] for cr in range(C) for tr in range(T) for cp in range(C)
            for tp in range(T) if tr - tp == lag and (cr == cp) == (pair == "intra")]


def test_to_blocks_reads_any_dimension_order(rng, blocks):
    """The same matrices labelled in two dimension orders give the same blocks."""
    labelled = xr.DataArray(blocks.transpose(0, 1, 3, 2, 5, 4),  # (seed, batch, t_resp, c_resp, ...)
                            dims=("seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert"))
    shuffled = labelled.transpose("c_pert", "batch", "t_resp", "seed", "t_pert", "c_resp")
    assert ag.lead_dims(shuffled) == ["batch", "seed"]
    np.testing.assert_array_equal(ag.to_blocks(labelled), blocks)
    np.testing.assert_array_equal(ag.to_blocks(shuffled, ("seed", "batch")), blocks)
    np.testing.assert_array_equal(ag.to_blocks(shuffled), blocks.transpose(1, 0, 2, 3, 4, 5))
    for i in range(2):
        for j in range(3):
            one = labelled.isel(seed=i, batch=j)
            want = np.array([[float(one.sel(c_resp=cr, t_resp=tr, c_pert=cp, t_pert=tp))
                              for cp in range(C) for tp in range(T)]
                             for cr in range(C) for tr in range(T)])
            np.testing.assert_array_equal(ag.flatten(ag.to_blocks(shuffled, ("seed", "batch")))[i, j],
                                          want)


def test_flatten_is_class_major(blocks):
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(ag.flatten(blocks)[i, j], _flat_loop(blocks[i, j]))


def test_standardize_rows_both_zero_std_conventions(rng):
    a = rng.normal(size=(2, N, N))
    a[0, 3] = 0.0  # an all-zero row
    a[1, 5] = 2.5  # a constant row
    want = np.empty_like(a)
    for k in range(2):
        for n in range(N):
            row = a[k, n]
            mean = sum(row) / N
            std = np.sqrt(sum((v - mean) ** 2 for v in row) / (N - 1))
            want[k, n] = row / std if std > 0 else row
    keep = ag.standardize_rows(a, zero_std="keep")
    np.testing.assert_allclose(keep, want, **TOL)
    np.testing.assert_array_equal(keep[0, 3], 0.0)
    np.testing.assert_array_equal(keep[1, 5], 2.5)
    ieee = ag.standardize_rows(a)
    ok = np.ones((2, N), dtype=bool)
    ok[0, 3] = ok[1, 5] = False
    np.testing.assert_allclose(ieee[ok], want[ok], **TOL)
    assert np.isnan(ieee[0, 3]).all()  # 0 / 0
    assert np.isinf(ieee[1, 5]).all()  # 2.5 / 0 (std of equal values: exactly 0)
    with pytest.raises(InputError, match="zero_std"):
        ag.standardize_rows(a, zero_std="eps")


def test_normalize_blocks_standard_and_loss(rng, blocks):
    losses = rng.uniform(0.5, 2.0, size=(2, 3, C, T))
    std = ag.normalize_blocks(blocks, "standard")
    by_loss = ag.normalize_blocks(blocks, "loss", losses=losses)
    for i in range(2):
        for j in range(3):
            flat = _flat_loop(blocks[i, j])
            want = flat / flat.std(axis=1, ddof=1, keepdims=True)
            np.testing.assert_allclose(ag.flatten(std)[i, j], want, **TOL)
            loss_flat = np.array([losses[i, j, c, t] for c in range(C) for t in range(T)])
            np.testing.assert_allclose(ag.flatten(by_loss)[i, j], flat / loss_flat[:, None], **TOL)


def test_diagonal_means(blocks):
    flat = ag.flatten(blocks)
    diag, off = ag.diagonal_means(flat)
    for i in range(2):
        for j in range(3):
            m = flat[i, j]
            assert diag[i, j] == pytest.approx(sum(m[n, n] for n in range(N)) / N, abs=1e-12)
            want = sum(m[n, k] for n in range(N) for k in range(N) if n != k) / (N * (N - 1))
            assert off[i, j] == pytest.approx(want, abs=1e-12)


def test_intra_blocks_and_cross_time_ratio(blocks):
    intra = ag.intra_blocks(blocks)
    ratio = ag.cross_time_ratio(blocks)
    assert intra.shape == (2, 3, C, T, T) and ratio.shape == (2, 3, C)
    for i in range(2):
        for j in range(3):
            flat = _flat_loop(blocks[i, j])
            for c in range(C):
                block = flat[c * T:(c + 1) * T, c * T:(c + 1) * T]
                np.testing.assert_array_equal(intra[i, j, c], block)
                trace = sum(block[t, t] for t in range(T))
                off = sum(block[t, s] for t in range(T) for s in range(T) if t != s)
                assert ratio[i, j, c] == pytest.approx(off / trace, abs=1e-12)


def test_heatmap_mean_per_matrix_and_pooled_median(blocks):
    mean = ag.heatmap(blocks)
    pooled = ag.heatmap(blocks, statistic="median", pooled=True)
    assert mean.shape == (2, 3, T, T) and pooled.shape == (T, T)
    for tr in range(T):
        for tp in range(T):
            for i in range(2):
                for j in range(3):
                    want = sum(blocks[i, j, c, tr, c, tp] for c in range(C)) / C
                    assert mean[i, j, tr, tp] == pytest.approx(want, abs=1e-12)
            values = [blocks[i, j, c, tr, c, tp] for i in range(2) for j in range(3)
                      for c in range(C)]
            assert pooled[tr, tp] == pytest.approx(np.median(values), abs=1e-12)
    with pytest.raises(InputError, match="statistic"):
        ag.heatmap(blocks, statistic="mode")


def test_time_lags_lag_range_and_entry_mask():
    dt = ag.time_lags(T)
    assert all(dt[a, b] == a - b for a in range(T) for b in range(T))
    np.testing.assert_array_equal(ag.lag_range(2, T), np.arange(-2, 3))
    np.testing.assert_array_equal(ag.lag_range(10, T), np.arange(-(T - 1), T))  # clipped
    with pytest.raises(InputError, match="max_lag"):
        ag.lag_range(-1, T)
    with pytest.raises(InputError, match="max_lag"):
        ag.lag_range(T, T, clip=False)
    mask = ag.entry_mask(C, T, "inter", (-1, 2))
    every = ag.entry_mask(C, T)
    assert every.all()
    for cr in range(C):
        for tr in range(T):
            for cp in range(C):
                for tp in range(T):
                    assert mask[cr, tr, cp, tp] == (cr != cp and tr - tp in (-1, 2))
    with pytest.raises(InputError, match="pair"):
        ag.entry_mask(C, T, "both")


def test_lag_curve_mean_median_and_pooled(blocks):
    lags = ag.lag_range(2, T)
    mean = ag.lag_curve(blocks, lags)
    median = ag.lag_curve(blocks, lags, statistic="median")
    pooled = ag.lag_curve(blocks, lags, statistic=lambda v: np.array([v.min(), v.size]))
    assert mean.shape == median.shape == (2, 3, 2, len(lags)) and pooled.shape == (2, 2, len(lags))
    for p, pair in enumerate(ag.PAIRS):
        for k, lag in enumerate(lags):
            for i in range(2):
                for j in range(3):
                    values = _entries(blocks[i, j], pair, lag)
                    assert mean[i, j, p, k] == pytest.approx(sum(values) / len(values), abs=1e-12)
                    assert median[i, j, p, k] == pytest.approx(np.median(values), abs=1e-12)
            every = [v for i in range(2) for j in range(3) for v in _entries(blocks[i, j], pair, lag)]
            assert pooled[0, p, k] == min(every) and pooled[1, p, k] == len(every)


def test_lag_curve_one_class_has_no_inter_class_entries(rng):
    one = rng.normal(size=(2, 1, T, 1, T))
    curve = ag.lag_curve(one, ag.lag_range(1, T))
    assert np.isnan(curve[:, 1]).all() and np.isfinite(curve[:, 0]).all()


def test_class_matrix_every_time_pair_at_a_lag_and_pooled(blocks):
    every = ag.class_matrix(blocks)
    at_lag = ag.class_matrix(blocks, lag=1, statistic="median")
    pooled = ag.class_matrix(blocks, lag=-1, statistic="median", pooled=True)
    pooled_all = ag.class_matrix(blocks, pooled=True)
    assert every.shape == at_lag.shape == (2, 3, C, C) and pooled.shape == (C, C)
    for cr in range(C):
        for cp in range(C):
            for i in range(2):
                for j in range(3):
                    b = blocks[i, j]
                    values = [b[cr, tr, cp, tp] for tr in range(T) for tp in range(T)]
                    assert every[i, j, cr, cp] == pytest.approx(sum(values) / len(values), abs=1e-12)
                    lag1 = [b[cr, tr, cp, tr - 1] for tr in range(1, T)]
                    assert at_lag[i, j, cr, cp] == pytest.approx(np.median(lag1), abs=1e-12)
            lagm1 = [blocks[i, j, cr, tr, cp, tr + 1] for i in range(2) for j in range(3)
                     for tr in range(T - 1)]
            assert pooled[cr, cp] == pytest.approx(np.median(lagm1), abs=1e-12)
            values = [blocks[i, j, cr, tr, cp, tp] for i in range(2) for j in range(3)
                      for tr in range(T) for tp in range(T)]
            assert pooled_all[cr, cp] == pytest.approx(sum(values) / len(values), abs=1e-12)


def test_diagonal_contrast(rng):
    m = rng.normal(size=(4, C, C))
    got = ag.diagonal_contrast(m)
    for k in range(4):
        diag = sum(m[k, c, c] for c in range(C)) / C
        off = sum(m[k, a, b] for a in range(C) for b in range(C) if a != b) / (C * (C - 1))
        assert got[k] == pytest.approx(diag - off, abs=1e-12)
    with pytest.warns(RuntimeWarning):  # one class: no off-diagonal entry
        assert np.isnan(ag.diagonal_contrast(np.ones((1, 1)))).all()


def test_pearson_both_zero_spread_conventions(rng):
    x = rng.normal(size=(3, 20))
    y = 0.5 * x + rng.normal(size=(3, 20))
    for zero_spread in ("ieee", "tolerance"):
        r = ag.pearson(x, y, zero_spread=zero_spread)
        for k in range(3):
            mx, my = sum(x[k]) / 20, sum(y[k]) / 20
            sxy = sum((a - mx) * (b - my) for a, b in zip(x[k], y[k]))
            sxx = sum((a - mx) ** 2 for a in x[k])
            syy = sum((b - my) ** 2 for b in y[k])
            assert r[k] == pytest.approx(sxy / np.sqrt(sxx * syy), abs=1e-12)
    np.testing.assert_allclose(ag.pearson(x.T, y.T, axis=0), ag.pearson(x, y), **TOL)
    # broadcasting: one x against several y
    np.testing.assert_allclose(ag.pearson(x[:1], y), [ag.pearson(x[0], y[k]) for k in range(3)], **TOL)
    constant = np.full(20, 0.1)  # its mean is not exactly 0.1: a rounding-level spread
    assert np.isnan(ag.pearson(constant, y[0], zero_spread="tolerance"))
    assert np.isnan(ag.pearson(np.zeros(20), y[0]))  # 0 / 0
    with pytest.raises(InputError, match="zero_spread"):
        ag.pearson(x, y, zero_spread="clip")
