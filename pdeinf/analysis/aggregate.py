"""Aggregations of influence matrices, each written once; the studies call these. A matrix is flat
`[..., N, N]` (`N = C T`, n = c T + t) or blocks `[..., C, T, C, T]` (c_resp, t_resp, c_pert,
t_pert); rows are the response. A lag is dt = t_resp - t_pert. Conventions that differ between
studies are parameters; NaN propagates; results are float64 numpy.
"""
from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from pdeinf.errors import InputError
from pdeinf.influence.normalize import normalize
from pdeinf.influence.task import PI_DIMS

#: The block order of one matrix's labelled dims (rows = response, class-major).
BLOCK_ORDER = ("c_resp", "t_resp", "c_pert", "t_pert")
PAIRS = ("intra", "inter")
QUARTILES = (0.25, 0.5, 0.75)
_STATISTICS = {"mean": np.mean, "median": np.median}


def lead_dims(pi: xr.DataArray) -> list[str]:
    """The dims of `pi` that are not `PI_DIMS`, in `pi`'s order."""
    return [d for d in pi.dims if d not in PI_DIMS]


def check_pi(pi, what: str = "pi", lead=(), finite: bool = False) -> xr.DataArray:
    """`pi` if a DataArray with `PI_DIMS`, `lead`, square blocks (and `finite` values); else InputError."""
    if not isinstance(pi, xr.DataArray):
        raise InputError(f"{what}: expected an xr.DataArray, got {type(pi).__name__}")
    missing = [d for d in (*lead, *PI_DIMS) if d not in pi.dims]
    if missing:
        raise InputError(f"{what}: missing dimension(s) {missing}; has {pi.dims}")
    if pi.sizes["t_resp"] != pi.sizes["t_pert"] or pi.sizes["c_resp"] != pi.sizes["c_pert"]:
        raise InputError(f"{what}: response and perturbation axes differ in size")
    if finite and not np.all(np.isfinite(pi.values)):
        raise InputError(f"{what}: contains NaN or Inf")
    return pi


def to_blocks(pi: xr.DataArray, lead=None) -> np.ndarray:
    """Labelled `pi` (any dim order) -> float64 blocks `[*lead, C, T, C, T]` (default `lead_dims`)."""
    lead = lead_dims(pi) if lead is None else list(lead)
    return np.asarray(pi.transpose(*lead, *BLOCK_ORDER).values, dtype=np.float64)


def flatten(blocks) -> np.ndarray:
    """Blocks `[..., C, T, C, T]` -> flat `[..., N, N]`, n = c T + t."""
    blocks = np.asarray(blocks)
    c, t = blocks.shape[-4], blocks.shape[-3]
    return blocks.reshape(*blocks.shape[:-4], c * t, c * t)


def unflatten(flat, n_classes: int) -> np.ndarray:
    """Flat `[..., N, N]` -> blocks `[..., C, T, C, T]` (n = c T + t), C = `n_classes`."""
    flat = np.asarray(flat)
    n = flat.shape[-1]
    if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 1 and n % n_classes == 0):
        raise InputError(f"n_classes={n_classes!r}: must be a positive integer dividing N = {n}")
    return flat.reshape(*flat.shape[:-2], n_classes, n // n_classes, n_classes, n // n_classes)


def standardize_rows(pi, *, zero_std: str = "ieee") -> np.ndarray:
    """Flat `pi` over its row std (ddof 1); constant rows: inf / nan ("ieee") or kept ("keep")."""
    a = np.asarray(pi, dtype=np.float64)
    if zero_std == "ieee":
        return np.asarray(normalize(a, "standard"), dtype=np.float64)
    if zero_std == "keep":
        std = a.std(axis=-1, ddof=1, keepdims=True)
        return a / np.where(std > 0, std, 1.0)
    raise InputError(f"zero_std={zero_std!r}: expected 'ieee' or 'keep'")


def normalize_blocks(blocks, kind: str = "standard", *, losses=None) -> np.ndarray:
    """Blocks, each matrix normalised flat by `normalize(., kind)`; `losses` `[..., C, T]` for "loss"."""
    blocks = np.asarray(blocks, dtype=np.float64)
    if losses is not None:
        losses = np.asarray(losses, dtype=np.float64)
        losses = losses.reshape(*losses.shape[:-2], -1)
    flat = normalize(flatten(blocks), kind, losses=losses)
    return np.asarray(flat, dtype=np.float64).reshape(blocks.shape)


def diagonal_means(pi) -> tuple[np.ndarray, np.ndarray]:
    """Flat `pi` `[..., N, N]` -> (mean diagonal entry, mean off-diagonal entry), each `[...]`."""
    pi = np.asarray(pi, dtype=np.float64)
    n = pi.shape[-1]
    diag = np.trace(pi, axis1=-2, axis2=-1) / n
    return diag, (pi.sum(axis=(-2, -1)) - diag * n) / (n * (n - 1))


def intra_blocks(blocks) -> np.ndarray:
    """Blocks `[..., C, T, C, T]` -> intra-class blocks `[..., C, T, T]` (class, t_resp, t_pert)."""
    return np.moveaxis(np.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)


def cross_time_ratio(blocks) -> np.ndarray:
    """The follow-up's R per class, `[..., C, T, C, T]` -> `[..., C]`: (sum of the intra-class
    block minus its trace) over its trace (inf / nan for a zero trace)."""
    intra = intra_blocks(np.asarray(blocks, dtype=np.float64))
    diag = np.trace(intra, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (intra.sum(axis=(-2, -1)) - diag) / diag


def heatmap(blocks, *, statistic: str = "mean", pooled: bool = False) -> np.ndarray:
    """Intra-class heatmap (t_resp, t_pert): "mean" / "median" over classes per matrix -> `[..., T, T]`,
    or with `pooled` over every leading index and class -> `[T, T]`."""
    intra, reduce = intra_blocks(blocks), _reducer(statistic)
    return reduce(intra.reshape(-1, *intra.shape[-2:]), axis=0) if pooled else reduce(intra, axis=-3)


def time_lags(n_times: int) -> np.ndarray:
    """`[T, T]` integer matrix of dt = t_resp - t_pert."""
    return np.subtract.outer(np.arange(n_times), np.arange(n_times))


def lag_range(max_lag, n_times: int, *, clip: bool = True) -> np.ndarray:
    """Lags -max_lag..max_lag; `clip`: capped at n_times - 1, else max_lag must lie in 0..n_times - 1."""
    if clip:
        if max_lag < 0:
            raise InputError(f"max_lag: must be >= 0, got {max_lag}")
        max_lag = int(min(max_lag, n_times - 1))
    elif not (isinstance(max_lag, (int, np.integer)) and 0 <= max_lag < n_times):
        raise InputError(f"max_lag: must be an integer in 0..{n_times - 1}, got {max_lag!r}")
    return np.arange(-max_lag, max_lag + 1)


def entry_mask(n_classes: int, n_times: int, pair: str = "all", lags=None) -> np.ndarray:
    """Boolean `[C, T, C, T]`: classes `pair` ("intra", "inter", "all"), dt in `lags` (None: all)."""
    if pair not in (*PAIRS, "all"):
        raise InputError(f"pair={pair!r}: expected 'intra', 'inter' or 'all'")
    same = np.eye(n_classes, dtype=bool)
    classes = {"intra": same, "inter": ~same, "all": np.ones_like(same)}[pair]
    dt = time_lags(n_times)
    times = np.ones_like(dt, dtype=bool) if lags is None else np.isin(dt, lags)
    return classes[:, None, :, None] & times[None, :, None, :]


def pair_entries(blocks, pair: str = "all") -> np.ndarray:
    """The entries n != m whose classes are `pair`, `[..., C, T, C, T]` -> `[..., K]` (flat order)."""
    blocks = np.asarray(blocks)
    n_c, n_t = blocks.shape[-4], blocks.shape[-3]
    return blocks[..., entry_mask(n_c, n_t, pair) & ~entry_mask(n_c, n_t, "intra", 0)]


def lag_curve(blocks, lags, *, statistic="mean") -> np.ndarray:
    """Intra- and inter-class entries at each of `lags`: "mean" / "median" per matrix -> `[..., 2, L]`,
    or a function of the entries `[..., K]` -> `[*S, 2, L]`; NaN where no entry is."""
    blocks = np.asarray(blocks)
    n_c, n_t = blocks.shape[-4], blocks.shape[-3]
    reduce = statistic if callable(statistic) else functools.partial(_reducer(statistic), axis=-1)
    out = None
    for p, pair in enumerate(PAIRS):
        for k, lag in enumerate(lags):
            mask = entry_mask(n_c, n_t, pair, lag)
            if mask.any():
                value = np.asarray(reduce(blocks[..., mask]), dtype=np.float64)
                if out is None:
                    out = np.full((*value.shape, len(PAIRS), len(lags)), np.nan)
                out[..., p, k] = value
    return out


def class_matrix(blocks, *, lag=None, statistic: str = "mean", pooled: bool = False) -> np.ndarray:
    """Each (c_resp, c_pert) block's "mean" / "median" over all time pairs or those with dt in
    `lag` (one lag or several): per matrix `[..., C, C]`, or with `pooled` over all leading
    indices `[C, C]`."""
    blocks, reduce = np.asarray(blocks), _reducer(statistic)
    if lag is None and not pooled:
        return reduce(blocks, axis=(-3, -1))
    pairs = np.moveaxis(blocks, -2, -3)  # [..., C, C, T, T]
    values = (pairs.reshape(*pairs.shape[:-2], -1) if lag is None
              else pairs[..., np.isin(time_lags(blocks.shape[-3]), lag)])  # [..., C, C, K]
    if pooled:
        values = np.moveaxis(values, (-3, -2), (0, 1))
        values = values.reshape(*values.shape[:2], -1)
    return reduce(values, axis=-1)


def diagonal_contrast(matrix) -> np.ndarray:
    """`[..., C, C]` -> `[...]`: mean diagonal minus mean off-diagonal entry (NaN if C = 1)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    eye = np.eye(matrix.shape[-1], dtype=bool)
    return matrix[..., eye].mean(-1) - matrix[..., ~eye].mean(-1)


def quartiles(values) -> tuple[float, float, float, int]:
    """Q1, median, Q3 and count of the finite `values` (NaN and count 0 when none is)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (np.nan, np.nan, np.nan, 0)
    return (*(float(q) for q in np.quantile(values, QUARTILES)), int(values.size))


def window_stats(x, y, edges, width: int, statistic) -> np.ndarray:
    """Influence `y` against distance `x` in windows of `width` bins: `statistic(x_in, y_in)` of
    the points with edges[w] <= x < edges[w + width], w = 0..len(edges) - width - 1, stacked."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    return np.array([statistic(x[inside], y[inside]) for inside in
                     ((x >= lo) & (x < hi) for lo, hi in zip(edges[:-width], edges[width:]))],
                    dtype=np.float64)


def pearson(x, y, *, axis: int = -1, zero_spread: str = "ieee") -> np.ndarray:
    """Pearson r along `axis`; a constant input gives 0 / 0 (`zero_spread` "ieee") or NaN within
    1e-12 max|x| max|y| n of zero ("tolerance", r clipped)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xc, yc = (a - a.mean(axis=axis, keepdims=True) for a in (x, y))
    num = (xc * yc).sum(axis=axis)
    den = np.sqrt((xc * xc).sum(axis=axis) * (yc * yc).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    if zero_spread == "ieee":
        return r
    if zero_spread == "tolerance":
        tiny = 1e-12 * (np.abs(x).max(axis=axis) * np.abs(y).max(axis=axis) + 1e-300) * x.shape[axis]
        return np.where(den > tiny, np.clip(r, -1.0, 1.0), np.nan)
    raise InputError(f"zero_spread={zero_spread!r}: expected 'ieee' or 'tolerance'")


def _reducer(statistic: str):
    if statistic not in _STATISTICS:
        raise InputError(f"statistic={statistic!r}: expected one of {', '.join(_STATISTICS)}")
    return _STATISTICS[statistic]
