"""Observables of the influence sweep (docs/method.md section 6) as xarray objects, from the
dataset of `pdeinf.pipeline.ensure_influence`: `pi` (seed, epoch, batch, [variant,] t_resp, c_resp,
t_pert, c_pert), `losses`, `eta_eigenvalues`, `rank`, `input_distance`. Each N x N matrix is
normalised on its own; aggregates pool seeds x batches. Values are dimensionless.
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

#: The follow-up's published Pearson r of R (raw Pi) with the cumulative rollout SMSE,
#: (PDE, model) -> {dt: r} for dt = 1..16; a view of `registry.PAPER_ROLLOUT_PEARSON`.
PAPER_ROLLOUT_CORRELATION: dict[tuple[str, str], dict[int, float]] = {
    tuple(key.split("-")): dict(enumerate(values, start=1)) for key, values in PAPER_ROLLOUT_PEARSON.items()}


def combine_variants(datasets: dict[str, xr.Dataset]) -> xr.Dataset:
    """Single-variant sweeps -> one Dataset, `pi` with a `variant` dim (other variables: the first's)."""
    if not datasets:
        raise InputError("datasets: at least one variant is needed")
    for ds in datasets.values():
        _check_dataset(ds)
    pis = [(ds["pi"].sel(variant=name) if "variant" in ds["pi"].dims else ds["pi"])
           .drop_vars("variant", errors="ignore") for name, ds in datasets.items()]
    first = next(iter(datasets.values()))
    out = first.drop_vars("pi").drop_dims("variant", errors="ignore")
    stacked = xr.concat(pis, dim="variant", join="exact", coords="minimal", compat="override")
    out["pi"] = stacked.assign_coords(variant=("variant", list(datasets))).transpose(
        "seed", "epoch", "batch", "variant", ...)
    out.attrs = {k: v for k, v in first.attrs.items() if k not in ("metric", "observable")}
    return out


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


def normalized_pi(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
                  epoch=None, seeds=None) -> xr.DataArray:
    """Pi of one variant normalised per matrix, (seed, epoch, batch, *BLOCK_ORDER); epoch None: the last."""
    _check_dataset(ds)
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization: unknown {normalization!r}; expected one of "
                         f"{', '.join(NORMALIZATIONS)}")
    sel = {"epoch": _labels(ds, "epoch", epoch, "epoch"), "seed": _labels(ds, "seed", seeds, "seeds")}
    names = variants(ds)
    if variant not in names:
        raise InputError(f"variant: unknown {variant!r}; this sweep holds {', '.join(names)}")
    pi = ds["pi"].sel(variant=variant) if "variant" in ds["pi"].dims else ds["pi"]
    pi = pi.sel(sel).transpose("seed", "epoch", "batch", *ag.BLOCK_ORDER)
    values = np.ascontiguousarray(ag.check_pi(pi, f"ds['pi'] (variant {variant!r})", finite=True).values,
                                  dtype=np.float64)
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


def temporal_heatmap(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
                     epoch=None, seeds=None) -> xr.DataArray:
    """Item 1: median over seeds x batches x classes of intra-class entries, dims (t_resp, t_pert)."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    return _influence(ag.heatmap(npi.values, statistic="median", pooled=True),
                      {d: npi[d].values for d in ("t_resp", "t_pert")}, variant, normalization)


def horizon_curve(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
                  epoch=None, seeds=None, max_lag: int = 11) -> xr.DataArray:
    """Item 2: quartiles at each dt of the entries pooled over seeds x batches x pairs, dims (pair,
    quantile, dt); entry counts in coordinate `count`."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    lags = ag.lag_range(max_lag, npi.sizes["t_resp"])
    pooled = ag.lag_curve(npi.values, lags, statistic=ag.quartiles)  # [q1 q2 q3 n, pair, dt]
    counts = np.nan_to_num(pooled[3]).astype(int)  # no entry (one class, inter): count 0
    return _influence(np.moveaxis(pooled[:3], 0, 1),
                      {"pair": list(ag.PAIRS), "quantile": list(QUARTILES), "dt": lags},
                      variant, normalization).assign_coords(count=(("pair", "dt"), counts))


def class_matrix(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
                 epoch=None, seeds=None, lag: int = 0) -> xr.DataArray:
    """Item 3: median of the entries at dt = `lag` pooled over seeds x batches, dims (c_resp, c_pert)."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    if abs(lag) >= npi.sizes["t_resp"]:
        raise InputError(f"lag: |{lag}| must be smaller than the number of times {npi.sizes['t_resp']}")
    return _influence(ag.class_matrix(npi.values, lag=lag, statistic="median", pooled=True),
                      {d: npi[d].values for d in ("c_resp", "c_pert")}, variant, normalization,
                      lag=lag)


def dynamics(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "none",
             seeds=None) -> xr.DataArray:
    """Item 4: quartiles of the mean diagonal / off-diagonal entry, dims (part, quantile, epoch)."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch="all", seeds=seeds)
    parts = np.stack(ag.diagonal_means(ag.flatten(npi.values)))  # [2, S, E, B]
    per_epoch = np.moveaxis(parts, 2, 1).reshape(2, npi.sizes["epoch"], -1)
    return _influence(np.moveaxis(np.quantile(per_epoch, QUARTILES, axis=-1), 0, 1),
                      {"part": ["diagonal", "off-diagonal"], "quantile": list(QUARTILES),
                       "epoch": npi["epoch"].values}, variant, normalization)


def spectrum(ds: xr.Dataset, *, seeds=None) -> xr.Dataset:
    """Item 5, per (seed, epoch, batch): `eigenvalues` of eta_hat, decreasing (NaN last),
    `condition_number` (of the positive ones), `effective_rank` (Roy & Vetterli), `rank`."""
    if "eta_eigenvalues" not in ds:
        raise InputError("ds: the sweep has no 'eta_eigenvalues' variable")
    lead = ("seed", "epoch", "batch")
    eig = ds["eta_eigenvalues"].sel(seed=_labels(ds, "seed", seeds, "seeds")).transpose(*lead, "mode")
    values = np.asarray(eig.values, dtype=np.float64)
    if np.any(np.isinf(values)):
        raise InputError("ds['eta_eigenvalues']: contains Inf")
    ordered = -np.sort(-values, axis=-1)  # decreasing, NaN last
    positive = np.where(ordered > 0, ordered, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        smallest = np.where(positive > 0, positive, np.inf).min(axis=-1)  # inf: no positive mode
        condition = np.where(np.isfinite(smallest), ordered[..., 0] / smallest, np.inf)
        p = positive / positive.sum(axis=-1, keepdims=True)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    out = xr.Dataset({"eigenvalues": ((*lead, "mode"), ordered), "condition_number": (lead, condition),
                      "effective_rank": (lead, np.exp(entropy))},
                     coords={**{d: eig[d].values for d in lead}, "mode": np.arange(values.shape[-1])})
    if "rank" in ds:
        out["rank"] = ds["rank"].sel(seed=out["seed"]).transpose(*lead)
    return out


def similarity(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "standard",
               epoch=None, seeds=None, n_bins: int = 12, pairs: str = "all") -> xr.Dataset:
    """Item 6: quartiles of the influence of pairs n != m (`pairs`) in `n_bins` half-overlapping
    log-spaced bins of the input distance (`center`, `q25`, `median`, `q75`, `count`; Spearman)."""
    if "input_distance" not in ds:
        raise InputError("ds: the sweep has no 'input_distance' variable")
    if n_bins < 1:
        raise InputError(f"n_bins: must be positive, got {n_bins}")
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch, seeds=seeds)
    dist = ds["input_distance"]
    if "variant" in dist.dims:
        dist = dist.sel(variant=variant)
    if "epoch" not in dist.dims:
        dist = dist.expand_dims(epoch=npi["epoch"].values)
    dist = dist.sel(seed=npi["seed"].values, epoch=npi["epoch"].values, batch=npi["batch"].values)
    x = ag.pair_entries(dist.transpose(*npi.dims).values, pairs).ravel()
    y = ag.pair_entries(npi.values, pairs).ravel()
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise InputError("ds['input_distance']: fewer than 2 positive finite distances")
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-12), n_bins + 2)
    rows = ag.window_stats(x, y, edges, 2, lambda _, v: ag.quartiles(v))  # [bin, q1 q2 q3 n]
    rho, pval = stats.spearmanr(x, y)
    return xr.Dataset(
        {"q25": ("bin", rows[:, 0]), "median": ("bin", rows[:, 1]), "q75": ("bin", rows[:, 2]),
         "count": ("bin", rows[:, 3].astype(int))},
        coords={"bin": np.arange(n_bins), "center": ("bin", np.sqrt(edges[:n_bins] * edges[2:])),
                "lower": ("bin", edges[:n_bins]), "upper": ("bin", edges[2:n_bins + 2])},
        attrs={"variant": variant, "normalization": normalization, "pairs": pairs,
               "spearman_rho": float(rho), "spearman_p": float(pval), "n_pairs": int(x.size)})


def _pearson_with_reason(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """The Pearson r of the finite pairs, or NaN with the reason."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3:
        return math.nan, f"fewer than 3 points ({x.size})"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, "constant ratio or rollout error"
    return float(ag.pearson(x, y, zero_spread="tolerance")), ""


def rollout_ratio(ds: xr.Dataset, *, variant: str = "gauss-newton", normalization: str = "none",
                  epoch=None) -> xr.DataArray:
    """R (`aggregate.cross_time_ratio`) per (seed, class, batch) at `epoch` (default: final) of the
    raw Pi (as the follow-up's `pcs.jl`) or of Pi normalised by `normalization`."""
    npi = normalized_pi(ds, variant=variant, normalization=normalization, epoch=epoch)
    if npi.sizes["epoch"] != 1:
        raise InputError(f"epoch: the ratio R needs one checkpoint, got {npi.sizes['epoch']}")
    ratio = ag.cross_time_ratio(npi.values[:, 0])  # [S, B, C]
    return xr.DataArray(
        np.moveaxis(ratio, 2, 1), dims=("seed", "class", "batch"), name="ratio",
        coords={"seed": npi["seed"].values, "class": npi["c_resp"].values, "batch": npi["batch"].values},
        attrs={"variant": variant, "normalization": normalization, "epoch": int(npi["epoch"].values[0])})


def rollout_link(ds: xr.Dataset, rollouts: xr.DataArray, *, variant: str = "gauss-newton",
                 normalization: str = "none", epoch=None, max_horizon: int = 16) -> xr.Dataset:
    """Item 7: Pearson r over (seed, class, batch) of `rollout_ratio` with the rollout error at dt =
    1..max_horizon, the sum of the first dt steps of `rollouts` (seed, class, trajectory = batch,
    start, horizon), median over starts; NaN with a `reason` below 3 points or without spread."""
    needed = ("seed", "class", "trajectory", "start", "horizon")
    if not isinstance(rollouts, xr.DataArray) or any(d not in rollouts.dims for d in needed):
        raise InputError(f"rollouts: expected an xr.DataArray with dims {needed}")
    if max_horizon < 1:
        raise InputError(f"max_horizon: must be positive, got {max_horizon}")
    ratio_da = rollout_ratio(ds, variant=variant, normalization=normalization, epoch=epoch)
    ratio, (seeds, classes, batches) = ratio_da.values, (ratio_da[d].values for d in ratio_da.dims)
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
    corr, reasons = zip(*(_pearson_with_reason(ratio.ravel(), error[..., k].ravel()) for k in range(horizon)))
    return xr.Dataset(
        {"ratio": (("seed", "class", "batch"), ratio),
         "rollout_error": (("seed", "class", "batch", "dt"), error),
         "correlation": ("dt", np.array(corr)), "reason": ("dt", np.array(reasons, dtype=object))},
        coords={"seed": seeds, "class": classes, "batch": batches, "dt": np.arange(1, horizon + 1)},
        attrs=dict(ratio_da.attrs))


def paper_rollout_correlation(pde: str, model: str) -> pd.Series:
    """The follow-up's published correlations for (PDE, model), a Series indexed by dt = 1..16."""
    values = PAPER_ROLLOUT_CORRELATION.get((pde, model.lower()))
    if values is None:
        raise InputError(f"pde/model: no published values for {pde}/{model}")
    return pd.Series(values, name=f"paper {model} {pde}").rename_axis("dt")


def variant_heatmaps(ds: xr.Dataset, *, names=None, normalization: str = "standard", epoch=None,
                     seeds=None) -> xr.DataArray:
    """Items 8-9: temporal heatmaps of several variants stacked along `variant`."""
    names = list(names) if names is not None else variants(ds)
    return xr.concat([temporal_heatmap(ds, variant=v, normalization=normalization, epoch=epoch, seeds=seeds)
                      for v in names], dim="variant").assign_coords(variant=("variant", names))
