"""The seed paper's findings (arXiv 2509.00024) on our runs: for each rule of
`pdeinf.analysis.registry.FINDING_RULES` its statistic per unit of replication (dims seed[,
batch]) from the aggregations of `pdeinf.analysis.seed_paper`, and its record
(`evaluate.evaluate_units`). Pure: xarray / numpy / pandas in, dicts out.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis import seed_paper as sp
from pdeinf.analysis.evaluate import evaluate_units, finding_lines  # noqa: F401  (public here)
from pdeinf.errors import InputError


def _abs_lag_mean(hn: xr.DataArray, lag: int, pair: str) -> xr.DataArray:
    """Per (seed, batch): mean Ĥ over the intra/inter entries with |τ - t| = lag."""
    # +lag and -lag hold equally many entries, so the mean over |dt| = lag is their average.
    return sp.lag_units(hn, abs(lag)).sel(pair=pair, dt=[-lag, lag]).mean("dt")


def decay_units(hn: xr.DataArray, near: int = 1, far: int = sp.MAX_LAG) -> xr.DataArray:
    """temporal_decay / mass_decay / energy_decay: per (seed, batch) intra-class mean at
    |dt| = near minus at |dt| = far."""
    return _abs_lag_mean(hn, near, "intra") - _abs_lag_mean(hn, far, "intra")


def inter_gap_units(hn: xr.DataArray) -> xr.DataArray:
    """inter_below_intra: per (seed, batch) intra- minus inter-class mean at |dt| = 1."""
    return _abs_lag_mean(hn, 1, "intra") - _abs_lag_mean(hn, 1, "inter")


def class_locked_units(hn: xr.DataArray) -> xr.DataArray:
    """class_locked: per (seed, batch) `diagonal_contrast` of the time-averaged class matrix."""
    cu = sp.class_units(hn)
    return xr.DataArray(ag.diagonal_contrast(cu.values), dims=("seed", "batch"),
                        coords={"seed": cu["seed"].values, "batch": cu["batch"].values})


def ridge_units(hn: xr.DataArray) -> xr.DataArray:
    """lag0_ridge: per (seed, batch) the intra-class mean at dt = 0 over the intra-class mean
    at |dt| = 1, pooled over classes ("all") and per class; dims (seed, batch, cls)."""
    blocks = ag.to_blocks(hn, ("seed", "batch"))
    lag0, lag1 = (np.diagonal(ag.class_matrix(blocks, lag=lag), axis1=-2, axis2=-1)
                  for lag in (0, (-1, 1)))  # [S, B, C]
    pooled = lag0.mean(-1, keepdims=True) / lag1.mean(-1, keepdims=True)
    names = [str(c) for c in (hn["c_resp"].values if "c_resp" in hn.coords else range(blocks.shape[2]))]
    return xr.DataArray(np.concatenate([pooled, lag0 / lag1], axis=-1),
                        dims=("seed", "batch", "cls"),
                        coords={"seed": hn["seed"].values, "batch": hn["batch"].values,
                                "cls": ["all", *names]})


def seed_spearman(ds: xr.Dataset, bra: str = "C") -> xr.DataArray:
    """similarity_decay: per seed, the Spearman correlation of H with d over all non-self pairs
    of its batches, dims (seed,)."""
    _, h, d = sp.standardized_pairs(ds, bra)
    rho = [spearmanr(h[i].ravel(), d[i].ravel())[0] for i in range(h.shape[0])]
    return xr.DataArray(np.asarray(rho, dtype=np.float64), dims=("seed",),
                        coords={"seed": ds["seed"].values})


def paired_difference(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    """`a - b` per (seed, batch) on the common seeds; per seed (batch means) where the batches
    differ. InputError when no seed is common."""
    seeds = sorted(set(a["seed"].values.tolist()) & set(b["seed"].values.tolist()))
    if not seeds:
        raise InputError("a, b: no common seed")
    a, b = a.sel(seed=seeds), b.sel(seed=seeds)
    if "batch" in a.dims and "batch" in b.dims and \
            np.array_equal(a["batch"].values, b["batch"].values):
        return a - b
    return a.mean("batch") - b.mean("batch") if "batch" in a.dims else a - b


#: Unit-level statistic of each per-(PDE, model) influence finding (values per (seed, batch)).
UNIT_STATISTICS = {"temporal_decay": decay_units, "mass_decay": decay_units,
                   "energy_decay": decay_units, "inter_below_intra": inter_gap_units,
                   "class_locked": class_locked_units}


def influence_findings(hns: dict, names) -> dict:
    """{name: [record per (PDE, model)]} of the per-(PDE, model) influence findings
    (`UNIT_STATISTICS` and lag0_ridge: pooled over classes, against the paper's number, and
    per class, direction only). hns: {(pde, model): standardized H of the finding's bra}."""
    known = [*UNIT_STATISTICS, "lag0_ridge"]
    out = {}
    for name in names:
        if name not in known:
            raise InputError(f"names: {name!r} is not one of {known}")
        out[name] = []
        for (pde, model), hn in hns.items():
            if name == "lag0_ridge":
                units = ridge_units(hn)
                out[name].extend(evaluate_units(
                    name, units.sel(cls=cls, drop=True), pde=pde, model=model,
                    key=f"{pde}-{model}" if str(cls) == "all" else None, cls=str(cls))
                    for cls in units["cls"].values)
            else:
                out[name].append(evaluate_units(name, UNIT_STATISTICS[name](hn), pde=pde,
                                                model=model, key=f"{pde}-{model}"))
    return out


def broader_coherence_findings(hns: dict) -> list:
    """ns_broader_coherence per model held on both PDEs: per seed, the coherence ratio (the
    batch mean of the intra-class H at |dt| = 1 over that at dt = 0) on NS minus on CE (seeds
    matched by label). hns: {(pde, model): standardized H_CC}."""
    def ratio(hn):
        return _abs_lag_mean(hn, 1, "intra").mean("batch") / _abs_lag_mean(hn, 0, "intra").mean("batch")

    return [evaluate_units("ns_broader_coherence",
                           paired_difference(*(ratio(hns[(pde, model)]) for pde in ("NS", "CE"))),
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
                                                  sp.seed_crossings(curves[(pde, model)]),
                                                  pde=pde, model=model, key=pde)
                                   for pde, model in datasets]}


def _unet_minus_vit(name: str, by_pair: dict, units, pdes=None, fold=None) -> list:
    """Records of `name` on `fold(units(UNet) - units(ViT))` (paired by seed) for each PDE of
    `by_pair` ({(pde, model): value}) with both models (and in `pdes`, if given)."""
    out = []
    for pde in dict.fromkeys(p for p, _ in by_pair):
        if (pde, "unet") in by_pair and (pde, "vit") in by_pair and (pdes is None or pde in pdes):
            diff = paired_difference(*(units(by_pair[(pde, m)]) for m in ("unet", "vit")))
            out.append(evaluate_units(name, diff if fold is None else fold(diff), pde=pde,
                                      model="unet-vit", key=pde))
    return out


def ntk_findings(datasets: dict) -> list:
    """vit_smaller_ntk_eigenvalue: per (seed, batch) log10 top NTK eigenvalue, UNet - ViT."""
    return _unet_minus_vit("vit_smaller_ntk_eigenvalue", datasets,
                           lambda ds: np.log10(ds["ntk_top_eigenvalue"]))


def validation_findings(histories: dict) -> dict:
    """vit_beats_unet_ce (CE: per seed log10 final validation SMSE, UNet minus ViT) and
    ns_models_comparable (NS: its absolute value per seed)."""
    def log_final(history) -> xr.DataArray:
        final = sp.final_validation(history)
        return xr.DataArray(np.log10(final.to_numpy(float)), dims=("seed",),
                            coords={"seed": final.index.to_numpy()})

    return {"vit_beats_unet_ce": _unet_minus_vit("vit_beats_unet_ce", histories,
                                                 log_final, pdes=("CE",)),
            "ns_models_comparable": _unet_minus_vit("ns_models_comparable", histories,
                                                    log_final, pdes=("NS",), fold=abs)}
