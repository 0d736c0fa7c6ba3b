"""The seed paper's findings (arXiv 2509.00024) measured on our runs: for each finding of
`pdeinf.analysis.registry.FINDING_RULES` exactly the statistic its rule defines, computed once per
unit of replication (dims seed[, batch]), and its record (`evaluate.evaluate_units`).

Inputs are the aggregations of `pdeinf.analysis.seed_paper` (standardized H, similarity curves,
the seed-paper dataset, training histories). Pure: xarray / numpy / pandas in, dicts out.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.evaluate import evaluate_units, finding_lines  # noqa: F401  (public here)
from pdeinf.analysis.seed_paper import (
    MAX_LAG,
    class_units,
    final_validation,
    lag_units,
    seed_crossings,
    standardized_pairs,
)
from pdeinf.errors import InputError

# --------------------------------------------------------------------------- finding statistics


def _abs_lag_mean(hn: xr.DataArray, lag: int, pair: str) -> xr.DataArray:
    """Per (seed, batch): mean Ĥ over the intra/inter entries with |τ - t| = lag."""
    # +lag and -lag hold equally many entries, so the mean over |dt| = lag is their average.
    return lag_units(hn, abs(lag)).sel(pair=pair, dt=[-lag, lag]).mean("dt")


def decay_units(hn: xr.DataArray, near: int = 1, far: int = MAX_LAG) -> xr.DataArray:
    """temporal_decay / mass_decay / energy_decay: per (seed, batch) intra-class mean at
    |dt| = near minus at |dt| = far."""
    return _abs_lag_mean(hn, near, "intra") - _abs_lag_mean(hn, far, "intra")


def inter_gap_units(hn: xr.DataArray) -> xr.DataArray:
    """inter_below_intra: per (seed, batch) intra- minus inter-class mean at |dt| = 1."""
    return _abs_lag_mean(hn, 1, "intra") - _abs_lag_mean(hn, 1, "inter")


def class_locked_units(hn: xr.DataArray) -> xr.DataArray:
    """class_locked: per (seed, batch) `aggregate.diagonal_contrast` of the time-averaged
    class matrix."""
    cu = class_units(hn)
    return xr.DataArray(ag.diagonal_contrast(cu.values), dims=("seed", "batch"),
                        coords={"seed": cu["seed"].values, "batch": cu["batch"].values})


def seed_coherence_ratio(hn: xr.DataArray) -> xr.DataArray:
    """ns_broader_coherence input: per seed, the mean over its batches of the intra-class mean
    at |dt| = 1 over that at dt = 0, dims (seed,)."""
    return (_abs_lag_mean(hn, 1, "intra").mean("batch")
            / _abs_lag_mean(hn, 0, "intra").mean("batch"))


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
    names = [str(c) for c in (hn["c_resp"].values if "c_resp" in hn.coords else range(n_c))]
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
    return [evaluate_units("lag0_ridge", units.sel(cls=cls, drop=True), pde=pde, model=model,
                           key=f"{pde}-{model}" if str(cls) == "all" else None, cls=str(cls))
            for cls in units["cls"].values]


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
                out[name].append(evaluate_units(name, UNIT_STATISTICS[name](hn), pde=pde,
                                                model=model, key=f"{pde}-{model}"))
    return out


def broader_coherence_findings(hns: dict) -> list:
    """ns_broader_coherence per model held on both PDEs: per seed, the coherence ratio
    H(|dt|=1)/H(dt=0) on NS minus on CE (seeds matched by label). hns: {(pde, model):
    standardized H_CC}."""
    return [evaluate_units("ns_broader_coherence",
                           paired_difference(*(seed_coherence_ratio(hns[(pde, model)])
                                               for pde in ("NS", "CE"))),
                           pde="NS-CE", model=model, key=model)
            for model in dict.fromkeys(m for _, m in hns)
            if ("NS", model) in hns and ("CE", model) in hns]


def similarity_findings(datasets: dict, curves: dict) -> dict:
    """similarity_decay (per-seed Spearman of H_CC with d, Fisher-z averaged) and
    correlation_length (per-seed zero crossing of the smoothing curve) per (PDE, model)."""
    return {"similarity_decay": [evaluate_units("similarity_decay", seed_spearman(ds), pde=pde,
                                                model=model, scale="fisher-z")
                                 for (pde, model), ds in datasets.items()],
            "correlation_length": [evaluate_units("correlation_length",
                                                  seed_crossings(curves[(pde, model)]),
                                                  pde=pde, model=model, key=pde)
                                   for pde, model in datasets]}


def _unet_minus_vit(name: str, by_pair: dict, units, pdes=None, fold=None) -> list:
    """The record of `name` on `units(value)` of UNet minus ViT (paired by seed; `fold`
    applied to the difference) for each PDE of `by_pair` ({(pde, model): value}) that holds
    both models (and is in `pdes`, if given)."""
    out = []
    for pde in dict.fromkeys(p for p, _ in by_pair):
        if (pde, "unet") in by_pair and (pde, "vit") in by_pair and (pdes is None or pde in pdes):
            diff = paired_difference(*(units(by_pair[(pde, m)]) for m in ("unet", "vit")))
            out.append(evaluate_units(name, diff if fold is None else fold(diff), pde=pde,
                                      model="unet-vit", key=pde))
    return out


def ntk_findings(datasets: dict) -> list:
    """vit_smaller_ntk_eigenvalue per PDE with both models: log10 top NTK eigenvalue, UNet
    minus ViT, per (seed, batch)."""
    return _unet_minus_vit("vit_smaller_ntk_eigenvalue", datasets,
                           lambda ds: np.log10(ds["ntk_top_eigenvalue"]))


def _log_final_validation(history) -> xr.DataArray:
    """log10 final validation SMSE per seed (the seed fixes the split and initialisation)."""
    final = final_validation(history)
    return xr.DataArray(np.log10(final.to_numpy(float)), dims=("seed",),
                        coords={"seed": final.index.to_numpy()})


def validation_findings(histories: dict) -> dict:
    """vit_beats_unet_ce (CE: per seed log10 final validation SMSE, UNet minus ViT) and
    ns_models_comparable (NS: its absolute value per seed)."""
    return {"vit_beats_unet_ce": _unet_minus_vit("vit_beats_unet_ce", histories,
                                                 _log_final_validation, pdes=("CE",)),
            "ns_models_comparable": _unet_minus_vit("ns_models_comparable", histories,
                                                    _log_final_validation, pdes=("NS",), fold=abs)}
