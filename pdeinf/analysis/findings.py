"""The measured numbers behind each paper finding, and the verdict of each rule (pure).

Each finding is one small function `(ds, rollouts, variant, normalization) -> dict` in
`FINDINGS`; `findings(ds, which=...)` computes only the ones asked for. Keys with a
`reproduced_` prefix are booleans (None when the input lacks what a rule needs).
"""
from __future__ import annotations

import math

import numpy as np

from pdeinf.analysis.coherence import (
    class_matrix,
    horizon_curve,
    rollout_link,
    similarity,
    spectrum,
    temporal_heatmap,
)
from pdeinf.errors import InputError

#: The decision rule of each finding, stated before any run: no threshold is tuned to a result.
#: Self-influence (n = m) is excluded from every rule, because for any PSD Pi it is large
#: trivially (Pi[n,n] + Pi[m,m] >= 2 Pi[n,m]); the rules test the structure beyond it.
FINDING_RULES = {
    "ridge": "intra-class median at dt=+1 and at dt=-1 exceeds the upper quartile at every |dt| >= 3",
    "inter_below_intra": "inter-class median at |dt|=1 is below the intra-class median at |dt|=1",
    "class_locked": "at lag 1, each class-matrix diagonal entry is the largest in its row",
    "anisotropic": "median effective rank of eta_hat is below half its median rank r",
    "similarity": "Spearman correlation of influence with input distance is negative",
    "rollout_negative": "Pearson correlation of R with rollout error is negative at dt=1",
}


def _temporal(ds, rollouts, variant, normalization) -> dict:
    """Ridge and inter/intra numbers from the horizon curve and the temporal heatmap."""
    out: dict = {}
    curve = horizon_curve(ds, variant=variant, normalization=normalization)
    med = curve.sel(quantile=0.5)
    intra, inter = med.sel(pair="intra"), med.sel(pair="inter")
    lags = curve["dt"].values
    far = np.abs(lags) >= 3
    heat = temporal_heatmap(ds, variant=variant, normalization=normalization).values
    dt_grid = np.subtract.outer(np.arange(heat.shape[0]), np.arange(heat.shape[1]))
    out["heatmap_dt0_median"] = float(np.median(np.diag(heat)))
    out["intra_median_dt0"] = float(intra.sel(dt=0))
    out["reproduced_inter_below_intra"] = out["reproduced_ridge"] = None
    if 1 not in lags:
        return out
    near = [float(intra.sel(dt=d)) for d in (1, -1)]
    out["intra_median_dt1"] = float(np.mean(near))
    out["inter_median_dt1"] = float(np.mean([float(inter.sel(dt=d)) for d in (1, -1)]))
    out["inter_intra_ratio_dt1"] = (
        out["inter_median_dt1"] / out["intra_median_dt1"] if out["intra_median_dt1"] else math.nan)
    out["reproduced_inter_below_intra"] = bool(out["inter_median_dt1"] < out["intra_median_dt1"])
    if far.any():
        far_heat = float(np.median(heat[np.abs(dt_grid) >= 3]))
        out["heatmap_far_median"] = far_heat
        out["ridge_contrast"] = out["heatmap_dt0_median"] - far_heat
        out["ridge_sharpness"] = out["heatmap_dt0_median"] / abs(far_heat) if far_heat else math.inf
        q3_intra = curve.sel(pair="intra", quantile=0.75)
        out["intra_q75_far_max"] = float(q3_intra.values[far].max())
        out["reproduced_ridge"] = bool(min(near) > out["intra_q75_far_max"])
    return out


def _classes(ds, rollouts, variant, normalization) -> dict:
    cm0 = class_matrix(ds, variant=variant, normalization=normalization).values
    off = ~np.eye(cm0.shape[0], dtype=bool)
    out = {"class_diagonal_mean_lag0": float(np.mean(np.diag(cm0))),
           "class_offdiagonal_mean_lag0": float(np.mean(cm0[off])),
           "reproduced_class_locked": None}
    if ds.sizes["t_resp"] > 1:
        cm1 = class_matrix(ds, variant=variant, normalization=normalization, lag=1).values
        out["class_diagonal_mean_lag1"] = float(np.mean(np.diag(cm1)))
        out["class_offdiagonal_mean_lag1"] = float(np.mean(cm1[off]))
        out["reproduced_class_locked"] = bool(all(cm1[i, i] >= cm1[i].max() for i in range(cm1.shape[0])))
    return out


def _anisotropy(ds, rollouts, variant, normalization) -> dict:
    if "eta_eigenvalues" not in ds:
        return {"reproduced_anisotropic": None}
    spec = spectrum(ds).sel(epoch=max(ds["epoch"].values))
    out = {"condition_number_median": float(np.median(spec["condition_number"])),
           "effective_rank_median": float(np.median(spec["effective_rank"])),
           "reproduced_anisotropic": None}
    if "rank" in spec:
        out["rank_median"] = float(np.median(spec["rank"]))
        out["reproduced_anisotropic"] = bool(out["effective_rank_median"] < 0.5 * out["rank_median"])
    return out


def _similarity(ds, rollouts, variant, normalization) -> dict:
    if "input_distance" not in ds:
        return {"reproduced_similarity": None}
    sim = similarity(ds, variant=variant, normalization=normalization)
    rho = sim.attrs["spearman_rho"]
    return {"similarity_spearman": rho, "reproduced_similarity": bool(rho < 0)}


def _rollout(ds, rollouts, variant, normalization) -> dict:
    if rollouts is None:
        return {"reproduced_rollout_negative": None}
    # R is the follow-up's ratio of the RAW matrix, whatever normalisation the other findings use
    corr = rollout_link(ds, rollouts, variant=variant, normalization="none")["correlation"]
    first = float(corr.sel(dt=1))
    return {"rollout_correlation_dt1": first, "rollout_correlation_last": float(corr[-1]),
            "rollout_last_dt": int(corr["dt"][-1]),
            "reproduced_rollout_negative": None if math.isnan(first) else bool(first < 0)}


#: finding -> the function that measures it (several findings share one computation).
FINDINGS = {
    "ridge": _temporal,
    "inter_below_intra": _temporal,
    "class_locked": _classes,
    "anisotropic": _anisotropy,
    "similarity": _similarity,
    "rollout_negative": _rollout,
}


def findings(ds, rollouts=None, *, which=None, variant: str = "gauss-newton",
             normalization: str = "standard") -> dict:
    """Measured numbers behind the findings named in `which` (default: all of `FINDINGS`) and
    whether each rule of `FINDING_RULES` holds. `ridge_sharpness` = median heatmap entry at
    dt=0 / |median heatmap entry at |dt| >= 3|."""
    which = list(FINDINGS) if which is None else [which] if isinstance(which, str) else list(which)
    unknown = [w for w in which if w not in FINDINGS]
    if unknown:
        raise InputError(f"which: unknown finding(s) {unknown}; expected {', '.join(FINDINGS)}")
    out: dict = {"variant": variant, "normalization": normalization}
    done = set()
    for name in which:
        measure = FINDINGS[name]
        if measure not in done:
            out.update(measure(ds, rollouts, variant, normalization))
            done.add(measure)
    return out


#: The measured numbers quoted beside each verdict.
_FINDING_NUMBERS = {
    "ridge": ("intra_median_dt1", "intra_q75_far_max", "ridge_sharpness"),
    "inter_below_intra": ("inter_median_dt1", "intra_median_dt1"),
    "class_locked": ("class_diagonal_mean_lag1", "class_offdiagonal_mean_lag1"),
    "anisotropic": ("effective_rank_median", "rank_median", "condition_number_median"),
    "similarity": ("similarity_spearman",),
    "rollout_negative": ("rollout_correlation_dt1", "rollout_correlation_last"),
}


def describe_findings(numbers: dict, keys=None) -> list[str]:
    """One sentence per finding, computed from `findings(...)` output (no pre-written verdict):
    the verdict of its rule and the measured numbers behind it. `keys`: a subset of
    `FINDING_RULES` (default: those `numbers` holds a verdict for)."""
    keys = keys or [k for k in FINDING_RULES if f"reproduced_{k}" in numbers]
    lines = []
    for key in keys:
        verdict = numbers.get(f"reproduced_{key}")
        state = ("not testable with this run" if verdict is None
                 else "REPRODUCED" if verdict else "NOT reproduced")
        measured = ", ".join(
            f"{name} = {numbers[name]:.3g}" for name in _FINDING_NUMBERS[key]
            if isinstance(numbers.get(name), (int, float)) and not isinstance(numbers[name], bool))
        lines.append(f"{key}: {state} [{measured}] (rule: {FINDING_RULES[key]})")
    return lines
