"""The seed paper's figure aggregations (arXiv 2509.00024; recipes: docs/method.md section 6).

Input: the dataset of `pdeinf.pipeline.ensure_seed_paper` (or any of the same layout): `H` with
dims `(seed, batch, [bra,] t_resp, c_resp, t_pert, c_pert)` RAW (rows = response example,
columns = perturbing example), `input_distance` `(seed, batch, t_resp, c_resp, t_pert, c_pert)`,
`ntk_top_eigenvalue` `(seed, batch)`.

Every influence value is the row-standardized Ĥ(n, m) = H(n, m) / std_m' H(n, m') of each
`N x N` matrix (`N = C T`, flat index `n = c T + t`, `normalize(..., "standard")`, ddof 1).
Aggregations exactly as the paper's plot scripts (docs/method.md section 6); each function names
the figures it draws.

The findings' statistics and verdicts are in `pdeinf.analysis.seed_paper_findings`.
Pure: xarray / numpy / pandas in and out. Influence values are dimensionless; times and lags in
snapshot steps; distances are the scaled input distance of `diffs.jl` (dimensionless).
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
HEATMAP_RANGE = (0.0, 7.0)
CLASS_RANGE = (0.0, 2.5)
LAG_RANGE = (-0.25, 7.0)
SIMILARITY_RANGE = (-1.0, 3.0)
#: rkhs.jl: 25 log-spaced edges between these quantiles of the positive distances, 11-bin windows.
EDGE_QUANTILES = (0.005, 0.995)
N_EDGES = 25
WINDOW_BINS = 11
MIN_SPLINE_POINTS = 5  # make_smoothing_spline's minimum


# --------------------------------------------------------------------------- standardization


def _h_array(ds, bra: str) -> xr.DataArray:
    h = ds["H"] if isinstance(ds, xr.Dataset) and "H" in ds else ds
    if not isinstance(h, xr.DataArray):
        raise InputError("ds: expected the seed-paper xr.Dataset (with 'H') or the H DataArray")
    ag.check_pi(h, "ds['H']", lead=("seed", "batch"))
    if "bra" in h.dims:
        held = [str(b) for b in h["bra"].values]
        if bra not in held:
            raise InputError(f"bra: {bra!r} not in the dataset's bras {held}")
        h = h.sel(bra=bra, drop=True)
    return h


def bras(ds: xr.Dataset) -> list[str]:
    """The bras ("C", "M", "E") the dataset holds."""
    return [str(b) for b in ds["bra"].values] if "bra" in ds["H"].dims else ["C"]


def standardized(ds, bra: str = "C") -> xr.DataArray:
    """Row-standardized Ĥ of one bra, dims `BLOCK_DIMS` (seed, batch, c_resp, t_resp, c_pert,
    t_pert). Each (seed, batch) matrix is flattened with n = c T + t (rows = response), divided
    row-wise by its std over all N columns (ddof 1), and reshaped back."""
    h = _h_array(ds, bra).transpose(*BLOCK_DIMS)
    values = np.asarray(h.values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"ds['H'] (bra {bra!r}): contains NaN or Inf")
    hn = ag.normalize_blocks(values, "standard")
    if not np.all(np.isfinite(hn)):
        raise InputError(f"ds['H'] (bra {bra!r}): a row is constant (zero std); cannot standardize")
    return xr.DataArray(hn, dims=h.dims, coords=h.coords, name="H_hat",
                        attrs={"bra": bra, "normalization": "standard"})


def _check_blocks(hn: xr.DataArray) -> np.ndarray:
    if not isinstance(hn, xr.DataArray) or any(d not in hn.dims for d in BLOCK_DIMS):
        raise InputError(f"hn: expected the standardized DataArray with dims {BLOCK_DIMS}")
    return ag.to_blocks(hn, ("seed", "batch"))


def _units(values: np.ndarray, hn: xr.DataArray, dims: tuple[str, ...]) -> xr.DataArray:
    """Per-(seed, batch) `values` labelled (seed, batch, *dims) with `hn`'s coordinates."""
    dims = ("seed", "batch", *dims)
    return xr.DataArray(values, dims=dims, coords={d: hn[d].values for d in dims}, name="H_hat",
                        attrs=dict(hn.attrs))


# --------------------------------------------------------------------------- heatmap


def heatmap_units(hn: xr.DataArray) -> xr.DataArray:
    """Per (seed, batch): mean over classes of the intra-class block, dims (seed, batch,
    t_resp, t_pert)."""
    return _units(ag.heatmap(_check_blocks(hn), statistic="mean"), hn, ("t_resp", "t_pert"))


def heatmap(hn: xr.DataArray) -> xr.DataArray:
    """Figs. 2, 6, 16-19, 24-25, 28-29: `heatmap_units` averaged over (seed, batch),
    dims (t_resp, t_pert)."""
    return heatmap_units(hn).mean(("seed", "batch")).assign_attrs(hn.attrs)


# --------------------------------------------------------------------------- lag curves


def lag_units(hn: xr.DataArray, max_lag: int = MAX_LAG) -> xr.DataArray:
    """Per (seed, batch): mean Ĥ over entries with τ - t = Δ, intra (c = c') and inter (c != c')
    class, Δ in -max_lag..max_lag. Dims (seed, batch, pair, dt)."""
    blocks = _check_blocks(hn)
    lags = ag.lag_range(max_lag, blocks.shape[3], clip=False)
    out = ag.lag_curve(blocks, lags, statistic="mean")  # one class: inter-class NaN
    return xr.DataArray(out, dims=("seed", "batch", "pair", "dt"),
                        coords={"seed": hn["seed"].values, "batch": hn["batch"].values,
                                "pair": list(ag.PAIRS), "dt": lags},
                        name="H_hat", attrs=dict(hn.attrs))


def quartiles_over_seeds(per_seed: xr.DataArray) -> xr.DataArray:
    """Q1, median, Q3 over the `seed` dim (linear interpolation, as Julia's `quantile`);
    a leading `quantile` dim (0.25, 0.5, 0.75)."""
    q = np.quantile(np.asarray(per_seed.values, dtype=np.float64), QUARTILES,
                    axis=per_seed.get_axis_num("seed"))
    rest = [d for d in per_seed.dims if d != "seed"]
    return xr.DataArray(q, dims=("quantile", *rest),
                        coords={"quantile": list(QUARTILES),
                                **{d: per_seed[d].values for d in rest if d in per_seed.coords}},
                        attrs=dict(per_seed.attrs))


def lag_curve(hn: xr.DataArray, max_lag: int = MAX_LAG) -> xr.Dataset:
    """Figs. 4, 7, 20-23, 26-27, 30-31: `per_seed` (seed, pair, dt) = mean over each seed's
    batches of `lag_units`; `quartiles` (quantile, pair, dt) over seeds."""
    per_seed = lag_units(hn, max_lag).mean("batch")
    return xr.Dataset({"per_seed": per_seed, "quartiles": quartiles_over_seeds(per_seed)},
                      attrs={**hn.attrs, "n_seeds": hn.sizes["seed"],
                             "n_batches": hn.sizes["batch"]})


# --------------------------------------------------------------------------- class matrix


def class_units(hn: xr.DataArray) -> xr.DataArray:
    """Per (seed, batch): mean of each (response class, perturbing class) block over all
    T x T time pairs, dims (seed, batch, c_resp, c_pert)."""
    return _units(ag.class_matrix(_check_blocks(hn), statistic="mean"), hn, ("c_resp", "c_pert"))


def class_matrix(hn: xr.DataArray) -> xr.DataArray:
    """Figs. 3, 12-15: time-averaged class transfer matrix, mean over (seed, batch)."""
    return class_units(hn).mean(("seed", "batch")).assign_attrs(hn.attrs)


# --------------------------------------------------------------------------- interpolation


def standardized_pairs(ds: xr.Dataset, bra: str):
    """Ĥ and d over non-self pairs: arrays [S, B, P] (P = N (N - 1))."""
    if "input_distance" not in ds:
        raise InputError("ds: no 'input_distance' variable")
    hn = standardized(ds, bra)
    d = ag.flatten(ag.to_blocks(ds["input_distance"], ("seed", "batch")))
    off = ~np.eye(d.shape[-1], dtype=bool)
    h_flat = ag.flatten(hn.values)[..., off]
    d_flat = d[..., off]
    if not np.all(np.isfinite(d_flat)):
        raise InputError("ds['input_distance']: contains NaN or Inf")
    return hn, h_flat, d_flat


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


def evaluation_points(edges: np.ndarray) -> np.ndarray:
    """The 23 arithmetic midpoints (e_b + e_{b+1}) / 2, b = 2..24 (1-based)."""
    return 0.5 * (edges[1:-1] + edges[2:])


def window_means(h: np.ndarray, d: np.ndarray, edges: np.ndarray):
    """The 14 overlapping windows [e_{k-5}, e_{k+6}), k = 6..19 (1-based; 11 bins each):
    mean d (t_k) and mean Ĥ (u_k) of the pairs in each, and the counts. Empty windows: NaN."""
    h, d = np.asarray(h, dtype=np.float64).ravel(), np.asarray(d, dtype=np.float64).ravel()
    n_win = len(edges) - WINDOW_BINS
    t_k, u_k, counts = np.full(n_win, np.nan), np.full(n_win, np.nan), np.zeros(n_win, int)
    for w in range(n_win):
        inside = (d >= edges[w]) & (d < edges[w + WINDOW_BINS]) & (d > 0)
        counts[w] = int(inside.sum())
        if counts[w]:
            t_k[w], u_k[w] = d[inside].mean(), h[inside].mean()
    return t_k, u_k, counts


def smoothing_curve(t: np.ndarray, u: np.ndarray):
    """A GCV cubic smoothing spline of u(t) (linear t) with linear extrapolation outside
    [t_min, t_max], as rkhs.jl's `RegularizationSmooth(...; alg=:gcv_svd, extrapolation=Linear)`.

    Returns `(f, method)`: `f(x)` evaluates the curve; `method` is "gcv smoothing spline", or,
    with fewer than 5 distinct window means (make_smoothing_spline's minimum), a stated fallback:
    linear interpolation of the raw window means (linear extrapolation as well)."""
    from scipy.interpolate import make_smoothing_spline

    t, u = np.asarray(t, dtype=np.float64), np.asarray(u, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(u)
    t, u = t[keep], u[keep]
    if t.size:
        order = np.argsort(t)
        t, u = t[order], u[order]
        t, inverse = np.unique(t, return_inverse=True)  # ties: average their means
        u = np.bincount(inverse, weights=u) / np.bincount(inverse)
    if t.size == 0:
        return (lambda x: np.full(np.shape(x), np.nan)), "no window holds a pair"
    if t.size < MIN_SPLINE_POINTS:
        method = (f"raw window means, linearly interpolated ({t.size} non-empty windows < "
                  f"{MIN_SPLINE_POINTS}, too few for the GCV spline)")
        if t.size == 1:
            return (lambda x: np.full(np.shape(x), u[0])), method
        slopes = ((u[1] - u[0]) / (t[1] - t[0]), (u[-1] - u[-2]) / (t[-1] - t[-2]))
        return _linear_beyond(lambda x: np.interp(x, t, u), t, (u[0], u[-1]), slopes), method
    spline = make_smoothing_spline(t, u, lam=None)
    ends = np.array([t[0], t[-1]])
    return _linear_beyond(spline, t, spline(ends), spline.derivative()(ends)), \
        "gcv smoothing spline"


def _linear_beyond(f, t: np.ndarray, values, slopes):
    """`f` on [t[0], t[-1]], continued linearly outside from its end `values` with `slopes`."""

    def curve(x):
        x = np.asarray(x, dtype=np.float64)
        y = f(np.clip(x, t[0], t[-1]))
        y = np.where(x < t[0], values[0] + slopes[0] * (x - t[0]), y)
        return np.where(x > t[-1], values[1] + slopes[1] * (x - t[-1]), y)

    return curve


def zero_crossing(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first x where y goes from > 0 to <= 0 along the last axis (linear interpolation
    between the neighbouring grid points); NaN where y never crosses (or starts <= 0).
    x: [K] increasing; y: [..., K]. Returns [...]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    pos = y > 0
    cross = pos[..., :-1] & ~pos[..., 1:] & np.isfinite(y[..., 1:])
    has = cross.any(axis=-1) & pos[..., 0]
    k = np.argmax(cross, axis=-1)
    y0 = np.take_along_axis(y, k[..., None], -1)[..., 0]
    y1 = np.take_along_axis(y, (k + 1)[..., None], -1)[..., 0]
    x0, x1 = x[k], x[np.minimum(k + 1, len(x) - 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        root = x0 + (x1 - x0) * y0 / (y0 - y1)
    return np.where(has, root, np.nan)


def similarity_curves(ds: xr.Dataset, bra: str = "C", n_fine: int = 400) -> xr.Dataset:
    """Figs. 5, 32, 33 (rkhs.jl): per-seed smoothing curves of Ĥ against the scaled input
    distance d, pooled over each seed's batches (non-self pairs, intra and inter class).

    Returns a Dataset: `curve` (seed, point) at the 23 evaluation points (coord `d`),
    `quartiles` (quantile, point) over seeds, `fine` (seed, fine) on `n_fine` log-spaced points
    spanning the evaluation points (coord `d_fine`, for the zero crossing), `window_t`,
    `window_u`, `window_count` (seed, window), `method` (seed) as str, attrs `edges`."""
    _, h, d = standardized_pairs(ds, bra)
    edges = similarity_edges(d)
    points = evaluation_points(edges)
    fine = np.geomspace(points[0], points[-1], n_fine)
    seeds = ds["seed"].values
    windows = [window_means(h[i], d[i], edges) for i in range(len(seeds))]
    fits = [smoothing_curve(t_k, u_k) for t_k, u_k, _ in windows]
    t_k, u_k, counts = (np.array(w) for w in zip(*windows))
    curve = xr.DataArray(np.array([f(points) for f, _ in fits]), dims=("seed", "point"),
                         coords={"seed": seeds, "d": ("point", points)})
    return xr.Dataset(
        {"curve": curve,
         "quartiles": quartiles_over_seeds(curve).assign_coords(d=("point", points)),
         "fine": (("seed", "fine"), np.array([f(fine) for f, _ in fits])),
         "window_t": (("seed", "window"), t_k),
         "window_u": (("seed", "window"), u_k),
         "window_count": (("seed", "window"), counts),
         "method": ("seed", np.array([method for _, method in fits], dtype=str))},
        coords={"seed": seeds, "d": ("point", points), "d_fine": ("fine", fine)},
        attrs={"bra": bra, "edges": edges, "n_batches": ds.sizes["batch"]},
    )


def seed_crossings(curves: xr.Dataset) -> xr.DataArray:
    """Per seed, the d where that seed's smoothing curve (`similarity_curves`) first crosses
    zero (NaN where it does not), dims (seed,)."""
    x = np.asarray(curves["d_fine"].values, dtype=np.float64)
    fine = curves["fine"].transpose("seed", "fine").values
    return xr.DataArray(zero_crossing(x, fine), dims=("seed",),
                        coords={"seed": curves["seed"].values})


def correlation_length(curves: xr.Dataset) -> xr.DataArray:
    """The dynamic correlation length: the mean over seeds of `seed_crossings` with its
    t-interval (`ci` dim). A seed whose curve does not cross is a failed unit: then there is no
    interval."""
    crossings = seed_crossings(curves).values
    return xr.DataArray(list(seed_interval(crossings)), dims=("ci",),
                        coords={"ci": list(CI_LABELS)},
                        attrs={"n_seeds": int(crossings.size),
                               "n_failed": int(np.isnan(crossings).sum())})


# --------------------------------------------------------------------------- NTK box, training


def box_stats(values) -> dict:
    """Tukey box (as Makie's boxplot): median, Q1, Q3, whiskers at the most extreme values
    within 1.5 IQR of the box, the outliers beyond (hidden in the figure), n."""
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
    """Figs. 9-11: Q1, median, Q3 over seeds of `val_loss` at `paper_epochs` (columns epoch,
    q25, median, q75, n_seeds). history: columns seed, epoch, val_loss."""
    need = {"seed", "epoch", "val_loss"}
    if not isinstance(history, pd.DataFrame) or not need <= set(history.columns):
        raise InputError(f"history: expected a DataFrame with columns {sorted(need)}")
    table = history.pivot_table(index="epoch", columns="seed", values="val_loss")
    epochs = [e for e in paper_epochs(table.index.max(), every) if e in table.index]
    vals = table.loc[epochs].to_numpy(dtype=np.float64)
    q = np.quantile(vals, QUARTILES, axis=1)
    return pd.DataFrame({"epoch": epochs, "q25": q[0], "median": q[1], "q75": q[2],
                         "n_seeds": table.shape[1]})


def final_validation(history: pd.DataFrame) -> pd.Series:
    """The last epoch's validation SMSE per seed (index seed)."""
    last = history[history["epoch"] == history.groupby("seed")["epoch"].transform("max")]
    return last.set_index("seed")["val_loss"].sort_index()
