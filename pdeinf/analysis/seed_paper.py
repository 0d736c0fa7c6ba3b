"""The seed paper's figure aggregations (arXiv 2509.00024; docs/method.md section 6) from the
dataset of `pdeinf.pipeline.ensure_seed_paper`: RAW `H` (seed, batch, [bra,] t_resp, c_resp,
t_pert, c_pert), `input_distance`, `ntk_top_eigenvalue` (seed, batch). Influence is the
row-standardized Ĥ(n, m) = H(n, m) / std_m' H(n, m') (ddof 1); statistics: `seed_paper_findings`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.aggregate import QUARTILES
from pdeinf.analysis.statistics import CI_LABELS, seed_interval
from pdeinf.errors import InputError

BLOCK_DIMS = ("seed", "batch", *ag.BLOCK_ORDER)
MAX_LAG = 8  # the paper's lag range -8..8
#: Fixed colour / axis ranges of the paper's figures.
HEATMAP_RANGE, CLASS_RANGE, LAG_RANGE, SIMILARITY_RANGE = (0.0, 7.0), (0.0, 2.5), (-0.25, 7.0), (-1.0, 3.0)
#: rkhs.jl: 25 log-spaced edges between these quantiles of the positive distances, 11-bin windows.
EDGE_QUANTILES = (0.005, 0.995)
N_EDGES = 25
WINDOW_BINS = 11
MIN_SPLINE_POINTS = 5  # make_smoothing_spline's minimum


def bras(ds: xr.Dataset) -> list[str]:
    """The bras ("C", "M", "E") the dataset holds."""
    return [str(b) for b in ds["bra"].values] if "bra" in ds["H"].dims else ["C"]


def standardized(ds, bra: str = "C") -> xr.DataArray:
    """Row-standardized Ĥ of one bra, dims `BLOCK_DIMS`; InputError on NaN / Inf or a constant row."""
    h = ds["H"] if isinstance(ds, xr.Dataset) and "H" in ds else ds  # or the H DataArray
    if isinstance(h, xr.DataArray) and "bra" in h.dims:
        held = [str(b) for b in h["bra"].values]
        if bra not in held:
            raise InputError(f"bra: {bra!r} not in the dataset's bras {held}")
        h = h.sel(bra=bra, drop=True)
    what = f"ds['H'] (bra {bra!r})"
    h = ag.check_pi(h, what, lead=("seed", "batch"), finite=True).transpose(*BLOCK_DIMS)
    hn = ag.normalize_blocks(h.values, "standard")
    if not np.all(np.isfinite(hn)):
        raise InputError(f"{what}: a row is constant (zero std); cannot standardize")
    return xr.DataArray(hn, dims=h.dims, coords=h.coords, name="H_hat",
                        attrs={"bra": bra, "normalization": "standard"})


def _check_blocks(hn: xr.DataArray) -> np.ndarray:
    if not isinstance(hn, xr.DataArray) or any(d not in hn.dims for d in BLOCK_DIMS):
        raise InputError(f"hn: expected the standardized DataArray with dims {BLOCK_DIMS}")
    return ag.to_blocks(hn, ("seed", "batch"))


def _units(values: np.ndarray, hn: xr.DataArray, *dims: str, **coords) -> xr.DataArray:
    """`values` labelled (seed, batch, *dims, *coords) with `hn`'s coordinates for `dims`."""
    dims = ("seed", "batch", *dims, *coords)
    return xr.DataArray(values, dims=dims, name="H_hat", attrs=dict(hn.attrs),
                        coords={d: coords[d] if d in coords else hn[d].values for d in dims})


def heatmap(hn: xr.DataArray) -> xr.DataArray:
    """Figs. 2, 6, 16-19, 24-25, 28-29: class-mean intra-class block, mean over (seed, batch)."""
    units = _units(ag.heatmap(_check_blocks(hn), statistic="mean"), hn, "t_resp", "t_pert")
    return units.mean(("seed", "batch")).assign_attrs(hn.attrs)


def lag_units(hn: xr.DataArray, max_lag: int = MAX_LAG) -> xr.DataArray:
    """Per (seed, batch): mean Ĥ at each dt, intra- and inter-class, dims (seed, batch, pair, dt)."""
    blocks = _check_blocks(hn)
    lags = ag.lag_range(max_lag, blocks.shape[3], clip=False)
    return _units(ag.lag_curve(blocks, lags, statistic="mean"), hn, pair=list(ag.PAIRS), dt=lags)


def quartiles_over_seeds(per_seed: xr.DataArray) -> xr.DataArray:
    """Q1, median, Q3 over `seed` (linear, as Julia's `quantile`) as a leading `quantile` dim."""
    q = np.quantile(np.asarray(per_seed.values, dtype=np.float64), QUARTILES,
                    axis=per_seed.get_axis_num("seed"))
    rest = [d for d in per_seed.dims if d != "seed"]
    return xr.DataArray(q, dims=("quantile", *rest), attrs=dict(per_seed.attrs), coords={
        "quantile": list(QUARTILES), **{d: per_seed[d].values for d in rest if d in per_seed.coords}})


def lag_curve(hn: xr.DataArray, max_lag: int = MAX_LAG) -> xr.Dataset:
    """Figs. 4, 7, 20-23, 26-27, 30-31: `lag_units` per seed (`per_seed`) and its `quartiles`."""
    per_seed = lag_units(hn, max_lag).mean("batch")
    return xr.Dataset({"per_seed": per_seed, "quartiles": quartiles_over_seeds(per_seed)},
                      attrs={**hn.attrs, "n_seeds": hn.sizes["seed"], "n_batches": hn.sizes["batch"]})


def class_units(hn: xr.DataArray) -> xr.DataArray:
    """Per (seed, batch): each class block's mean over its T x T entries, (seed, batch, c_resp, c_pert)."""
    return _units(ag.class_matrix(_check_blocks(hn), statistic="mean"), hn, "c_resp", "c_pert")


def class_matrix(hn: xr.DataArray) -> xr.DataArray:
    """Figs. 3, 12-15: time-averaged class transfer matrix, mean over (seed, batch)."""
    return class_units(hn).mean(("seed", "batch")).assign_attrs(hn.attrs)


def standardized_pairs(ds: xr.Dataset, bra: str):
    """(Ĥ, Ĥ and d over the non-self pairs `[S, B, N (N - 1)]`)."""
    if "input_distance" not in ds:
        raise InputError("ds: no 'input_distance' variable")
    hn = standardized(ds, bra)
    d_flat = ag.pair_entries(ag.to_blocks(ds["input_distance"], ("seed", "batch")))
    if not np.all(np.isfinite(d_flat)):
        raise InputError("ds['input_distance']: contains NaN or Inf")
    return hn, ag.pair_entries(hn.values), d_flat


def similarity_edges(d: np.ndarray) -> np.ndarray:
    """25 log-spaced edges between the 0.5% and 99.5% quantiles of the positive distances."""
    positive = np.asarray(d, dtype=np.float64).ravel()
    positive = positive[positive > 0]
    if positive.size < 2:
        raise InputError("ds['input_distance']: fewer than 2 positive distances")
    lo, hi = np.quantile(positive, EDGE_QUANTILES)
    if not hi > lo:
        raise InputError("ds['input_distance']: the distances have no spread")
    return np.geomspace(lo, hi, N_EDGES)


def window_means(h: np.ndarray, d: np.ndarray, edges: np.ndarray):
    """Mean d (t_k), mean Ĥ (u_k) and count of the pairs in the 14 windows of 11 bins,
    [e_{k-5}, e_{k+6}) for k = 6..19 (1-based); NaN where empty."""
    rows = ag.window_stats(d, h, edges, WINDOW_BINS, lambda x, y: (x.mean(), y.mean(), x.size)
                           if x.size else (np.nan, np.nan, 0))
    return rows[:, 0], rows[:, 1], rows[:, 2].astype(int)


def smoothing_curve(t: np.ndarray, u: np.ndarray):
    """`(f, method)`: the GCV cubic smoothing spline of u(t) with linear extrapolation (rkhs.jl);
    below 5 distinct t, linear interpolation (stated in `method`)."""
    from scipy.interpolate import make_smoothing_spline  # lazy: scipy is slow to import
    t, u = np.asarray(t, dtype=np.float64), np.asarray(u, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(u)
    t, u = t[keep], u[keep]
    if t.size == 0:
        return (lambda x: np.full(np.shape(x), np.nan)), "no window holds a pair"
    order = np.argsort(t)
    t, inverse = np.unique(t[order], return_inverse=True)  # ties: average their means
    u = np.bincount(inverse, weights=u[order]) / np.bincount(inverse)
    if t.size < MIN_SPLINE_POINTS:
        method = (f"raw window means, linearly interpolated ({t.size} non-empty windows < "
                  f"{MIN_SPLINE_POINTS}, too few for the GCV spline)")
        if t.size == 1:
            return (lambda x: np.full(np.shape(x), u[0])), method
        slopes = ((u[1] - u[0]) / (t[1] - t[0]), (u[-1] - u[-2]) / (t[-1] - t[-2]))
        return _linear_beyond(lambda x: np.interp(x, t, u), t, (u[0], u[-1]), slopes), method
    spline = make_smoothing_spline(t, u, lam=None)
    ends = np.array([t[0], t[-1]])
    return _linear_beyond(spline, t, spline(ends), spline.derivative()(ends)), "gcv smoothing spline"


def _linear_beyond(f, t: np.ndarray, values, slopes):
    """`f` on [t[0], t[-1]], continued linearly outside from its end `values` with `slopes`."""

    def curve(x):
        x = np.asarray(x, dtype=np.float64)
        y = f(np.clip(x, t[0], t[-1]))
        y = np.where(x < t[0], values[0] + slopes[0] * (x - t[0]), y)
        return np.where(x > t[-1], values[1] + slopes[1] * (x - t[-1]), y)

    return curve


def zero_crossing(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first x (linearly interpolated) where y `[..., K]` goes from > 0 to <= 0 along the
    increasing grid x `[K]`, `[...]`; NaN where y never crosses (or starts <= 0)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    pos = y > 0
    cross = pos[..., :-1] & ~pos[..., 1:] & np.isfinite(y[..., 1:])
    has = cross.any(axis=-1) & pos[..., 0]
    k = np.argmax(cross, axis=-1)
    y0, y1 = (np.take_along_axis(y, j[..., None], -1)[..., 0] for j in (k, k + 1))
    x0, x1 = x[k], x[np.minimum(k + 1, len(x) - 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        root = x0 + (x1 - x0) * y0 / (y0 - y1)
    return np.where(has, root, np.nan)


def similarity_curves(ds: xr.Dataset, bra: str = "C", n_fine: int = 400) -> xr.Dataset:
    """Figs. 5, 32, 33 (rkhs.jl): per seed, the smoothing curve of Ĥ against d: `curve` (seed,
    point) at the edge midpoints b = 2..24 and its `quartiles`, `fine`, `window_*`, `method`."""
    _, h, d = standardized_pairs(ds, bra)
    edges = similarity_edges(d)
    points = 0.5 * (edges[1:-1] + edges[2:])
    fine = np.geomspace(points[0], points[-1], n_fine)
    seeds = ds["seed"].values
    windows = [window_means(h[i], d[i], edges) for i in range(len(seeds))]
    fits = [smoothing_curve(t_k, u_k) for t_k, u_k, _ in windows]
    t_k, u_k, counts = (np.array(w) for w in zip(*windows))
    curve = xr.DataArray(np.array([f(points) for f, _ in fits]), dims=("seed", "point"),
                         coords={"seed": seeds, "d": ("point", points)})
    return xr.Dataset(
        {"curve": curve, "quartiles": quartiles_over_seeds(curve).assign_coords(d=("point", points)),
         "fine": (("seed", "fine"), np.array([f(fine) for f, _ in fits])),
         "window_t": (("seed", "window"), t_k), "window_u": (("seed", "window"), u_k),
         "window_count": (("seed", "window"), counts),
         "method": ("seed", np.array([method for _, method in fits], dtype=str))},
        coords={"seed": seeds, "d": ("point", points), "d_fine": ("fine", fine)},
        attrs={"bra": bra, "edges": edges, "n_batches": ds.sizes["batch"]})


def seed_crossings(curves: xr.Dataset) -> xr.DataArray:
    """Per seed, the first zero crossing of its `similarity_curves` curve (NaN if none)."""
    fine = curves["fine"].transpose("seed", "fine").values
    return xr.DataArray(zero_crossing(np.asarray(curves["d_fine"].values, dtype=np.float64), fine),
                        dims=("seed",), coords={"seed": curves["seed"].values})


def correlation_length(curves: xr.Dataset) -> xr.DataArray:
    """Mean over seeds of `seed_crossings` with its t-interval (none if a seed never crosses)."""
    crossings = seed_crossings(curves).values
    return xr.DataArray(list(seed_interval(crossings)), dims=("ci",), coords={"ci": list(CI_LABELS)},
                        attrs={"n_seeds": int(crossings.size), "n_failed": int(np.isnan(crossings).sum())})


def box_stats(values) -> dict:
    """Tukey box (as Makie): median, q1, q3, whiskers within 1.5 IQR, the outliers beyond, n."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise InputError("values: need at least one value, all finite")
    q1, med, q3 = np.quantile(v, QUARTILES)
    iqr = q3 - q1
    inside = v[(v >= q1 - 1.5 * iqr) & (v <= q3 + 1.5 * iqr)]
    return {"median": float(med), "q1": float(q1), "q3": float(q3),
            "whislo": float(inside.min()), "whishi": float(inside.max()),
            "outliers": v[(v < q1 - 1.5 * iqr) | (v > q3 + 1.5 * iqr)].tolist(), "n": int(v.size)}


def ntk_box(ds: xr.Dataset) -> dict:
    """Figs. 8, 34, 35: `box_stats` of log10 λ_max(J Jᵀ + λ) over (seed, batch)."""
    if "ntk_top_eigenvalue" not in ds:
        raise InputError("ds: no 'ntk_top_eigenvalue' variable")
    lam = np.asarray(ds["ntk_top_eigenvalue"].values, dtype=np.float64)
    if not np.all(lam > 0):
        raise InputError("ds['ntk_top_eigenvalue']: must be positive")
    return box_stats(np.log10(lam))


def paper_epochs(last: int, every: int = 5) -> list[int]:
    """Epochs 1, 1 + every, ..., and the last (the paper's Figs. 9-11 sampling)."""
    epochs = list(range(1, int(last) + 1, every))
    return epochs + ([int(last)] if epochs[-1] != int(last) else [])


def validation_quartiles(history: pd.DataFrame, every: int = 5) -> pd.DataFrame:
    """Figs. 9-11: Q1, median, Q3 over seeds of `val_loss` (`history`) at `paper_epochs`."""
    need = {"seed", "epoch", "val_loss"}
    if not isinstance(history, pd.DataFrame) or not need <= set(history.columns):
        raise InputError(f"history: expected a DataFrame with columns {sorted(need)}")
    table = history.pivot_table(index="epoch", columns="seed", values="val_loss")
    epochs = [e for e in paper_epochs(table.index.max(), every) if e in table.index]
    q = np.quantile(table.loc[epochs].to_numpy(dtype=np.float64), QUARTILES, axis=1)
    return pd.DataFrame({"epoch": epochs, "q25": q[0], "median": q[1], "q75": q[2],
                         "n_seeds": table.shape[1]})


def final_validation(history: pd.DataFrame) -> pd.Series:
    """The last epoch's validation SMSE per seed (index seed)."""
    last = history[history["epoch"] == history.groupby("seed")["epoch"].transform("max")]
    return last.set_index("seed")["val_loss"].sort_index()
