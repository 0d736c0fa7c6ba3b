"""The seed paper's findings (arXiv 2509.00024) measured on our runs: for each finding of
`pdeinf.analysis.registry.FINDING_RULES` exactly the statistic its rule defines, computed once per
unit of replication ([seeds, batches] or [seeds]), and the record of
`pdeinf.analysis.evaluate.evaluate_finding` (t-interval over seed means, two-part verdict).

Inputs are the aggregations of `pdeinf.analysis.seed_paper` (standardized H, similarity curves,
the seed-paper dataset, training histories). Pure: xarray / numpy / pandas in, dicts out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import spearmanr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.evaluate import describe_record, evaluate_finding
from pdeinf.analysis.seed_paper import (
    MAX_LAG,
    class_units,
    final_validation,
    lag_units,
    standardized_pairs,
    zero_crossing,
)
from pdeinf.errors import InputError

# --------------------------------------------------------------------------- finding statistics


def _abs_lag_mean(hn: xr.DataArray, lag: int, pair: str) -> xr.DataArray:
    """Per (seed, batch): mean Ĥ over the intra/inter entries with |τ - t| = lag."""
    units = lag_units(hn, max(abs(lag), 0))
    # +lag and -lag hold equally many entries, so the mean over |dt| = lag is their average.
    return units.sel(pair=pair, dt=[-lag, lag]).mean("dt")


def decay_units(hn: xr.DataArray, near: int = 1, far: int = MAX_LAG) -> xr.DataArray:
    """temporal_decay / mass_decay / energy_decay: per (seed, batch) intra-class mean at
    |dt| = near minus at |dt| = far."""
    return _abs_lag_mean(hn, near, "intra") - _abs_lag_mean(hn, far, "intra")


def inter_gap_units(hn: xr.DataArray) -> xr.DataArray:
    """inter_below_intra: per (seed, batch) intra- minus inter-class mean at |dt| = 1."""
    return _abs_lag_mean(hn, 1, "intra") - _abs_lag_mean(hn, 1, "inter")


def class_locked_units(hn: xr.DataArray) -> xr.DataArray:
    """class_locked: per (seed, batch) mean diagonal minus mean off-diagonal entry of the
    time-averaged class matrix."""
    cu = class_units(hn)
    return xr.DataArray(ag.diagonal_contrast(cu.values), dims=("seed", "batch"),
                        coords={"seed": cu["seed"].values, "batch": cu["batch"].values})


def coherence_ratio_units(hn: xr.DataArray) -> xr.DataArray:
    """ns_broader_coherence inputs: per (seed, batch) the intra-class mean at |dt| = 1 and at
    dt = 0, stacked along `part` ("dt1", "dt0")."""
    return xr.concat([_abs_lag_mean(hn, 1, "intra"), _abs_lag_mean(hn, 0, "intra")],
                     dim="part").assign_coords(part=["dt1", "dt0"]).transpose("seed", "batch", "part")


def seed_coherence_ratio(hn: xr.DataArray) -> xr.DataArray:
    """Per seed: mean over the seed's batches of H(|dt| = 1) over that of H(dt = 0), dims
    (seed,)."""
    means = coherence_ratio_units(hn).mean("batch")
    return means.sel(part="dt1", drop=True) / means.sel(part="dt0", drop=True)


def ridge_units(hn: xr.DataArray) -> xr.DataArray:
    """lag0_ridge: per (seed, batch) the intra-class mean at dt = 0 over the intra-class mean
    at |dt| = 1, pooled over classes ("all") and per class; dims (seed, batch, cls)."""
    blocks = ag.to_blocks(hn, ("seed", "batch"))
    n_c, n_t = blocks.shape[2], blocks.shape[3]
    intra = ag.intra_blocks(blocks)  # [S, B, C, T, T]
    dt = ag.time_lags(n_t)
    lag0 = intra[..., dt == 0].mean(-1)  # [S, B, C]
    lag1 = intra[..., np.abs(dt) == 1].mean(-1)
    pooled = lag0.mean(-1, keepdims=True) / lag1.mean(-1, keepdims=True)
    names = [str(c) for c in hn["c_resp"].values] if "c_resp" in hn.coords else \
        [str(c) for c in range(n_c)]
    return xr.DataArray(np.concatenate([pooled, lag0 / lag1], axis=-1),
                        dims=("seed", "batch", "cls"),
                        coords={"seed": hn["seed"].values, "batch": hn["batch"].values,
                                "cls": ["all", *names]})


def seed_spearman(ds: xr.Dataset, bra: str = "C") -> xr.DataArray:
    """similarity_decay: per seed, the Spearman correlation of H with d over all non-self pairs
    of the seed's batches, dims (seed,)."""
    _, h, d = standardized_pairs(ds, bra)
    rho = [spearmanr(h[i].ravel(), d[i].ravel())[0] for i in range(h.shape[0])]
    return xr.DataArray(np.asarray(rho, dtype=np.float64), dims=("seed",),
                        coords={"seed": ds["seed"].values})


def seed_crossings(curves: xr.Dataset) -> xr.DataArray:
    """Per seed, where that seed's smoothing curve first crosses zero (NaN where it does not),
    dims (seed,)."""
    x = np.asarray(curves["d_fine"].values, dtype=np.float64)
    fine = curves["fine"].transpose("seed", "fine").values
    return xr.DataArray(zero_crossing(x, fine), dims=("seed",),
                        coords={"seed": curves["seed"].values})


def paired_log_gap(unet: pd.Series, vit: pd.Series) -> xr.DataArray:
    """log10 final validation SMSE, UNet minus ViT, per common seed (the seed fixes the split
    and initialisation), dims (seed,)."""
    common = sorted(set(unet.index) & set(vit.index))
    if not common:
        raise InputError("unet, vit: no common seed")
    gap = np.log10(unet.loc[common].to_numpy(float)) - np.log10(vit.loc[common].to_numpy(float))
    return xr.DataArray(gap, dims=("seed",), coords={"seed": common})


def paired_difference(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    """`a - b` per (seed, batch) on the common seeds (UNet and ViT are trained from the same
    seeds and probed on the same test batches); per seed (batch means) where the batches
    differ. InputError when no seed is common."""
    seeds = sorted(set(a["seed"].values.tolist()) & set(b["seed"].values.tolist()))
    if not seeds:
        raise InputError("a, b: no common seed")
    a, b = a.sel(seed=seeds), b.sel(seed=seeds)
    if "batch" in a.dims and "batch" in b.dims and \
            np.array_equal(a["batch"].values, b["batch"].values):
        return a - b
    return a.mean("batch") - b.mean("batch") if "batch" in a.dims else a - b


# --------------------------------------------------------------------------- findings records


def _values(da: xr.DataArray) -> np.ndarray:
    """[seeds, batches] (or [seeds]) float64 values of a per-unit DataArray."""
    order = [d for d in ("seed", "batch") if d in da.dims]
    if set(da.dims) - set(order):
        raise InputError(f"values: expected dims (seed[, batch]), got {da.dims}")
    return np.asarray(da.transpose(*order).values, dtype=np.float64)


def record(name: str, units: xr.DataArray, *, pde: str, model: str, key: str | None = None,
           **extra) -> dict:
    """`evaluate_finding` of per-unit values (dims seed[, batch]) with their seed labels."""
    return evaluate_finding(name, _values(units), key=key, pde=pde, model=model,
                            seeds=[int(s) if np.issubdtype(type(s), np.integer) else str(s)
                                   for s in units["seed"].values.tolist()], **extra)


#: Unit-level statistic of each per-(PDE, model) influence finding (values per (seed, batch)).
UNIT_STATISTICS = {
    "temporal_decay": decay_units,
    "mass_decay": decay_units,
    "energy_decay": decay_units,
    "inter_below_intra": inter_gap_units,
    "class_locked": class_locked_units,
}


def ridge_findings(hn: xr.DataArray, *, pde: str, model: str) -> list[dict]:
    """lag0_ridge records: pooled over classes (held against the paper's number) and per class
    (the paper gives no per-class number: direction only)."""
    units = ridge_units(hn)
    out = []
    for cls in units["cls"].values:
        pooled = str(cls) == "all"
        out.append(record("lag0_ridge", units.sel(cls=cls, drop=True), pde=pde, model=model,
                          key=f"{pde}-{model}" if pooled else None, cls=str(cls)))
    return out


def influence_findings(hns: dict, names) -> dict:
    """{name: [record per (PDE, model)]} for the per-(PDE, model) influence findings
    (`UNIT_STATISTICS` and lag0_ridge). hns: {(pde, model): standardized H of the bra the
    finding names}."""
    known = [*UNIT_STATISTICS, "lag0_ridge"]
    out = {}
    for name in names:
        if name not in known:
            raise InputError(f"names: {name!r} is not one of {known}")
        out[name] = []
        for (pde, model), hn in hns.items():
            if name == "lag0_ridge":
                out[name].extend(ridge_findings(hn, pde=pde, model=model))
            else:
                out[name].append(record(name, UNIT_STATISTICS[name](hn), pde=pde, model=model,
                                        key=f"{pde}-{model}"))
    return out


def broader_coherence_findings(hns: dict) -> list:
    """ns_broader_coherence per model held on both PDEs: per seed, the coherence ratio
    H(|dt|=1)/H(dt=0) on NS minus on CE (seeds matched by label). hns: {(pde, model):
    standardized H_CC}."""
    out = []
    for model in dict.fromkeys(m for _, m in hns):
        if ("NS", model) in hns and ("CE", model) in hns:
            ns, ce = (seed_coherence_ratio(hns[(pde, model)]) for pde in ("NS", "CE"))
            out.append(record("ns_broader_coherence", paired_difference(ns, ce), pde="NS-CE",
                              model=model, key=model))
    return out


def similarity_findings(datasets: dict, curves: dict) -> dict:
    """similarity_decay (per-seed Spearman of H_CC with d, Fisher-z averaged) and
    correlation_length (per-seed zero crossing of the smoothing curve) per (PDE, model)."""
    decay, length = [], []
    for (pde, model), ds in datasets.items():
        decay.append(record("similarity_decay", seed_spearman(ds), pde=pde, model=model,
                            scale="fisher-z"))
        length.append(record("correlation_length", seed_crossings(curves[(pde, model)]),
                             pde=pde, model=model, key=pde))
    return {"similarity_decay": decay, "correlation_length": length}


def ntk_findings(datasets: dict) -> list:
    """vit_smaller_ntk_eigenvalue per PDE with both models: log10 top NTK eigenvalue, UNet
    minus ViT, per (seed, batch)."""
    out = []
    for pde in dict.fromkeys(p for p, _ in datasets):
        if (pde, "unet") in datasets and (pde, "vit") in datasets:
            unet, vit = (np.log10(datasets[(pde, m)]["ntk_top_eigenvalue"])
                         for m in ("unet", "vit"))
            out.append(record("vit_smaller_ntk_eigenvalue", paired_difference(unet, vit),
                              pde=pde, model="unet-vit", key=pde))
    return out


def validation_findings(histories: dict) -> dict:
    """vit_beats_unet_ce (CE: per seed log10 final validation SMSE, UNet minus ViT) and
    ns_models_comparable (NS: its absolute value per seed)."""
    out = {"vit_beats_unet_ce": [], "ns_models_comparable": []}
    for pde, name in (("CE", "vit_beats_unet_ce"), ("NS", "ns_models_comparable")):
        if (pde, "unet") in histories and (pde, "vit") in histories:
            gap = paired_log_gap(final_validation(histories[(pde, "unet")]),
                                 final_validation(histories[(pde, "vit")]))
            units = abs(gap) if name == "ns_models_comparable" else gap
            out[name].append(record(name, units, pde=pde, model="unet-vit", key=pde))
    return out


def finding_lines(findings: dict) -> list[str]:
    """`describe_record` of every record, in order."""
    return [describe_record(rec) for recs in findings.values()
            for rec in (recs if isinstance(recs, list) else [recs])]
