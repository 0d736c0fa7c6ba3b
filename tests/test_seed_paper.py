"""The seed paper's aggregations (pdeinf.analysis.seed_paper) against direct numpy loops on
synthetic data whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pdeinf.analysis import paper_numbers as pn
from pdeinf.analysis import seed_paper as sp
from pdeinf.analysis import seed_paper_findings as spf
from pdeinf.errors import InputError

S, B, C, T = 3, 2, 3, 16


def _dataset(rng, s=S, b=B, c=C, t=T, bras=("C", "M")):
    h = rng.normal(size=(s, b, len(bras), t, c, t, c))
    d = rng.uniform(0.01, 3.0, size=(s, b, t, c, t, c))
    d = 0.5 * (d + d.transpose(0, 1, 4, 5, 2, 3))
    for ci in range(c):
        for ti in range(t):
            d[:, :, ti, ci, ti, ci] = 0.0
    return xr.Dataset(
        {"H": (("seed", "batch", "bra", "t_resp", "c_resp", "t_pert", "c_pert"), h),
         "input_distance": (("seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert"), d),
         "ntk_top_eigenvalue": (("seed", "batch"), 10 ** rng.uniform(6, 8, size=(s, b)))},
        coords={"seed": [10, 35, 42][:s], "batch": np.arange(b), "bra": list(bras),
                "t_resp": np.arange(t), "t_pert": np.arange(t),
                "c_resp": [f"K{i}" for i in range(c)], "c_pert": [f"K{i}" for i in range(c)]})


def _loop_standardized(ds, bra="C"):
    """Direct loops: flat n = c T + t, row / std over the 48 columns (ddof 1)."""
    h = ds["H"].sel(bra=bra).values  # [S, B, t_resp, c_resp, t_pert, c_pert]
    s, b, t, c = h.shape[:4]
    out = np.empty((s, b, c, t, c, t))
    for i in range(s):
        for j in range(b):
            m = np.empty((c * t, c * t))
            for cr in range(c):
                for tr in range(t):
                    for cp in range(c):
                        for tp in range(t):
                            m[cr * t + tr, cp * t + tp] = h[i, j, tr, cr, tp, cp]
            m = m / m.std(axis=1, ddof=1, keepdims=True)
            for cr in range(c):
                for tr in range(t):
                    for cp in range(c):
                        for tp in range(t):
                            out[i, j, cr, tr, cp, tp] = m[cr * t + tr, cp * t + tp]
    return out


@pytest.fixture(scope="module")
def ds():
    return _dataset(np.random.default_rng(0))


@pytest.fixture(scope="module")
def hn(ds):
    return sp.standardized(ds, "C")


def test_standardized_matches_loops(ds, hn):
    assert hn.dims == sp.BLOCK_DIMS
    np.testing.assert_allclose(hn.values, _loop_standardized(ds), rtol=1e-12)
    rows = hn.values.reshape(S, B, C * T, C * T)
    np.testing.assert_allclose(rows.std(axis=-1, ddof=1), 1.0, rtol=1e-12)


def test_heatmap_against_loops(hn):
    v = hn.values
    want = np.zeros((T, T))
    for i in range(S):
        for j in range(B):
            for tr in range(T):
                for tp in range(T):
                    want[tr, tp] += np.mean([v[i, j, c, tr, c, tp] for c in range(C)])
    want /= S * B
    np.testing.assert_allclose(sp.heatmap(hn).values, want, rtol=1e-12)


def test_lag_units_and_quartiles_against_loops(hn):
    v = hn.values
    units = sp.lag_units(hn)
    assert list(units.dt.values) == list(range(-8, 9))
    for i in range(S):
        for j in range(B):
            for lag in (-8, -3, 0, 1, 8):
                intra = [v[i, j, c, tr, c, tp] for c in range(C) for tr in range(T)
                         for tp in range(T) if tr - tp == lag]
                inter = [v[i, j, c, tr, k, tp] for c in range(C) for k in range(C) if k != c
                         for tr in range(T) for tp in range(T) if tr - tp == lag]
                assert len(intra) == C * (T - abs(lag))
                assert units.sel(seed=units.seed[i], batch=j, pair="intra", dt=lag) == \
                    pytest.approx(np.mean(intra), rel=1e-12)
                assert units.sel(seed=units.seed[i], batch=j, pair="inter", dt=lag) == \
                    pytest.approx(np.mean(inter), rel=1e-12)
    curve = sp.lag_curve(hn)
    per_seed = units.mean("batch").values  # [S, pair, dt]
    for q, level in zip((0.25, 0.5, 0.75), curve["quartiles"]):
        np.testing.assert_allclose(level.values, np.quantile(per_seed, q, axis=0), rtol=1e-12)
    # three seeds: median = the middle value, Q1 / Q3 halfway to the extremes (type 7)
    srt = np.sort(per_seed, axis=0)
    np.testing.assert_allclose(curve["quartiles"].sel(quantile=0.5).values, srt[1])
    np.testing.assert_allclose(curve["quartiles"].sel(quantile=0.25).values, 0.5 * (srt[0] + srt[1]))


def test_class_matrix_against_loops(hn):
    v = hn.values
    want = np.zeros((C, C))
    for cr in range(C):
        for cp in range(C):
            want[cr, cp] = np.mean([v[i, j, cr, tr, cp, tp] for i in range(S) for j in range(B)
                                    for tr in range(T) for tp in range(T)])
    np.testing.assert_allclose(sp.class_matrix(hn).values, want, rtol=1e-12)
    locked = spf.class_locked_units(hn)
    cu = sp.class_units(hn).values
    eye = np.eye(C, dtype=bool)
    np.testing.assert_allclose(locked.values, cu[..., eye].mean(-1) - cu[..., ~eye].mean(-1))


def test_decay_and_gap_units(hn):
    u = sp.lag_units(hn)
    want = (u.sel(pair="intra", dt=[-1, 1]).mean("dt") - u.sel(pair="intra", dt=[-8, 8]).mean("dt"))
    np.testing.assert_allclose(spf.decay_units(hn).values, want.values)
    gap = (u.sel(pair="intra", dt=[-1, 1]).mean("dt") - u.sel(pair="inter", dt=[-1, 1]).mean("dt"))
    np.testing.assert_allclose(spf.inter_gap_units(hn).values, gap.values)


def test_standardized_rejects_unknown_bra(ds):
    with pytest.raises(InputError, match="bra"):
        sp.standardized(ds, "E")


def test_smoothing_curve_recovers_a_known_crossing():
    t = np.linspace(0.05, 2.0, 14)
    u = 1.5 - 2.0 * t  # crosses zero at 0.75; a line is a smoothing spline's null space
    f, method = sp.smoothing_curve(t, u)
    assert method == "gcv smoothing spline"
    x = np.geomspace(0.01, 3.0, 2000)
    np.testing.assert_allclose(f(x), 1.5 - 2.0 * x, atol=1e-6)  # linear extrapolation too
    assert sp.zero_crossing(x, f(x)) == pytest.approx(0.75, rel=1e-4)


def test_smoothing_curve_falls_back_with_few_windows():
    f, method = sp.smoothing_curve(np.array([0.1, 0.2, np.nan, 0.4]), np.array([1.0, 0.5, 7.0, -0.5]))
    assert "raw window means" in method
    assert f(np.array([0.3]))[0] == pytest.approx(0.0)
    assert f(np.array([0.5]))[0] == pytest.approx(-1.0)  # linear extrapolation of the last segment


def test_zero_crossing_first_down_crossing_only():
    x = np.arange(6.0)
    y = np.array([[2.0, 1.0, -1.0, 1.0, -1.0, -2.0], [-1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(sp.zero_crossing(x, y), [1.5, np.nan])


def test_similarity_curves_recover_a_crossing():
    """Ĥ = a - b d exactly (row-wise constant std would not hold, so feed H with its
    standardization known): build H whose standardized rows are a linear function of d."""
    rng = np.random.default_rng(1)
    ds = _dataset(rng, bras=("C",))
    d = ds["input_distance"].values
    # H = 1 - d / 0.8 plus, per row, nothing else: std differs by row, so divide it out first
    target = 1.0 - d / 0.8
    s, b, t, c = d.shape[:4]
    flat = np.moveaxis(target, (2, 3, 4, 5), (3, 2, 5, 4)).reshape(s, b, c * t, c * t)
    flat = flat / flat.std(axis=-1, ddof=1, keepdims=True)  # rows of std 1: Ĥ = flat
    # Ĥ is then a per-row positive multiple of 1 - d/0.8: each row crosses zero at d = 0.8
    blocks = flat.reshape(s, b, c, t, c, t)
    ds["H"] = (("seed", "batch", "bra", "t_resp", "c_resp", "t_pert", "c_pert"),
               np.moveaxis(blocks, (2, 3, 4, 5), (3, 2, 5, 4))[:, :, None])
    curves = sp.similarity_curves(ds)
    assert curves.sizes["point"] == 23 and curves.sizes["window"] == 14
    edges = curves.attrs["edges"]
    assert len(edges) == 25
    np.testing.assert_allclose(curves["d"].values, 0.5 * (edges[1:-1] + edges[2:]))
    cl = sp.correlation_length(curves)
    assert float(cl.sel(ci="estimate")) == pytest.approx(0.8, rel=0.05)


def test_window_means_against_loops():
    rng = np.random.default_rng(2)
    d = rng.uniform(0.01, 1, 500)
    h = rng.normal(size=500)
    edges = sp.similarity_edges(d)
    t_k, u_k, n_k = sp.window_means(h, d, edges)
    for w, k in enumerate(range(6, 20)):  # 1-based k, window [e_{k-5}, e_{k+6})
        inside = (d >= edges[k - 6]) & (d < edges[k + 5])
        assert n_k[w] == inside.sum()
        assert t_k[w] == pytest.approx(d[inside].mean())
        assert u_k[w] == pytest.approx(h[inside].mean())
    assert edges[0] == pytest.approx(np.quantile(d, 0.005))
    assert edges[-1] == pytest.approx(np.quantile(d, 0.995))


def test_box_stats_tukey():
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0])
    box = sp.box_stats(v)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    assert (box["q1"], box["median"], box["q3"]) == (q1, med, q3)
    assert box["whislo"] == 1.0 and box["whishi"] == 8.0  # 100 lies beyond q3 + 1.5 IQR
    assert box["outliers"] == [100.0] and box["n"] == 9


def test_ntk_box_is_log10(ds):
    box = sp.ntk_box(ds)
    assert box["median"] == pytest.approx(np.median(np.log10(ds["ntk_top_eigenvalue"].values)))


def test_validation_quartiles_and_epochs():
    assert sp.paper_epochs(150)[:3] == [1, 6, 11] and sp.paper_epochs(150)[-2:] == [146, 150]
    assert sp.paper_epochs(2) == [1, 2]
    rows = [(s, e, 10.0 ** -(e + k)) for k, s in enumerate((10, 35, 42)) for e in range(1, 12)]
    hist = pd.DataFrame(rows, columns=["seed", "epoch", "val_loss"])
    q = sp.validation_quartiles(hist)
    assert list(q.epoch) == [1, 6, 11]
    assert q["median"].iloc[0] == pytest.approx(10.0 ** -2)
    assert sp.final_validation(hist).loc[42] == pytest.approx(10.0 ** -13)


def test_ridge_units_against_loops(hn):
    """lag0_ridge per (seed, batch): intra-class mean at dt = 0 over that at |dt| = 1, pooled
    over classes and per class, from explicit loops."""
    units = spf.ridge_units(hn)
    h = hn.transpose("seed", "batch", "c_resp", "t_resp", "c_pert", "t_pert").values
    n_c, n_t = h.shape[2], h.shape[3]
    for s in range(h.shape[0]):
        for b in range(h.shape[1]):
            lag0 = {c: [] for c in range(n_c)}
            lag1 = {c: [] for c in range(n_c)}
            for c in range(n_c):
                for tr in range(n_t):
                    for tp in range(n_t):
                        if tr == tp:
                            lag0[c].append(h[s, b, c, tr, c, tp])
                        elif abs(tr - tp) == 1:
                            lag1[c].append(h[s, b, c, tr, c, tp])
            pooled = (np.mean([v for c in lag0 for v in lag0[c]])
                      / np.mean([v for c in lag1 for v in lag1[c]]))
            assert float(units.isel(seed=s, batch=b).sel(cls="all")) == pytest.approx(pooled)
            for c in range(n_c):
                assert float(units.isel(seed=s, batch=b, cls=1 + c)) == pytest.approx(
                    np.mean(lag0[c]) / np.mean(lag1[c]))


def test_seed_spearman_is_each_seeds_rank_correlation(ds):
    from scipy.stats import spearmanr

    rho = spf.seed_spearman(ds)
    _, h, d = sp.standardized_pairs(ds, "C")
    for s in range(h.shape[0]):
        assert float(rho[s]) == pytest.approx(spearmanr(h[s].ravel(), d[s].ravel())[0])


def test_records_hold_the_registry_statistics(hn, ds):
    found = spf.influence_findings({("CE", "vit"): hn}, ["lag0_ridge", "temporal_decay"])
    (rec,) = found["temporal_decay"]
    assert rec["n_seeds"] == S and rec["n_batches"] == B and rec["paper"] == pytest.approx(0.85)
    assert rec["per_seed"] == pytest.approx(spf.decay_units(hn).mean("batch").values.tolist())
    ridge = found["lag0_ridge"]
    assert [r["cls"] for r in ridge] == ["all", *[str(c) for c in hn.c_resp.values]]
    assert ridge[0]["paper"] is not None and all(r["paper"] is None for r in ridge[1:])
    one = spf.influence_findings({("CE", "vit"): hn.isel(seed=[0])}, ["temporal_decay"])
    assert one["temporal_decay"][0]["verdict"] == "not estimable"
    lines = spf.finding_lines(found)
    assert len(lines) == 1 + len(ridge) and lines[0].startswith("lag0_ridge [CE-vit")


def test_correlation_length_without_a_crossing_is_not_estimable(ds):
    curves = sp.similarity_curves(ds)
    flat = curves.assign(fine=curves["fine"] * 0 + 1.0)  # never crosses zero
    rec = spf.similarity_findings({("CE", "unet"): ds}, {("CE", "unet"): flat})
    (length,) = rec["correlation_length"]
    assert length["verdict"] == "not estimable" and length["n_failed"] == S
    assert np.isnan(sp.correlation_length(flat).sel(ci="low"))


def test_paper_numbers_are_consistent():
    from pdeinf.config import pde_spec

    for (bra, pde, model), entry in pn.LAG_CURVES.items():
        assert bra in ("C", "M", "E") and model in ("unet", "vit")
        assert all(lo <= hi for lo, hi in entry["intra"].values())
    for (_, pde, _), entry in pn.CLASS_MATRICES.items():
        assert len(entry["diagonal"]) == len(pde_spec(pde).classes)
        for cell in entry["cells"]:
            assert set(cell) <= set(pde_spec(pde).classes)
    assert not math.isnan(pn.SIMILARITY["CE"]["crossing"][0])


def test_every_figure_renders_and_names_its_source(ds, hn):
    from pdeinf.viz import seed_paper as vs

    curves = sp.similarity_curves(ds)
    lengths = {"unet": sp.correlation_length(curves)}
    hist = pd.DataFrame([(s, e, 10.0 ** -e) for s in (10, 35) for e in range(1, 8)],
                        columns=["seed", "epoch", "val_loss"])
    figs = [vs.heatmap_figure(sp.heatmap(hn), pde="CE", model="vit"),
            vs.heatmap_figure(sp.heatmap(hn), pde="CE", model="unet", bra="M"),
            vs.lag_curve_figure(sp.lag_curve(hn), pde="CE", model="vit"),
            vs.class_matrix_figure(sp.class_matrix(hn).assign_coords(
                c_resp=["CE-RP", "CE-CRP", "CE-RPUI"], c_pert=["CE-RP", "CE-CRP", "CE-RPUI"]),
                pde="CE", model="vit"),
            vs.similarity_figure({"unet": curves, "vit": curves}, lengths, pde="NS"),
            vs.ntk_box_figure({"unet": sp.ntk_box(ds), "vit": sp.ntk_box(ds)}, pde="CE"),
            vs.validation_figure({"unet": sp.validation_quartiles(hist)}, pde="NS")]
    for fig, no in zip(figs, (2, 25, 4, 3, 33, 8, 11)):
        title = fig.axes[0].get_title()
        assert f"[seed paper, fig. {no}]" in title, title
        fig.canvas.draw()


def test_regime_stamp_sits_above_the_title(hn):
    from pdeinf.analysis.regime import regime_card
    from pdeinf.viz import seed_paper as vs

    card = regime_card(pde="CE", model="vit", parameters=100, outputs=200, pairs=768, steps=208,
                       history=None, estimator="subspace", tolerance=1e-4, seeds=3, batches=3)
    fig = vs.stamp_regime(vs.heatmap_figure(sp.heatmap(hn), pde="CE", model="vit"), [card])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    from matplotlib.text import Text

    (stamp,) = [t for t in fig.findobj(Text) if t.get_text().startswith("regime CE-vit")]
    assert "P/M 0.50" in stamp.get_text() and "not the seed paper's" in stamp.get_text()
    title = fig.axes[0].title.get_window_extent(renderer)
    assert stamp.get_window_extent(renderer).y0 >= title.y1  # never covers the title
    with pytest.raises(InputError, match="cards"):
        vs.stamp_regime(fig, [])
