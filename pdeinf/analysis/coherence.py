"""Observables of the influence sweep (docs/method.md section 6), as xarray objects.

Every function reads the labelled sweep dataset (as `pdeinf.pipeline.ensure_influence` returns
it, or any dataset of the same layout):

- `pi` dims `(seed, epoch, batch, [variant,] t_resp, c_resp, t_pert, c_pert)`; rows (`*_resp`)
  are the response example, columns (`*_pert`) the perturbing example. A dataset without a
  `variant` dimension holds one variant, named by `ds.attrs["variant"]` (else `attrs["metric"]`,
  else "gauss-newton").
- `losses` `(seed, epoch, batch, t, c)`, `eta_eigenvalues` `(seed, epoch, batch, mode)`
  NaN-padded, `rank` `(seed, epoch, batch)`, `input_distance` like `pi` without `variant`.

Normalisations are those of `pdeinf.influence.normalize` (docs/method.md section 5), applied to each
`N x N` matrix with the flat index `n = c * T + t`. Aggregates pool seeds x influence batches
(x classes / time pairs where stated) and report medians and quartiles, as the paper does.
All values are dimensionless (SMSE-based influence); `dt` and lags are in snapshot steps.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.aggregate import QUARTILES
from pdeinf.analysis.registry import PAPER_ROLLOUT_PEARSON
from pdeinf.errors import InputError
from pdeinf.influence.normalize import NORMALIZATIONS

#: The follow-up's published Pearson correlations between the intra-class off/diagonal ratio R
#: (raw Pi) and the cumulative rollout SMSE, all 16 horizons dt = 1..16 (docs/method.md section 6).
#: A view of the one source, `pdeinf.analysis.registry.PAPER_ROLLOUT_PEARSON`.
#: Keys: (PDE, model) -> {dt: r}.
PAPER_ROLLOUT_CORRELATION: dict[tuple[str, str], dict[int, float]] = {
    tuple(key.split("-")): dict(enumerate(values, start=1))
    for key, values in PAPER_ROLLOUT_PEARSON.items()
}


def combine_variants(datasets: dict[str, xr.Dataset]) -> xr.Dataset:
    """Sweeps of single variants -> one Dataset whose `pi` has a `variant` dimension.

    The other variables (losses, eta eigenvalues, rank, input distance) are taken from the
    first dataset given (put "gauss-newton" first: eta_hat is the Gauss-Newton metric).
    """
    if not datasets:
        raise InputError("datasets: at least one variant is needed")
    names = list(datasets)
    pis = []
    for name, ds in datasets.items():
        _check_dataset(ds)
        pi = ds["pi"]
        if "variant" in pi.dims:
            pi = pi.sel(variant=name)
        pis.append(pi.drop_vars("variant", errors="ignore"))
    first = datasets[names[0]]
    out = first.drop_vars("pi").drop_dims("variant", errors="ignore")
    stacked = xr.concat(pis, dim="variant", join="exact", coords="minimal", compat="override")
    stacked = stacked.assign_coords(variant=("variant", names))
    out["pi"] = stacked.transpose("seed", "epoch", "batch", "variant", ...)
    out.attrs = {k: v for k, v in first.attrs.items() if k not in ("metric", "observable")}
    return out


# --------------------------------------------------------------------------- selection


def variants(ds: xr.Dataset) -> list[str]:
    """Names of the influence variants (metrics / bras) held by the dataset."""
    if "variant" in ds["pi"].dims:
        return [str(v) for v in ds["variant"].values]
    return [str(ds.attrs.get("variant") or ds.attrs.get("metric") or "gauss-newton")]


def _check_dataset(ds: xr.Dataset) -> None:
    if not isinstance(ds, xr.Dataset) or "pi" not in ds:
        raise InputError("ds: expected the influence sweep xr.Dataset with a 'pi' variable")
    ag.check_pi(ds["pi"], "ds['pi']", lead=("seed", "epoch", "batch"))


def _labels(ds: xr.Dataset, dim: str, wanted, what: str) -> list:
    """The `dim` labels `wanted` (None: all; for epochs: the final, "all": every, sorted)."""
    available = list(ds[dim].values)
    if wanted is None:
        return [max(available)] if dim == "epoch" else available
    if isinstance(wanted, str) and wanted == "all":
        return sorted(available)
    wanted = list(np.atleast_1d(wanted))
    unknown = [e for e in wanted if e not in available]
    if unknown:
        raise InputError(f"{what}: {unknown} not in the sweep's {dim}s {available}")
    return wanted


def _select_variant(da: xr.DataArray, ds: xr.Dataset, variant: str) -> xr.DataArray:
    names = variants(ds)
    if variant not in names:
        raise InputError(f"variant: unknown {variant!r}; this sweep holds {', '.join(names)}")
    return da.sel(variant=variant) if "variant" in da.dims else da


def normalized_pi(
    ds: xr.Dataset,
    *,
    variant: str = "gauss-newton",
    normalization: str = "standard",
    epoch=None,
    seeds=None,
) -> xr.DataArray:
    """Pi of one variant, normalised per `N x N` matrix.

    Returns a DataArray with dims `(seed, epoch, batch, c_resp, t_resp, c_pert, t_pert)`.
    `epoch`: None (final checkpoint), "all", or an epoch / list of epochs.
    """
    _check_dataset(ds)
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization: unknown {normalization!r}; expected one of "
                         f"{', '.join(NORMALIZATIONS)}")
    sel = {"epoch": _labels(ds, "epoch", epoch, "epoch"), "seed": _labels(ds, "seed", seeds, "seeds")}
    pi = _select_variant(ds["pi"], ds, variant).sel(sel)
    pi = pi.transpose("seed", "epoch", "batch", *ag.BLOCK_ORDER)
    values = np.ascontiguousarray(pi.values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"ds['pi'] (variant {variant!r}): contains NaN or Inf")
    losses = None
    if normalization == "loss":
        if "losses" not in ds:
            raise InputError("normalization 'loss': the dataset has no 'losses' variable")
        losses = ds["losses"].sel(sel).transpose("seed", "epoch", "batch", "c", "t").values
    if normalization != "none":
        values = ag.normalize_blocks(values, normalization, losses=losses)
    return xr.DataArray(values, coords=pi.coords, dims=pi.dims)


def _influence(values, coords: dict, variant: str, normalization: str, **attrs) -> xr.DataArray:
    """`values` labelled by `coords` (one per dim, in order) as an observable of the sweep."""
    return xr.DataArray(values, dims=tuple(coords), coords=coords, name="influence",
                        attrs={"variant": variant, "normalization": normalization, **attrs})


def _quartiles(values: np.ndarray) -> tuple[float, float, float, int]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan, math.nan, 0)
    q = np.quantile(values, QUARTILES)
    return (float(q[0]), float(q[1]), float(q[2]), int(values.size))


# --------------------------------------------------------------------------- observables


def temporal_heatmap(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
    epoch=None, seeds=None,
) -> xr.DataArray:
    """Item 1: median over seeds x batches x classes of intra-class entries, dims (t_resp, t_pert)."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    return _influence(ag.heatmap(npi.values, statistic="median", pooled=True),
                      {d: npi[d].values for d in ("t_resp", "t_pert")}, variant, normalization)


def horizon_curve(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
    epoch=None, seeds=None, max_lag: int = 11,
) -> xr.DataArray:
    """Item 2: quartiles of influence vs dt = t_resp - t_pert, intra- and inter-class pairs.

    Pools every entry at that lag over seeds x batches x class pairs x time pairs.
    Returns dims `(pair, quantile, dt)` with `pair` in ("intra", "inter"), `quantile` in
    (0.25, 0.5, 0.75); the entry counts are in coordinate-aligned variable `count` (attrs).
    """
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    lags = ag.lag_range(max_lag, npi.sizes["t_resp"])
    pooled = ag.lag_curve(npi.values, lags, statistic=_quartiles)  # [q1 q2 q3 n, pair, dt]
    counts = np.nan_to_num(pooled[3]).astype(int)  # no entry (one class, inter): count 0
    return _influence(np.moveaxis(pooled[:3], 0, 1),
                      {"pair": list(ag.PAIRS), "quantile": list(QUARTILES), "dt": lags},
                      variant, normalization).assign_coords(count=(("pair", "dt"), counts))


def class_matrix(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
    epoch=None, seeds=None, lag: int = 0,
) -> xr.DataArray:
    """Item 3: median influence of response class vs perturbing class, dims (c_resp, c_pert).

    Uses the entries with `t_resp - t_pert == lag` (the paper: lag 0, same-time entries),
    pooled over seeds x batches x times.
    """
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    n_times = npi.sizes["t_resp"]
    if abs(lag) >= n_times:
        raise InputError(f"lag: |{lag}| must be smaller than the number of times {n_times}")
    return _influence(ag.class_matrix(npi.values, lag=lag, statistic="median", pooled=True),
                      {d: npi[d].values for d in ("c_resp", "c_pert")}, variant, normalization,
                      lag=lag)


def dynamics(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "none", seeds=None,
) -> xr.DataArray:
    """Item 4: mean diagonal vs mean off-diagonal influence per checkpoint.

    For each (seed, batch, epoch) the mean of the N diagonal entries and of the N(N-1)
    off-diagonal entries of the N x N matrix; quartiles over seeds x batches.
    Returns dims `(part, quantile, epoch)` with `part` in ("diagonal", "off-diagonal").
    """
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch="all", seeds=seeds)
    parts = np.stack(ag.diagonal_means(ag.flatten(npi.values)))  # [2, S, E, B]
    per_epoch = np.moveaxis(parts, 2, 1).reshape(2, npi.sizes["epoch"], -1)
    return _influence(np.moveaxis(np.quantile(per_epoch, QUARTILES, axis=-1), 0, 1),
                      {"part": ["diagonal", "off-diagonal"], "quantile": list(QUARTILES),
                       "epoch": npi["epoch"].values}, variant, normalization)


def spectrum(ds: xr.Dataset, *, seeds=None) -> xr.Dataset:
    """Item 5: eigenvalues of eta_hat per checkpoint, condition number, effective rank.

    Returns a Dataset with `eigenvalues` `(seed, epoch, batch, mode)` sorted in decreasing
    order (NaN padding last), `condition_number` = largest / smallest positive eigenvalue
    (undamped eigenvalues at round-off level <= 0 are left out of it),
    `effective_rank` = exp(Shannon entropy of lambda / sum(lambda)) (Roy & Vetterli), and
    `rank` (the gradient-span dimension r) when the sweep stores it; all per (seed, epoch, batch).
    """
    if "eta_eigenvalues" not in ds:
        raise InputError("ds: the sweep has no 'eta_eigenvalues' variable")
    eig = ds["eta_eigenvalues"].sel(seed=_labels(ds, "seed", seeds, "seeds"))
    eig = eig.transpose("seed", "epoch", "batch", "mode")
    values = np.asarray(eig.values, dtype=np.float64)
    if np.any(np.isinf(values)):
        raise InputError("ds['eta_eigenvalues']: contains Inf")
    ordered = -np.sort(-np.where(np.isnan(values), -np.inf, values), axis=-1)
    ordered[np.isinf(ordered)] = np.nan
    finite = np.isfinite(ordered)
    positive_only = np.where(finite & (ordered > 0), ordered, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a matrix without positive modes
        largest = np.nanmax(positive_only, axis=-1)
        smallest = np.nanmin(positive_only, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        condition = np.where(smallest > 0, largest / smallest, np.inf)
        positive = np.where(finite & (ordered > 0), ordered, 0.0)
        p = positive / positive.sum(axis=-1, keepdims=True)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    lead = {d: eig[d].values for d in ("seed", "epoch", "batch")}
    out = xr.Dataset(
        {
            "eigenvalues": (("seed", "epoch", "batch", "mode"), ordered),
            "condition_number": (("seed", "epoch", "batch"), condition),
            "effective_rank": (("seed", "epoch", "batch"), np.exp(entropy)),
        },
        coords={**lead, "mode": np.arange(values.shape[-1])},
    )
    if "rank" in ds:
        out["rank"] = ds["rank"].sel(seed=out["seed"]).transpose("seed", "epoch", "batch")
    return out


def similarity(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
    epoch=None, seeds=None, n_bins: int = 12, pairs: str = "all",
) -> xr.Dataset:
    """Item 6: influence vs the scaled input distance in log-spaced overlapping bins.

    Off-diagonal pairs (n != m) only (the distance of a pair with itself is 0). `pairs`:
    "all", "intra" or "inter" class pairs. Bin k spans [edge_k, edge_{k+2}) of `n_bins + 1`
    log-spaced edges from the smallest to the largest positive distance, so neighbouring bins
    overlap by half. Returns a Dataset over `bin` with `center` (geometric), `q25`, `median`,
    `q75`, `count`; attrs `spearman_rho`, `spearman_p` over every pair.
    """
    if "input_distance" not in ds:
        raise InputError("ds: the sweep has no 'input_distance' variable")
    if n_bins < 1:
        raise InputError(f"n_bins: must be positive, got {n_bins}")
    if pairs not in ("all", "intra", "inter"):
        raise InputError(f"pairs: unknown {pairs!r}; expected all, intra or inter")
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    dist = ds["input_distance"]
    if "variant" in dist.dims:
        dist = dist.sel(variant=variant)
    if "epoch" not in dist.dims:
        dist = dist.expand_dims(epoch=npi["epoch"].values)
    dist = dist.sel(seed=npi["seed"].values, epoch=npi["epoch"].values, batch=npi["batch"].values)
    dist = dist.transpose(*npi.dims).values
    n_classes, n_times = npi.sizes["c_resp"], npi.sizes["t_resp"]
    mask = ag.entry_mask(n_classes, n_times, pairs) & ~ag.entry_mask(n_classes, n_times, "intra", 0)
    x = dist[..., mask].ravel()
    y = npi.values[..., mask].ravel()
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise InputError("ds['input_distance']: fewer than 2 positive finite distances")
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-12), n_bins + 2)
    rows = []
    for k in range(n_bins):
        lo, hi = edges[k], edges[k + 2]
        q1, q2, q3, n = _quartiles(y[(x >= lo) & (x < hi)])
        rows.append((math.sqrt(lo * hi), q1, q2, q3, n))
    rows = np.array(rows)
    rho, pval = stats.spearmanr(x, y)
    return xr.Dataset(
        {
            "q25": ("bin", rows[:, 1]),
            "median": ("bin", rows[:, 2]),
            "q75": ("bin", rows[:, 3]),
            "count": ("bin", rows[:, 4].astype(int)),
        },
        coords={"bin": np.arange(n_bins), "center": ("bin", rows[:, 0]),
                "lower": ("bin", edges[:n_bins]), "upper": ("bin", edges[2:n_bins + 2])},
        attrs={"variant": variant, "normalization": normalization, "pairs": pairs,
               "spearman_rho": float(rho), "spearman_p": float(pval), "n_pairs": int(x.size)},
    )


def _pearson_with_reason(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """The Pearson r of the finite pairs, or NaN with the reason."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3:
        return math.nan, f"fewer than 3 points ({x.size})"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, "constant ratio or rollout error"
    return float(ag.pearson(x, y, zero_spread="tolerance")), ""


def rollout_ratio(
    ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "none", epoch=None,
) -> xr.DataArray:
    """R per (seed, class, batch): sum of the off-diagonal / sum of the diagonal entries of the
    class's `T x T` intra-class block of Pi at `epoch` (default: the final checkpoint).

    normalization: "none" (default) uses the raw matrix, as the follow-up does (its `pcs.jl`
    calls `get_hat_normed` without a normalization); any name of
    `pdeinf.influence.normalize.NORMALIZATIONS` normalises each `N x N` matrix first.
    Returns dims `(seed, class, batch)` (class = the response class), dimensionless.
    """
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch)
    if npi.sizes["epoch"] != 1:
        raise InputError(f"epoch: the ratio R needs one checkpoint, got {npi.sizes['epoch']}")
    ratio = ag.cross_time_ratio(npi.values[:, 0])  # [S, B, C]
    return xr.DataArray(
        np.moveaxis(ratio, 2, 1),
        dims=("seed", "class", "batch"),
        coords={"seed": npi["seed"].values, "class": npi["c_resp"].values,
                "batch": npi["batch"].values},
        name="ratio",
        attrs={"variant": variant, "normalization": normalization,
               "epoch": int(npi["epoch"].values[0])},
    )


def rollout_link(
    ds: xr.Dataset, rollouts: xr.DataArray, *, variant: str = "gauss-newton",
    normalization: str = "none", epoch=None, max_horizon: int = 16,
) -> xr.Dataset:
    """Item 7 (the follow-up's rollout link): R vs cumulative rollout SMSE, per horizon dt.

    R = `rollout_ratio` (sum of off-diagonal / sum of diagonal of each class's T x T block of
    the **raw** Pi by default, as the follow-up; pass `normalization` to use another), per
    (seed, class, batch) at `epoch` (default: final). `rollouts`: per-step SMSE with dims
    `(seed, class, trajectory, start, horizon)`, the horizon axis ordered by step (first entry
    = one-step error), trajectory index = influence batch index, NaN where a start has no such
    step. Cumulative error for dt = sum of the first dt steps from each start, median over the
    starts that reach dt. Pearson correlation across (seed, class, batch) for dt = 1..max_horizon;
    NaN with a reason (variable `reason`) when fewer than 3 finite points or no spread.
    """
    needed = ("seed", "class", "trajectory", "start", "horizon")
    if not isinstance(rollouts, xr.DataArray) or any(d not in rollouts.dims for d in needed):
        raise InputError(f"rollouts: expected an xr.DataArray with dims {needed}")
    if max_horizon < 1:
        raise InputError(f"max_horizon: must be positive, got {max_horizon}")
    ratio_da = rollout_ratio(ds, variant=variant, normalization=normalization, epoch=epoch)
    ratio = ratio_da.values  # [S, C, B]
    seeds, classes, batches = (ratio_da[d].values for d in ("seed", "class", "batch"))

    roll = rollouts.transpose(*needed)
    for dim, wanted in (("seed", seeds), ("trajectory", batches)):
        missing = [v for v in wanted if v not in roll[dim].values]
        if missing:
            raise InputError(f"rollouts: {dim} {missing} missing for the influence batches "
                             f"(have {roll[dim].values})")
    roll_classes = list(roll["class"].values)
    if all(c in roll_classes for c in classes):  # else: the same classes under other labels
        roll = roll.sel({"class": list(classes)})
    elif roll.sizes["class"] != len(classes):
        raise InputError(f"rollouts: classes {roll_classes} do not match the sweep's {list(classes)}")
    roll = roll.sel(seed=seeds, trajectory=batches).values.astype(np.float64)  # [S,C,B,start,h]
    if np.any(np.isinf(roll)):
        raise InputError("rollouts: contains Inf")
    horizon = min(max_horizon, roll.shape[-1])
    cumulative = np.cumsum(roll[..., :horizon], axis=-1)  # NaN propagates past missing steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        error = np.nanmedian(cumulative, axis=-2)  # [S, C, B, dt]
    dts = np.arange(1, horizon + 1)
    corr, reasons = zip(*(_pearson_with_reason(ratio.ravel(), error[..., k].ravel())
                          for k in range(horizon)))
    return xr.Dataset(
        {
            "ratio": (("seed", "class", "batch"), ratio),
            "rollout_error": (("seed", "class", "batch", "dt"), error),
            "correlation": ("dt", np.array(corr)),
            "reason": ("dt", np.array(reasons, dtype=object)),
        },
        coords={"seed": seeds, "class": classes, "batch": batches, "dt": dts},
        attrs=dict(ratio_da.attrs),
    )


def paper_rollout_correlation(pde: str, model: str) -> pd.Series:
    """The follow-up's published correlations for (PDE, model), a Series indexed by dt = 1..16."""
    key = (pde, model.lower())
    if key not in PAPER_ROLLOUT_CORRELATION:
        raise InputError(f"pde/model: no published values for {pde}/{model}")
    values = PAPER_ROLLOUT_CORRELATION[key]
    return pd.Series(values, name=f"paper {model} {pde}").rename_axis("dt")


def variant_heatmaps(
    ds: xr.Dataset, *, names=None, normalization: str = "standard", epoch=None, seeds=None,
) -> xr.DataArray:
    """Items 8-9: temporal heatmaps of several variants stacked along `variant`."""
    names = list(names) if names is not None else variants(ds)
    maps = [temporal_heatmap(ds, variant=v, normalization=normalization, epoch=epoch, seeds=seeds)
            for v in names]
    return xr.concat(maps, dim="variant").assign_coords(variant=("variant", names))
