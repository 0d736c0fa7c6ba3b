"""Intervals and permutation tests for the rollout link (method.md section 6, follow-up).

Per (seed, class, batch) the follow-up measures R (off-diagonal / diagonal sum of the class's
block of Pi) and the cumulative rollout SMSE for each horizon dt, and reports one Pearson
correlation per dt pooled over everything. With three classes a pooled correlation can come
entirely from differences between classes (a class with larger R that is also easier to roll
out), so beside it this module measures the link within classes:

- `pearson`, `spearman`: pooled over (seed, class, batch).
- `within_class`: Pearson per class over (seed, batch).
- `within_class_pooled`: Pearson over (seed, class, batch) after subtracting each class's mean
  (over its seeds and batches) from R and from the error: the between-class part removed.

Intervals: `hierarchical_bootstrap` over seeds then batches (classes are fixed: a drawn batch
keeps all its classes, as the influence batch holds one trajectory of each class).
Permutation p-values (two-sided, `(1 + #{|r_perm| >= |r|}) / (1 + n_permutations)`):
the pooled tests permute R **within each seed** (across its classes and batches), the
within-class tests permute R **within each class** (across its seeds and batches); the error
values stay in place, so one permutation serves every dt.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from pdeinf.analysis.statistics import hierarchical_bootstrap
from pdeinf.errors import InputError

POOLED = ("pearson", "spearman", "within_class_pooled")


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (broadcasting); NaN where either is constant."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    num = (xc * yc).sum(axis=-1)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    # a constant input has zero spread up to rounding: call it constant, not a correlation
    tiny = 1e-12 * (np.abs(x).max(axis=-1) * np.abs(y).max(axis=-1) + 1e-300) * x.shape[-1]
    return np.where(den > tiny, np.clip(r, -1.0, 1.0), np.nan)


def _link_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x [..., S, B, C] ratio, y [..., S, B, C, D] error -> [..., 3 + C, D]:
    pearson, spearman, within_class_pooled, within_class per class."""
    lead = x.shape[:-3]
    s, b, c = x.shape[-3:]
    d = y.shape[-1]
    # pooled: x [..., 1, S*B*C] against y [..., D, S*B*C] (R does not depend on dt)
    xp = x.reshape(*lead, 1, s * b * c)
    yp = np.moveaxis(y, -1, -4).reshape(*lead, d, s * b * c)
    pearson = _pearson(xp, yp)
    spearman = _pearson(stats.rankdata(xp, axis=-1), stats.rankdata(yp, axis=-1))
    # within class: x [..., C, 1, S*B] against y [..., C, D, S*B]
    xw = np.moveaxis(x, -1, -3).reshape(*lead, c, 1, s * b)
    yw = np.moveaxis(np.moveaxis(y, -1, -4), -1, -4).reshape(*lead, c, d, s * b)
    within = _pearson(xw, yw)
    xc = xw - xw.mean(axis=-1, keepdims=True)
    yc = yw - yw.mean(axis=-1, keepdims=True)
    pooled_within = _pearson(np.moveaxis(xc, -3, -2).reshape(*lead, 1, c * s * b),
                             np.moveaxis(yc, -3, -2).reshape(*lead, d, c * s * b))
    return np.concatenate([pearson[..., None, :], spearman[..., None, :],
                           pooled_within[..., None, :], within], axis=-2)


def _permuted_within(groups: np.ndarray, n_permutations: int, rng) -> np.ndarray:
    """`[n_permutations, n]` index arrays that permute positions only within equal `groups`."""
    n = groups.size
    out = np.tile(np.arange(n), (n_permutations, 1))
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        out[:, where] = rng.permuted(np.tile(where, (n_permutations, 1)), axis=1)
    return out


def _perm_pvalue(x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Two-sided permutation p-value of Pearson(x, y[:, d]) per column d, permuting x.

    x [n], y [n, D], perms [P, n] -> [D]; NaN where x or a column of y is constant.
    """
    observed = _pearson(x[None, :], y.T)  # [D]
    permuted = _pearson(x[perms][:, None, :], y.T[None, :, :])  # [P, D]
    # a permutation that reproduces |r| up to rounding counts as "as extreme"
    extreme = np.abs(permuted) >= np.abs(observed)[None, :] - 1e-12
    p = (1.0 + extreme.sum(axis=0)) / (1.0 + perms.shape[0])
    return np.where(np.isfinite(observed), p, np.nan)


def rollout_link_statistics(
    ratio: xr.DataArray,
    rollout_error: xr.DataArray,
    *,
    n_resamples: int = 2000,
    n_permutations: int = 2000,
    confidence: float = 0.95,
    random_state: int = 0,
    seed_dim: str = "seed",
    class_dim: str = "class",
    batch_dim: str = "batch",
    dt_dim: str = "dt",
) -> xr.Dataset:
    """Pooled and within-class links between R and the cumulative rollout error, per dt.

    ratio: dims `(seed, class, batch)`, R of each class block (dimensionless).
    rollout_error: dims `(seed, class, batch, dt)`, cumulative rollout SMSE over the first dt
    steps (as `pdeinf.analysis.coherence.rollout_link` returns in `rollout_error`). Same seed,
    class and batch coordinates; no NaN.

    Returns a Dataset with
    `pearson`, `spearman`, `within_class_pooled` dims `(ci, dt)`, `within_class` `(ci, class,
    dt)` (ci = estimate, low, high: percentile interval of the two-stage seed/batch bootstrap),
    and permutation p-values `p_pearson`, `p_spearman` (R permuted within seed),
    `p_within_class_pooled` `(dt)` and `p_within_class` `(class, dt)` (R permuted within class).
    A correlation is NaN where R or the error has no spread. attrs: bootstrap settings and the
    permutation schemes in words.
    """
    for name, da, dims in (("ratio", ratio, (seed_dim, class_dim, batch_dim)),
                           ("rollout_error", rollout_error,
                            (seed_dim, class_dim, batch_dim, dt_dim))):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(dims):
            got = da.dims if isinstance(da, xr.DataArray) else type(da).__name__
            raise InputError(f"{name}: expected an xr.DataArray with dims {dims}, got {got}")
        if not np.all(np.isfinite(np.asarray(da.values, dtype=np.float64))):
            raise InputError(f"{name}: contains NaN or Inf (drop the dt or entries without data)")
    for dim in (seed_dim, class_dim, batch_dim):
        if not np.array_equal(ratio[dim].values, rollout_error[dim].values):
            raise InputError(f"rollout_error: its {dim!r} coordinates differ from ratio's")
    n_seeds, n_classes, n_batches = (ratio.sizes[d] for d in (seed_dim, class_dim, batch_dim))
    if n_seeds * n_batches < 3:
        raise InputError(f"ratio: need at least 3 (seed, batch) pairs per class, got "
                         f"{n_seeds} x {n_batches}")
    if not (isinstance(n_permutations, (int, np.integer)) and n_permutations >= 1):
        raise InputError(f"n_permutations: must be a positive integer, got {n_permutations!r}")

    x = ratio.transpose(seed_dim, batch_dim, class_dim).astype(np.float64)
    y = rollout_error.transpose(seed_dim, batch_dim, class_dim, dt_dim).astype(np.float64)
    dts = y[dt_dim].values
    classes = ratio[class_dim].values
    joined = xr.concat([x.expand_dims({dt_dim: dts}, axis=-1), y], dim="variable",
                       coords="minimal", compat="override")
    joined = joined.assign_coords(variable=["ratio", "error"]).transpose(
        seed_dim, batch_dim, class_dim, dt_dim, "variable")
    quantities = [*POOLED, *(f"class:{c}" for c in range(n_classes))]

    def statistic(da: xr.DataArray) -> xr.DataArray:
        v = da.values  # [..., S, B, C, D, 2]
        corr = _link_correlations(v[..., 0, 0], v[..., 1])
        dims = (("resample",) if "resample" in da.dims else ()) + ("quantity", dt_dim)
        return xr.DataArray(corr, dims=dims, coords={"quantity": quantities, dt_dim: dts})

    ci = hierarchical_bootstrap(joined, statistic, seed_dim=seed_dim, batch_dim=batch_dim,
                                n_resamples=n_resamples, confidence=confidence,
                                random_state=random_state, vectorized=True)

    rng = np.random.default_rng([int(random_state), 1])
    xv = x.values.ravel()  # (seed, batch, class) order
    yv = y.values.reshape(-1, len(dts))
    seed_of = np.repeat(np.arange(n_seeds), n_batches * n_classes)
    class_of = np.tile(np.arange(n_classes), n_seeds * n_batches)
    within_seed = _permuted_within(seed_of, n_permutations, rng)
    within_class = _permuted_within(class_of, n_permutations, rng)
    p_pearson = _perm_pvalue(xv, yv, within_seed)
    rank_y = stats.rankdata(yv, axis=0)
    p_spearman = _perm_pvalue(stats.rankdata(xv), rank_y, within_seed)
    means_x = np.array([xv[class_of == k].mean() for k in range(n_classes)])[class_of]
    means_y = np.stack([yv[class_of == k].mean(axis=0) for k in range(n_classes)])[class_of]
    p_within_pooled = _perm_pvalue(xv - means_x, yv - means_y, within_class)
    p_class = np.stack([
        _perm_pvalue(xv[class_of == k], yv[class_of == k],
                     _restrict(within_class, class_of == k))
        for k in range(n_classes)
    ])

    out = xr.Dataset(
        {
            "pearson": ci.sel(quantity="pearson", drop=True),
            "spearman": ci.sel(quantity="spearman", drop=True),
            "within_class_pooled": ci.sel(quantity="within_class_pooled", drop=True),
            "within_class": xr.concat(
                [ci.sel(quantity=f"class:{k}", drop=True) for k in range(n_classes)],
                dim=class_dim).assign_coords({class_dim: classes}).transpose("ci", class_dim,
                                                                                  dt_dim),
            "p_pearson": (dt_dim, p_pearson),
            "p_spearman": (dt_dim, p_spearman),
            "p_within_class_pooled": (dt_dim, p_within_pooled),
            "p_within_class": ((class_dim, dt_dim), p_class),
        },
        coords={dt_dim: dts, class_dim: classes, "ci": ci["ci"].values},
    )
    out.attrs = {
        **{k: v for k, v in ci.attrs.items() if k != "n_nonfinite"},
        "n_nonfinite_resamples": ci.attrs["n_nonfinite"],
        "n_permutations": int(n_permutations),
        "bootstrap": "seeds, then batches within seed; classes fixed (a batch keeps its classes)",
        "permutation_pooled": "R permuted within each seed across its classes and batches",
        "permutation_within_class": "R permuted within each class across its seeds and batches",
        "p_value": "two-sided, (1 + #{|r_perm| >= |r|}) / (1 + n_permutations)",
        "within_class_pooled": "Pearson after subtracting each class's mean of R and of the error",
    }
    return out


def _restrict(perms: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Permutations that map `mask` onto itself -> the same permutations on the masked subset
    (indices re-numbered 0..mask.sum()-1)."""
    where = np.flatnonzero(mask)
    renumber = np.full(mask.size, -1)
    renumber[where] = np.arange(where.size)
    return renumber[perms[:, where]]
