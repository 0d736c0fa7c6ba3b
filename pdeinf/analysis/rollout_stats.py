"""Intervals and permutation tests for the rollout link (docs/method.md section 6,
the follow-up's rollout link).

Per (seed, class, batch) the follow-up measures R (off-diagonal / diagonal sum of the class's
block of Pi) and the cumulative rollout SMSE for each horizon dt, and reports one Pearson
correlation per dt pooled over everything. With three classes a pooled correlation can come
entirely from differences between classes (a class with larger R that is also easier to roll
out), so beside it this module measures the link within classes. Every correlation is measured
**per seed** (the unit of replication) and averaged over seeds on Fisher's z scale, with the
t-interval of the per-seed z (`pdeinf.analysis.statistics.fisher_z_interval`):

- `pearson`, `spearman`: per seed over its (class, batch) units.
- `within_class_pooled`: per seed after centring R and the error within each (seed, class): no
  class difference and no seed difference inside a class remains.
- `within_class`: per class, per seed over its batches (NaN with fewer than 3 batches).

Permutation p-values (two-sided, `(1 + #{|T_perm| >= |T|}) / (1 + n_permutations)` with T the
mean per-seed Fisher z): the pooled tests permute R **within each seed** (across its classes
and batches), the within-class tests permute R **within each (seed, class)** (across its
batches); the error values stay in place, so one permutation serves every dt.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from pdeinf.analysis.aggregate import pearson
from pdeinf.analysis.statistics import fisher_z, fisher_z_interval
from pdeinf.errors import InputError

POOLED = ("pearson", "spearman", "within_class_pooled")
#: The permutation tests' random state.
RANDOM_STATE = 0


def _per_seed(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x [..., S, B, C] ratio, y [..., S, B, C, D] error -> per-seed correlations
    [..., 3 + C, S, D]: pearson, spearman, within_class_pooled, within class per class."""
    s, b, c = x.shape[-3:]
    lead = x.shape[:-3]
    d = y.shape[-1]

    def pearson_rows(a, b):  # NaN where a or b is constant up to rounding
        return pearson(a, b, zero_spread="tolerance")

    xs = x.reshape(*lead, s, 1, b * c)
    ys = np.moveaxis(y.reshape(*y.shape[:-4], s, b * c, d), -1, -2)  # [..., S, D, B*C]
    pooled = pearson_rows(xs, ys)
    spearman = pearson_rows(stats.rankdata(xs, axis=-1), stats.rankdata(ys, axis=-1))
    xc = x - x.mean(axis=-2, keepdims=True)  # centred within (seed, class)
    yc = y - y.mean(axis=-3, keepdims=True)
    within_pooled = pearson_rows(xc.reshape(*lead, s, 1, b * c),
                                 np.moveaxis(yc.reshape(*y.shape[:-4], s, b * c, d), -1, -2))
    per_class = [pearson_rows(x[..., k][..., None, :],  # [..., S, 1, B]
                              np.moveaxis(y[..., k, :], -1, -2))  # [..., S, D, B]
                 for k in range(c)]
    return np.stack([pooled, spearman, within_pooled, *per_class], axis=-3)


def _mean_z(r: np.ndarray) -> np.ndarray:
    """Mean over the seed axis (-2) of Fisher's z."""
    return fisher_z(r).mean(axis=-2)


def _permuted_within(groups: np.ndarray, n_permutations: int, rng) -> np.ndarray:
    """`[n_permutations, n]` index arrays that permute positions only within equal `groups`."""
    n = groups.size
    out = np.tile(np.arange(n), (n_permutations, 1))
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        out[:, where] = rng.permuted(np.tile(where, (n_permutations, 1)), axis=1)
    return out


def _perm_pvalue(observed: np.ndarray, permuted: np.ndarray) -> np.ndarray:
    """Two-sided permutation p-values: observed [Q, D], permuted [P, Q, D] -> [Q, D]; NaN where
    the observed statistic is."""
    # a permutation that reproduces |T| up to rounding counts as "as extreme"
    extreme = np.abs(permuted) >= np.abs(observed)[None] - 1e-12
    p = (1.0 + extreme.sum(axis=0)) / (1.0 + permuted.shape[0])
    return np.where(np.isfinite(observed), p, np.nan)


def _check_link_inputs(ratio, rollout_error, dims) -> None:
    seed_dim, class_dim, batch_dim, _ = dims
    for name, da, want in (("ratio", ratio, dims[:3]), ("rollout_error", rollout_error, dims)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(want):
            got = da.dims if isinstance(da, xr.DataArray) else type(da).__name__
            raise InputError(f"{name}: expected an xr.DataArray with dims {want}, got {got}")
        if not np.all(np.isfinite(np.asarray(da.values, dtype=np.float64))):
            raise InputError(f"{name}: contains NaN or Inf (drop the dt or entries without data)")
    for dim in (seed_dim, class_dim, batch_dim):
        if not np.array_equal(ratio[dim].values, rollout_error[dim].values):
            raise InputError(f"rollout_error: its {dim!r} coordinates differ from ratio's")
    if ratio.sizes[seed_dim] < 2:
        raise InputError(f"ratio: need at least 2 seeds for an interval over seeds, got "
                         f"{ratio.sizes[seed_dim]}")


def rollout_link_statistics(
    ratio: xr.DataArray,
    rollout_error: xr.DataArray,
    *,
    n_permutations: int = 2000,
    confidence: float = 0.95,
    random_state: int = RANDOM_STATE,
    seed_dim: str = "seed",
    class_dim: str = "class",
    batch_dim: str = "batch",
    dt_dim: str = "dt",
) -> xr.Dataset:
    """Pooled and within-class links between R and the cumulative rollout error, per dt.

    ratio: dims `(seed, class, batch)`, R of each class block (dimensionless).
    rollout_error: dims `(seed, class, batch, dt)`, cumulative rollout SMSE over the first dt
    steps (as `pdeinf.analysis.coherence.rollout_link` returns in `rollout_error`). Same seed,
    class and batch coordinates; no NaN; at least 2 seeds.

    Returns a Dataset with `pearson`, `spearman`, `within_class_pooled` dims `(ci, dt)`,
    `within_class` `(ci, class, dt)` (ci = estimate, low, high: tanh of the mean per-seed
    Fisher z and its t-interval over seeds), `per_seed` `(quantity, seed, dt)`, and permutation
    p-values `p_pearson`, `p_spearman` (R permuted within seed), `p_within_class_pooled` `(dt)`
    and `p_within_class` `(class, dt)` (R permuted within (seed, class)). A correlation is NaN
    where R or the error has no spread. attrs: the interval and the permutation schemes.
    """
    dims = (seed_dim, class_dim, batch_dim, dt_dim)
    _check_link_inputs(ratio, rollout_error, dims)
    if not (isinstance(n_permutations, (int, np.integer)) and n_permutations >= 1):
        raise InputError(f"n_permutations: must be a positive integer, got {n_permutations!r}")
    x, y = _link_arrays(ratio, rollout_error, dims)
    per_seed = _per_seed(x, y)  # [Q, S, D]
    ci = _seed_intervals(per_seed, confidence)  # [Q, 3, D]
    p = _permutation_pvalues(x, y, _mean_z(per_seed), n_permutations, random_state)  # [Q, D]
    classes = ratio[class_dim].values
    out = xr.Dataset(
        {
            **{q: (("ci", dt_dim), ci[i]) for i, q in enumerate(POOLED)},
            "within_class": (("ci", class_dim, dt_dim),
                             np.moveaxis(ci[len(POOLED):], 0, 1)),
            "per_seed": (("quantity", seed_dim, dt_dim), per_seed),
            "p_pearson": (dt_dim, p[0]),
            "p_spearman": (dt_dim, p[1]),
            "p_within_class_pooled": (dt_dim, p[2]),
            "p_within_class": ((class_dim, dt_dim), p[3:]),
        },
        coords={dt_dim: rollout_error[dt_dim].values, class_dim: classes,
                "ci": ["estimate", "low", "high"],
                "quantity": [*POOLED, *(f"class:{c}" for c in classes)],
                seed_dim: ratio[seed_dim].values},
    )
    out.attrs = _link_attrs(confidence, ratio.sizes[seed_dim], ratio.sizes[batch_dim],
                            n_permutations, random_state)
    return out


def _link_arrays(ratio: xr.DataArray, rollout_error: xr.DataArray, dims) -> tuple[np.ndarray, np.ndarray]:
    """`(x [S, B, C], y [S, B, C, D])` float64: R and the rollout error in (seed, batch, class,
    dt) order, for `dims` = (seed, class, batch, dt) dimension names."""
    seed_dim, class_dim, batch_dim, dt_dim = dims
    x = np.asarray(ratio.transpose(seed_dim, batch_dim, class_dim).values, dtype=np.float64)
    y = np.asarray(rollout_error.transpose(seed_dim, batch_dim, class_dim, dt_dim).values,
                   dtype=np.float64)
    return x, y


def _seed_intervals(per_seed: np.ndarray, confidence: float) -> np.ndarray:
    """`[Q, 3, D]` (estimate, low, high) over seeds of the per-seed correlations
    `[Q, S, D]` (`fisher_z_interval`)."""
    return np.stack([np.array([fisher_z_interval(per_seed[q, :, k], confidence)
                               for k in range(per_seed.shape[2])]).T
                     for q in range(per_seed.shape[0])])


def _permutation_pvalues(x: np.ndarray, y: np.ndarray, observed: np.ndarray, n_permutations: int,
                         random_state: int) -> np.ndarray:
    """Permutation p-values `[Q, D]` of the mean per-seed Fisher z `observed` `[Q, D]` for R
    `x` `[S, B, C]` and errors `y` `[S, B, C, D]`: the pooled rows (pearson, spearman) with R
    permuted within each seed, the others within each (seed, class); error values in place."""
    n_seeds, n_batches, n_classes = x.shape
    rng = np.random.default_rng([int(random_state), 1])
    flat = x.reshape(-1)  # (seed, batch, class) order
    seed_of = np.repeat(np.arange(n_seeds), n_batches * n_classes)
    cell_of = seed_of * n_classes + np.tile(np.arange(n_classes), n_seeds * n_batches)
    p = np.empty_like(observed)
    for groups, rows in ((seed_of, slice(0, 2)), (cell_of, slice(2, None))):
        perms = _permuted_within(groups, n_permutations, rng)
        permuted = _mean_z(_per_seed(flat[perms].reshape(n_permutations, *x.shape), y))
        p[rows] = _perm_pvalue(observed[rows], permuted[:, rows])
    return p


def _link_attrs(confidence: float, n_seeds: int, n_batches: int, n_permutations: int,
                random_state: int) -> dict:
    """The attrs of `rollout_link_statistics`: its settings and the schemes it used."""
    return {
        "confidence": confidence, "n_seeds": int(n_seeds), "n_batches": int(n_batches),
        "interval": "t-interval over seeds of the per-seed Fisher z, back-transformed",
        "n_permutations": int(n_permutations), "random_state": int(random_state),
        "permutation_pooled": "R permuted within each seed across its classes and batches",
        "permutation_within_class": "R permuted within each (seed, class) across its batches",
        "p_value": "two-sided, (1 + #{|T_perm| >= |T|}) / (1 + n_permutations), T = mean z",
        "within_class_pooled": "per-seed Pearson after centring R and the error within each "
                               "(seed, class)",
    }
