"""Intervals and permutation tests for the rollout link (docs/method.md section 6): per (seed,
class, batch) R (off-diagonal / diagonal sum of the class's block of Pi) against the cumulative
rollout SMSE per horizon dt.

With three classes a pooled correlation can come entirely from differences between classes, so
beside it the link is measured within classes. Every correlation is measured **per seed** and
averaged over seeds on Fisher's z scale (`statistics.fisher_z_interval`): `pearson`, `spearman`
(over the seed's (class, batch) units), `within_class_pooled` (R and the error centred within
each (seed, class) first), `within_class` (per class, over its batches). Permutation p-values
permute R within each seed (pooled tests) or within each (seed, class) (within-class tests),
the errors in place, so one permutation serves every dt.
"""
from __future__ import annotations

import functools

import numpy as np
import xarray as xr
from scipy import stats

from pdeinf.analysis.aggregate import pearson
from pdeinf.analysis.statistics import fisher_z, fisher_z_interval
from pdeinf.errors import InputError

POOLED = ("pearson", "spearman", "within_class_pooled")
#: The permutation tests' random state.
RANDOM_STATE = 0
#: NaN where a or b is constant up to rounding.
_pearson_rows = functools.partial(pearson, zero_spread="tolerance")


def _per_seed(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x [..., S, B, C] ratio, y [..., S, B, C, D] error -> per-seed correlations
    [..., 3 + C, S, D] (`POOLED`, then per class)."""
    s, b, c = x.shape[-3:]
    lead = x.shape[:-3]
    d = y.shape[-1]
    xs = x.reshape(*lead, s, 1, b * c)
    ys = np.moveaxis(y.reshape(*y.shape[:-4], s, b * c, d), -1, -2)  # [..., S, D, B*C]
    pooled = _pearson_rows(xs, ys)
    spearman = _pearson_rows(stats.rankdata(xs, axis=-1), stats.rankdata(ys, axis=-1))
    xc = x - x.mean(axis=-2, keepdims=True)  # centred within (seed, class)
    yc = y - y.mean(axis=-3, keepdims=True)
    within_pooled = _pearson_rows(xc.reshape(*lead, s, 1, b * c),
                                  np.moveaxis(yc.reshape(*y.shape[:-4], s, b * c, d), -1, -2))
    per_class = [_pearson_rows(x[..., k][..., None, :],  # [..., S, 1, B]
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


def rollout_link_statistics(ratio: xr.DataArray, rollout_error: xr.DataArray, *,
                            n_permutations: int = 2000, confidence: float = 0.95,
                            random_state: int = RANDOM_STATE, seed_dim: str = "seed",
                            class_dim: str = "class", batch_dim: str = "batch",
                            dt_dim: str = "dt") -> xr.Dataset:
    """Pooled and within-class links between R (dims `(seed, class, batch)`) and the
    cumulative rollout SMSE (`(seed, class, batch, dt)`, as `coherence.rollout_link` returns),
    per dt; same coordinates, no NaN, at least 2 seeds (else InputError).

    Returns `pearson`, `spearman`, `within_class_pooled` `(ci, dt)`, `within_class` `(ci,
    class, dt)` (tanh of the mean per-seed Fisher z and its t-interval), `per_seed` `(quantity,
    seed, dt)` and two-sided permutation p-values `p_<quantity>` `(dt)`, `p_within_class`
    `(class, dt)`: `(1 + #{|T_perm| >= |T|}) / (1 + n_permutations)`, T the mean z. NaN where
    R or the error has no spread. attrs: the settings and schemes."""
    dims = (seed_dim, class_dim, batch_dim, dt_dim)
    for name, da, want in (("ratio", ratio, dims[:3]), ("rollout_error", rollout_error, dims)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(want):
            got = da.dims if isinstance(da, xr.DataArray) else type(da).__name__
            raise InputError(f"{name}: expected an xr.DataArray with dims {want}, got {got}")
        if not np.all(np.isfinite(np.asarray(da.values, dtype=np.float64))):
            raise InputError(f"{name}: contains NaN or Inf (drop the dt or entries without data)")
    for dim in dims[:3]:
        if not np.array_equal(ratio[dim].values, rollout_error[dim].values):
            raise InputError(f"rollout_error: its {dim!r} coordinates differ from ratio's")
    if ratio.sizes[seed_dim] < 2:
        raise InputError(f"ratio: need at least 2 seeds for an interval over seeds, got "
                         f"{ratio.sizes[seed_dim]}")
    if not (isinstance(n_permutations, (int, np.integer)) and n_permutations >= 1):
        raise InputError(f"n_permutations: must be a positive integer, got {n_permutations!r}")
    x = np.asarray(ratio.transpose(seed_dim, batch_dim, class_dim).values, dtype=np.float64)
    y = np.asarray(rollout_error.transpose(seed_dim, batch_dim, class_dim, dt_dim).values,
                   dtype=np.float64)
    per_seed = _per_seed(x, y)  # [Q, S, D]
    ci = np.stack([np.array([fisher_z_interval(per_seed[q, :, k], confidence)
                             for k in range(per_seed.shape[2])]).T
                   for q in range(per_seed.shape[0])])  # [Q, 3, D]
    observed = _mean_z(per_seed)  # [Q, D]
    # permutations: R within each seed (pooled rows), within each (seed, class) (the others)
    n_seeds, n_batches, n_classes = x.shape
    rng = np.random.default_rng([int(random_state), 1])
    flat = x.reshape(-1)  # (seed, batch, class) order
    seed_of = np.repeat(np.arange(n_seeds), n_batches * n_classes)
    cell_of = seed_of * n_classes + np.tile(np.arange(n_classes), n_seeds * n_batches)
    p = np.empty_like(observed)
    for groups, rows in ((seed_of, slice(0, 2)), (cell_of, slice(2, None))):
        perms = _permuted_within(groups, n_permutations, rng)
        permuted = _mean_z(_per_seed(flat[perms].reshape(n_permutations, *x.shape), y))[:, rows]
        # a permutation that reproduces |T| up to rounding counts as "as extreme"
        extreme = np.abs(permuted) >= np.abs(observed[rows])[None] - 1e-12
        p[rows] = np.where(np.isfinite(observed[rows]),
                           (1.0 + extreme.sum(axis=0)) / (1.0 + permuted.shape[0]), np.nan)
    classes = ratio[class_dim].values
    out = xr.Dataset(
        {**{q: (("ci", dt_dim), ci[i]) for i, q in enumerate(POOLED)},
         "within_class": (("ci", class_dim, dt_dim), np.moveaxis(ci[len(POOLED):], 0, 1)),
         "per_seed": (("quantity", seed_dim, dt_dim), per_seed),
         **{f"p_{q}": (dt_dim, p[i]) for i, q in enumerate(POOLED)},
         "p_within_class": ((class_dim, dt_dim), p[3:])},
        coords={dt_dim: rollout_error[dt_dim].values, class_dim: classes,
                "ci": ["estimate", "low", "high"],
                "quantity": [*POOLED, *(f"class:{c}" for c in classes)],
                seed_dim: ratio[seed_dim].values})
    out.attrs = {
        "confidence": confidence, "n_seeds": int(ratio.sizes[seed_dim]),
        "n_batches": int(ratio.sizes[batch_dim]),
        "interval": "t-interval over seeds of the per-seed Fisher z, back-transformed",
        "n_permutations": int(n_permutations), "random_state": int(random_state),
        "permutation_pooled": "R permuted within each seed across its classes and batches",
        "permutation_within_class": "R permuted within each (seed, class) across its batches",
        "p_value": "two-sided, (1 + #{|T_perm| >= |T|}) / (1 + n_permutations), T = mean z",
        "within_class_pooled": "per-seed Pearson after centring R and the error within each "
                               "(seed, class)",
    }
    return out
