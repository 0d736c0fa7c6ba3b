"""Aggregations of influence matrices, each written once; the studies call these.

Layout. One influence matrix of C classes x T times is held either flat, `[..., N, N]` with
`N = C T` and the class-major index `n = c T + t`, or as blocks `[..., C, T, C, T]` in the order
(c_resp, t_resp, c_pert, t_pert). Rows (the first index) are the response example, columns
the perturbing example; any leading dims are kept, one matrix per leading index. A lag is
`dt = t_resp - t_pert` in snapshot steps; `pair` 0 is intra-class (c_resp = c_pert), 1
inter-class. Labelled inputs are `xr.DataArray`s with `PI_DIMS` (in any order, any leading
dims): `to_blocks` turns them into blocks. Aggregates come back as float64 numpy arrays.

Where the studies differ in convention the difference is a parameter, never a silent choice:
a zero-std row (`standardize_rows(zero_std=...)`), mean or median and per-matrix or pooled
(`statistic`, `pooled`), a constant input of a correlation (`pearson(zero_spread=...)`).
NaN is not dropped here: it propagates (the callers reject non-finite matrices first), except
where a `lag_curve` statistic given as a function drops it itself. All values are as
dimensionless as the matrix.
"""
from __future__ import annotations

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


# --------------------------------------------------------------------------- layout


def lead_dims(pi: xr.DataArray) -> list[str]:
    """The dims of `pi` that are not `PI_DIMS`, in `pi`'s order."""
    return [d for d in pi.dims if d not in PI_DIMS]


def check_pi(pi, what: str = "pi", lead=(), finite: bool = False) -> xr.DataArray:
    """`pi` if it is a DataArray with `PI_DIMS` and the dims `lead`, with response and
    perturbation axes of one size (and, with `finite`, no NaN or Inf); else InputError."""
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
    """Labelled `pi` (`PI_DIMS` plus leading dims, any order) -> blocks `[*lead, C, T, C, T]`
    float64. `lead`: the leading dims in the order wanted (default `lead_dims(pi)`)."""
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


# --------------------------------------------------------------------------- standardisation


def standardize_rows(pi, *, zero_std: str = "ieee") -> np.ndarray:
    """Flat `pi` `[..., N, N]` -> `[..., N, N]`: each row n divided by its standard deviation
    over the N columns, `std_m pi[n, m]` with ddof 1 (the papers' Julia `std`).

    zero_std: what a row of zero std (a constant row) becomes:
    "ieee" -> inf / nan (`pdeinf.influence.normalize.normalize(pi, "standard")`, the studies'
    convention); "keep" -> divided by 1, so it stays as it is (an all-zero row stays zero; the
    estimator study's convention).
    """
    a = np.asarray(pi, dtype=np.float64)
    if zero_std == "ieee":
        return np.asarray(normalize(a, "standard"), dtype=np.float64)
    if zero_std == "keep":
        std = a.std(axis=-1, ddof=1, keepdims=True)
        return a / np.where(std > 0, std, 1.0)
    raise InputError(f"zero_std={zero_std!r}: expected 'ieee' or 'keep'")


def normalize_blocks(blocks, kind: str = "standard", *, losses=None) -> np.ndarray:
    """Blocks `[..., C, T, C, T]` -> the same shape, each matrix normalised as its flat
    `[..., N, N]` form by `pdeinf.influence.normalize.normalize(., kind)`; "standard" is
    `standardize_rows(zero_std="ieee")`. `losses` `[..., C, T]` for kind "loss"."""
    blocks = np.asarray(blocks, dtype=np.float64)
    if losses is not None:
        losses = np.asarray(losses, dtype=np.float64)
        losses = losses.reshape(*losses.shape[:-2], -1)
    flat = normalize(flatten(blocks), kind, losses=losses)
    return np.asarray(flat, dtype=np.float64).reshape(blocks.shape)


# --------------------------------------------------------------------------- diagonal, blocks


def diagonal_means(pi) -> tuple[np.ndarray, np.ndarray]:
    """Flat `pi` `[..., N, N]` -> (mean of the N diagonal entries, mean of the N (N - 1)
    off-diagonal entries), each `[...]`."""
    pi = np.asarray(pi, dtype=np.float64)
    n = pi.shape[-1]
    diag = np.trace(pi, axis1=-2, axis2=-1) / n
    return diag, (pi.sum(axis=(-2, -1)) - diag * n) / (n * (n - 1))


def intra_blocks(blocks) -> np.ndarray:
    """Blocks `[..., C, T, C, T]` -> the intra-class blocks `[..., C, T, T]` (class, response
    time, perturbing time)."""
    return np.moveaxis(np.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)


def cross_time_ratio(blocks) -> np.ndarray:
    """The follow-up's R per class: blocks `[..., C, T, C, T]` -> `[..., C]`, (sum of the
    class's T x T intra-class block minus its trace) over its trace; a zero trace gives
    inf / nan (IEEE)."""
    intra = intra_blocks(np.asarray(blocks, dtype=np.float64))
    diag = np.trace(intra, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (intra.sum(axis=(-2, -1)) - diag) / diag


def heatmap(blocks, *, statistic: str = "mean", pooled: bool = False) -> np.ndarray:
    """Temporal heatmap of the intra-class blocks, dims (t_resp, t_pert).

    blocks `[..., C, T, C, T]`; statistic "mean" or "median". pooled=False: per matrix, over
    the classes -> `[..., T, T]` (the seed paper's per-unit map); pooled=True: over every
    leading index and class at once -> `[T, T]` (the sweep's pooled median).
    """
    intra = intra_blocks(blocks)
    reduce = _reducer(statistic)
    if pooled:
        return reduce(intra.reshape(-1, *intra.shape[-2:]), axis=0)
    return reduce(intra, axis=-3)


# --------------------------------------------------------------------------- lags


def time_lags(n_times: int) -> np.ndarray:
    """`[T, T]` integer matrix of dt = t_resp - t_pert."""
    return np.subtract.outer(np.arange(n_times), np.arange(n_times))


def lag_range(max_lag, n_times: int, *, clip: bool = True) -> np.ndarray:
    """The lags -max_lag..max_lag. clip=True: max_lag must be >= 0 and is capped at
    n_times - 1; clip=False: it must be an integer in 0..n_times - 1."""
    if clip:
        if max_lag < 0:
            raise InputError(f"max_lag: must be >= 0, got {max_lag}")
        max_lag = int(min(max_lag, n_times - 1))
    elif not (isinstance(max_lag, (int, np.integer)) and 0 <= max_lag < n_times):
        raise InputError(f"max_lag: must be an integer in 0..{n_times - 1}, got {max_lag!r}")
    return np.arange(-max_lag, max_lag + 1)


def entry_mask(n_classes: int, n_times: int, pair: str = "all", lags=None) -> np.ndarray:
    """Boolean `[C, T, C, T]` (block order) of the entries whose classes are `pair` ("intra",
    "inter" or "all") and whose dt = t_resp - t_pert is in `lags` (an int or a collection;
    None: every lag)."""
    same = np.eye(n_classes, dtype=bool)
    if pair not in (*PAIRS, "all"):
        raise InputError(f"pair={pair!r}: expected 'intra', 'inter' or 'all'")
    classes = {"intra": same, "inter": ~same, "all": np.ones_like(same)}[pair]
    dt = time_lags(n_times)
    times = np.ones_like(dt, dtype=bool) if lags is None else np.isin(dt, lags)
    return classes[:, None, :, None] & times[None, :, None, :]


def lag_curve(blocks, lags, *, statistic="mean") -> np.ndarray:
    """Influence against the lag dt = t_resp - t_pert, intra- and inter-class entries.

    blocks `[..., C, T, C, T]`; lags: the dt values (`lag_range`). statistic: "mean" or
    "median" of each matrix's entries at that lag -> `[..., 2, L]` (pair, dt); or a function of
    the entries `[..., K]` returning an array of any shape S (it may pool the leading dims)
    -> `[*S, 2, L]`. NaN where no entry has that pair and lag (inter-class with one class).
    """
    blocks = np.asarray(blocks)
    n_c, n_t = blocks.shape[-4], blocks.shape[-3]
    reduce = statistic if callable(statistic) else _along_last(statistic)
    cells = {}
    for p, pair in enumerate(PAIRS):
        for k, lag in enumerate(lags):
            mask = entry_mask(n_c, n_t, pair, lag)
            if mask.any():
                cells[p, k] = np.asarray(reduce(blocks[..., mask]), dtype=np.float64)
    shape = next(iter(cells.values())).shape
    out = np.full((*shape, len(PAIRS), len(lags)), np.nan)
    for (p, k), value in cells.items():
        out[..., p, k] = value
    return out


# --------------------------------------------------------------------------- classes


def class_matrix(blocks, *, lag=None, statistic: str = "mean", pooled: bool = False) -> np.ndarray:
    """Influence of each (response class, perturbing class), dims (c_resp, c_pert).

    blocks `[..., C, T, C, T]`. lag=None: over all T x T time pairs of each class block (the
    seed paper's time-averaged matrix); an int: over the time pairs with t_resp - t_pert = lag.
    statistic "mean" or "median". pooled=False: per matrix -> `[..., C, C]`; pooled=True: the
    entries of every leading index at once -> `[C, C]`.
    """
    blocks = np.asarray(blocks)
    reduce = _reducer(statistic)
    if lag is None and not pooled:
        return reduce(blocks, axis=(-3, -1))
    pairs = np.moveaxis(blocks, -2, -3)  # [..., C, C, T, T]
    if lag is None:
        values = pairs.reshape(*pairs.shape[:-2], -1)
    else:
        values = pairs[..., time_lags(blocks.shape[-3]) == lag]  # [..., C, C, K]
    if pooled:
        values = np.moveaxis(values, (-3, -2), (0, 1))
        values = values.reshape(*values.shape[:2], -1)
    return reduce(values, axis=-1)


def diagonal_contrast(matrix) -> np.ndarray:
    """`[..., C, C]` -> `[...]`: mean diagonal entry minus mean off-diagonal entry (the
    class-locked contrast of a class matrix; NaN with one class)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    eye = np.eye(matrix.shape[-1], dtype=bool)
    return matrix[..., eye].mean(-1) - matrix[..., ~eye].mean(-1)


# --------------------------------------------------------------------------- correlation


def pearson(x, y, *, axis: int = -1, zero_spread: str = "ieee") -> np.ndarray:
    """Pearson correlation of x and y along `axis` (broadcasting): sum of the centred products
    over the root of the product of the centred sums of squares.

    zero_spread: a constant input. "ieee" -> the plain quotient (0 / 0 = nan; the ablation's
    convention); "tolerance" -> NaN wherever the denominator is within 1e-12 x max|x| x max|y|
    x n of zero (a constant has zero spread only up to rounding), and r clipped to [-1, 1]
    (the rollout link's convention).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
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


# --------------------------------------------------------------------------- helpers


def _reducer(statistic: str):
    if statistic not in _STATISTICS:
        raise InputError(f"statistic={statistic!r}: expected one of {', '.join(_STATISTICS)}")
    return _STATISTICS[statistic]


def _along_last(statistic: str):
    reduce = _reducer(statistic)
    return lambda values: reduce(values, axis=-1)
