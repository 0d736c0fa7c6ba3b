"""Intervals over training seeds, the unit of replication of every headline number.

Seeds are independent trainings; influence batches are nested in a seed (the same trained
model, different test trajectories). Every interval here is a t-interval over the S seed means
(each seed's mean over its batches) with S - 1 degrees of freedom, which covers at its nominal
level whatever the split of the variance between seeds and batches
(`pdeinf.analysis.seed_stats`, coverage checked by simulation in the tests).

- `seed_interval(values, level)`: `values` [seeds, batches] (NaN for a missing batch) ->
  (estimate, low, high).
- `seed_mean_ci(data)`: the same for every cell of an xarray DataArray, with a `ci` dim.
- `t_test_p`, `tost_p`, `holm`, `seeds_needed`, `fisher_z_interval`: the tests, the
  multiplicity adjustment, the power of a design and correlations on Fisher's z scale.

Pure: xarray / numpy in, xarray / tuples out.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from pdeinf.analysis.seed_stats import (  # noqa: F401  (the seed-level inference, public here)
    fisher_z_interval,
    holm,
    seed_interval,
    seeds_needed,
    t_test_p,
    tost_p,
)
from pdeinf.errors import InputError

CI_LABELS = ("estimate", "low", "high")


def seed_mean_ci(data: xr.DataArray, *, seed_dim: str = "seed", batch_dim: str | None = "batch",
                 confidence: float = 0.95) -> xr.DataArray:
    """The mean over seeds of each seed's batch mean, with its t-interval over seeds (S - 1 df;
    `seed_interval`), for every cell of the other dims.

    data: dims include `seed_dim` (and `batch_dim` unless None or absent: one value per seed);
    NaN marks a failed unit (counted; above 2.5% the cell's interval is NaN). Returns the
    DataArray of the other dims with a leading `ci` dim ("estimate", "low", "high"); attrs
    `n_seeds`, `n_batches`, `confidence`, `method`.
    """
    if not isinstance(data, xr.DataArray) or seed_dim not in data.dims:
        raise InputError(f"data: expected an xr.DataArray with a {seed_dim!r} dim")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise InputError(f"confidence: must lie strictly between 0 and 1, got {confidence!r}")
    units = [seed_dim] + ([batch_dim] if batch_dim is not None and batch_dim in data.dims else [])
    rest = [d for d in data.dims if d not in units]
    arr = np.asarray(data.transpose(*rest, *units).values, dtype=np.float64)
    arr = arr.reshape(-1, data.sizes[seed_dim], int(np.prod([data.sizes[d] for d in units[1:]])))
    cells = np.array([seed_interval(a, confidence) for a in arr])  # [cells, 3]
    shape = [data.sizes[d] for d in rest]
    out = cells.T.reshape(3, *shape)
    coords = {d: data[d].values for d in rest if d in data.coords}
    n_batches = data.sizes[units[1]] if len(units) > 1 else 1
    return xr.DataArray(out, dims=("ci", *rest), coords={"ci": list(CI_LABELS), **coords},
                        attrs={"n_seeds": int(data.sizes[seed_dim]), "n_batches": int(n_batches),
                               "confidence": confidence,
                               "method": "t-interval over seed means (S - 1 df)"})
