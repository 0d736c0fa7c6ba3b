"""Intervals and permutation tests for the rollout link (`docs/method.md` section 6): per (seed,
class, batch) R (off-diagonal / diagonal sum of the class's block of Pi) against the cumulative
rollout SMSE per horizon dt. A pooled correlation can come entirely from differences between the
classes, so the link is also measured within classes; every correlation is measured per seed and
averaged over seeds on Fisher's z scale (`statistics.fisher_z_interval`). Permutation p-values
permute R within each seed (pooled tests) or each (seed, class), the errors in place.
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
    """x [..., S, B, C] ratio, y [S, B, C, D] error -> per-seed correlations
    [..., 3 + C, S, D] (`POOLED`, then per class)."""
    s, b, c = x.shape[-3:]

    def rows(u, v):  # [..., S, 1, B*C] and [S, D, B*C]
        return u.reshape(*u.shape[:-3], s, 1, b * c), np.moveaxis(v.reshape(s, b * c, -1), -1, -2)

    xs, ys = rows(x, y)
    pooled = _pearson_rows(xs, ys)
    spearman = _pearson_rows(stats.rankdata(xs, axis=-1), stats.rankdata(ys, axis=-1))
    within_pooled = _pearson_rows(*rows(x - x.mean(axis=-2, keepdims=True),  # within (seed, class)
                                        y - y.mean(axis=-3, keepdims=True)))
    per_class = [_pearson_rows(x[..., k][..., None, :],  # [..., S, 1, B]
                               np.moveaxis(y[..., k, :], -1, -2))  # [..., S, D, B]
                 for k in range(c)]
    return np.stack([pooled, spearman, within_pooled, *per_class], axis=-3)


def _permuted_within(groups: np.ndarray, n_permutations: int, rng) -> np.ndarray:
    """`[n_permutations, n]` index arrays that permute positions only within equal `groups`."""
    out = np.tile(np.arange(groups.size), (n_permutations, 1))
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        out[:, where] = rng.permuted(np.tile(where, (n_permutations, 1)), axis=1)
    return out


def rollout_link_statistics(ratio: xr.DataArray, rollout_error: xr.DataArray, *,
                            n_permutations: int = 2000, confidence: float = 0.95,
                            random_state: int = RANDOM_STATE) -> xr.Dataset:
    """Pooled and within-class links between R (dims `(seed, class, batch)`) and the
    cumulative rollout SMSE (`(seed, class, batch, dt)`, as `coherence.rollout_link` returns),
    per dt; same coordinates, no NaN, at least 2 seeds (else InputError).

    Returns `pearson`, `spearman`, `within_class_pooled` `(ci, dt)`, `within_class` `(ci,
    class, dt)` (tanh of the mean per-seed Fisher z and its t-interval), `per_seed` `(quantity,
    seed, dt)` and two-sided permutation p-values `p_<quantity>` `(dt)`, `p_within_class`
    `(class, dt)`: `(1 + #{|T_perm| >= |T|}) / (1 + n_permutations)`, T the mean z. NaN where
    R or the error has no spread. attrs: the settings and schemes."""
    dims = ("seed", "class", "batch", "dt")
    for name, da, want in (("ratio", ratio, dims[:3]), ("rollout_error", rollout_error, dims)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != set(want):
            got = da.dims if isinstance(da, xr.DataArray) else type(da).__name__
            raise InputError(f"{name}: expected an xr.DataArray with dims {want}, got {got}")
        if not np.all(np.isfinite(np.asarray(da.values, dtype=np.float64))):
            raise InputError(f"{name}: contains NaN or Inf (drop the dt or entries without data)")
    for dim in dims[:3]:
        if not np.array_equal(ratio[dim].values, rollout_error[dim].values):
            raise InputError(f"rollout_error: its {dim!r} coordinates differ from ratio's")
    if ratio.sizes["seed"] < 2:
        raise InputError(f"ratio: need at least 2 seeds for an interval over seeds, got "
                         f"{ratio.sizes['seed']}")
    if not (isinstance(n_permutations, (int, np.integer)) and n_permutations >= 1):
        raise InputError(f"n_permutations: must be a positive integer, got {n_permutations!r}")
    x, y = (np.asarray(da.transpose("seed", "batch", "class", ...).values, dtype=np.float64)
            for da in (ratio, rollout_error))  # y: [S, B, C, D]
    per_seed = _per_seed(x, y)  # [Q, S, D]
    ci = np.stack([np.array([fisher_z_interval(per_seed[q, :, k], confidence)
                             for k in range(per_seed.shape[2])]).T
                   for q in range(per_seed.shape[0])])  # [Q, 3, D]
    observed = fisher_z(per_seed).mean(axis=-2)  # [Q, D]: mean z over seeds
    # permutations: R within each seed (pooled rows), within each (seed, class) (the others)
    n_seeds, n_batches, n_classes = x.shape
    rng = np.random.default_rng([int(random_state), 1])
    flat = x.reshape(-1)  # (seed, batch, class) order
    seed_of = np.repeat(np.arange(n_seeds), n_batches * n_classes)
    cell_of = seed_of * n_classes + np.tile(np.arange(n_classes), n_seeds * n_batches)
    p = np.empty_like(observed)
    for groups, rows in ((seed_of, slice(0, 2)), (cell_of, slice(2, None))):
        perms = _permuted_within(groups, n_permutations, rng)
        permuted = fisher_z(_per_seed(flat[perms].reshape(-1, *x.shape), y)).mean(axis=-2)[:, rows]
        # a permutation that reproduces |T| up to rounding counts as "as extreme"
        extreme = np.abs(permuted) >= np.abs(observed[rows])[None] - 1e-12
        p[rows] = np.where(np.isfinite(observed[rows]),
                           (1.0 + extreme.sum(axis=0)) / (1.0 + permuted.shape[0]), np.nan)
    classes = ratio["class"].values
    return xr.Dataset(
        {**{q: (("ci", "dt"), ci[i]) for i, q in enumerate(POOLED)},
         "within_class": (("ci", "class", "dt"), np.moveaxis(ci[len(POOLED):], 0, 1)),
         "per_seed": (("quantity", "seed", "dt"), per_seed),
         **{f"p_{q}": ("dt", p[i]) for i, q in enumerate(POOLED)},
         "p_within_class": (("class", "dt"), p[3:])},
        coords={"dt": rollout_error["dt"].values, "class": classes,
                "ci": ["estimate", "low", "high"],
                "quantity": [*POOLED, *(f"class:{c}" for c in classes)],
                "seed": ratio["seed"].values},
        attrs={
            "confidence": confidence, "n_seeds": int(ratio.sizes["seed"]),
            "n_batches": int(ratio.sizes["batch"]),
            "interval": "t-interval over seeds of the per-seed Fisher z, back-transformed",
            "n_permutations": int(n_permutations), "random_state": int(random_state),
            "permutation_pooled": "R permuted within each seed across its classes and batches",
            "permutation_within_class": "R permuted within each (seed, class) across its batches",
            "p_value": "two-sided, (1 + #{|T_perm| >= |T|}) / (1 + n_permutations), T = mean z",
            "within_class_pooled": "per-seed Pearson of R and the error centred per (seed, class)"})
