"""What the influence estimator itself does to the findings [ours]. Pure.

Every matrix is one batch's RAW influence `[..., N, N]` in `aggregate`'s flat layout. The
findings of ONE batch, all on the row-standardized Ĥ (`standardize`):

- `offdiagonal_mass`: mean_{n != m} |Ĥ(n, m)| / mean_n |Ĥ(n, n)| (0: diagonal matrix);
- `lag1_gap`: median of the intra-class entries at |τ - t| = 1 minus the median of the
  inter-class entries at |τ - t| = 1 (seed paper: inter-class influence is below intra-class);
- `temporal_decay`: mean intra-class entry at |dt| = 1 minus the mean at |dt| >= 3 (the narrow
  ridge: positive when influence decays away from the diagonal; NaN when T < 4);
- `class_locked`: the class matrix (mean of each class block over all T x T time pairs), its
  mean diagonal minus its mean off-diagonal entry.

Also: entry agreement of two estimators (Pearson / Spearman of the standardized off-diagonal
entries), the sign-agreement table, the follow-up's R per class (raw or standardized), ablation
effects with t-intervals over seed means, the lambda -> 0 limit on a tiny model from a
dense float64 Jacobian, and the paragraph the README quotes.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.statistics import seed_mean_ci, seed_spread
from pdeinf.errors import InputError

FINDINGS: tuple[str, ...] = ("offdiagonal_mass", "lag1_gap", "temporal_decay", "class_locked")
#: Findings whose sign is a claim of the papers (offdiagonal_mass is >= 0 by construction).
SIGNED_FINDINGS: tuple[str, ...] = ("lag1_gap", "temporal_decay", "class_locked")
FAR_LAG = 3


# --------------------------------------------------------------------------- one-batch findings


def _square(pi) -> np.ndarray:
    a = np.asarray(pi.values if isinstance(pi, xr.DataArray) else pi, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2:
        raise InputError(f"pi: expected shape [..., N, N] with N >= 2, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("pi: contains NaN or Inf")
    return a


def standardize(pi) -> np.ndarray:
    """Row-standardized `[..., N, N]` (checked): each row divided by its std over the N columns
    (ddof 1); an all-zero row stays zero (`aggregate.standardize_rows(zero_std="keep")`)."""
    return ag.standardize_rows(_square(pi), zero_std="keep")


def offdiagonal_mass(pi) -> np.ndarray:
    """mean_{n != m} |Ĥ(n, m)| / mean_n |Ĥ(n, n)| over the last two axes, `[...]`."""
    h = np.abs(standardize(pi))
    n = h.shape[-1]
    diag = np.diagonal(h, axis1=-2, axis2=-1)
    off = h[..., ~np.eye(n, dtype=bool)].mean(-1)  # masked, not total - diagonal: exact zeros stay 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return off / diag.mean(-1)


def batch_findings(pi, n_classes: int) -> xr.DataArray:
    """The one-batch findings (module docstring) of `pi` `[..., N, N]` (DataArray with dims
    (..., n_resp, n_pert), or an array); returns dims (..., finding)."""
    a = _square(pi)
    lead = a.shape[:-2]
    blocks = ag.unflatten(standardize(a), n_classes)
    blocks = blocks.reshape(-1, *blocks.shape[-4:])
    n_t = blocks.shape[-3]
    out = np.full((blocks.shape[0], len(FINDINGS)), np.nan)
    out[:, 0] = offdiagonal_mass(a).reshape(-1)
    near, far = (-1, 1), [dt for dt in range(1 - n_t, n_t) if abs(dt) >= FAR_LAG]
    near_intra, near_inter, far_intra = (ag.entry_mask(n_classes, n_t, pair, lags) for pair, lags
                                         in (("intra", near), ("inter", near), ("intra", far)))
    if near_intra.any() and near_inter.any():
        out[:, 1] = np.median(blocks[:, near_intra], -1) - np.median(blocks[:, near_inter], -1)
    if near_intra.any() and far_intra.any():
        out[:, 2] = blocks[:, near_intra].mean(-1) - blocks[:, far_intra].mean(-1)
    if n_classes > 1:
        out[:, 3] = ag.diagonal_contrast(ag.class_matrix(blocks, statistic="mean"))
    dims = tuple(pi.dims[:-2]) if isinstance(pi, xr.DataArray) else tuple(f"dim_{i}" for i in range(len(lead)))
    coords = {d: pi[d].values for d in dims if isinstance(pi, xr.DataArray) and d in pi.coords}
    return xr.DataArray(out.reshape(*lead, len(FINDINGS)), dims=(*dims, "finding"),
                        coords={**coords, "finding": list(FINDINGS)}, name="finding_value")


def class_ratio(pi, n_classes: int, normalization: str = "none") -> np.ndarray:
    """The follow-up's R per class `[..., C]`: sum of the off-diagonal over the sum of the
    diagonal entries of the class's T x T intra-class block, of the raw ("none") or the
    row-standardized ("standard") matrix."""
    if normalization not in ("none", "standard"):
        raise InputError(f"normalization={normalization!r}: expected 'none' or 'standard'")
    a = _square(pi) if normalization == "none" else standardize(pi)
    return ag.cross_time_ratio(ag.unflatten(a, n_classes))


# --------------------------------------------------------------------------- two estimators


def entry_agreement(pi_a, pi_b) -> dict:
    """Pearson and Spearman correlation of the standardized OFF-diagonal entries of two
    `[N, N]` matrices of one batch (the diagonal is large for any estimator), and the Pearson
    correlation over all entries."""
    from scipy.stats import spearmanr

    a, b = standardize(pi_a), standardize(pi_b)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"pi_b: expected one [N, N] matrix shaped like pi_a {a.shape}, got {b.shape}")
    off = ~np.eye(a.shape[0], dtype=bool)
    return {"pearson_offdiagonal": float(ag.pearson(a[off], b[off], zero_spread="tolerance")),
            "spearman_offdiagonal": float(spearmanr(a[off], b[off])[0]),
            "pearson_all": float(ag.pearson(a.ravel(), b.ravel(), zero_spread="tolerance"))}


def agreement_table(a: xr.DataArray, b: xr.DataArray, names=("full-space", "subspace")) -> pd.DataFrame:
    """One row per finding: the value under estimator a and b (dims (finding,) each), whether
    the signs agree (None for offdiagonal_mass, positive by construction, or a NaN) and b - a."""
    rows = []
    for f in FINDINGS:
        va, vb = float(a.sel(finding=f)), float(b.sel(finding=f))
        same = None if f not in SIGNED_FINDINGS or math.isnan(va) or math.isnan(vb) else bool(
            np.sign(va) == np.sign(vb))
        rows.append({"finding": f, names[0]: va, names[1]: vb, "difference": vb - va, "same_sign": same})
    return pd.DataFrame(rows).set_index("finding")


# --------------------------------------------------------------------------- ablations


def ablation_effect(base: xr.DataArray, alt: xr.DataArray) -> xr.Dataset:
    """Change of each finding under an estimator convention: `alt - base`, both dims (seed,
    batch, finding), paired per (seed, batch). Returns `change` and `base` (ci, finding), each
    the mean over seeds with its 95% t-interval (`seed_mean_ci`), and `seed_spread` (finding,
    `seed_spread` of `base`), the scale a change is to be read against."""
    for name, da in (("base", base), ("alt", alt)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != {"seed", "batch", "finding"}:
            raise InputError(f"{name}: expected a DataArray with dims (seed, batch, finding)")
    if base.shape != alt.transpose(*base.dims).shape:
        raise InputError("alt: shape differs from base")
    return _paired_effect(base, alt).transpose("ci", "finding")


def _paired_effect(base: xr.DataArray, alt: xr.DataArray) -> xr.Dataset:
    return xr.Dataset({"change": seed_mean_ci(alt - base), "base": seed_mean_ci(base),
                       "seed_spread": seed_spread(base)})


def findings_interval(da: xr.DataArray) -> xr.DataArray:
    """Mean over seeds of the seed means of each finding with its 95% t-interval,
    `da` (seed, batch, finding) -> (ci, finding); a finding with NaN units (temporal_decay at
    T < 4) has no interval."""
    return seed_mean_ci(da).transpose("ci", "finding")


# --------------------------------------------------------------------------- lambda -> 0 limit


def lambda_limit(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, lambdas, *,
                 krylov=True, rtol: float = 1e-9, maxiter: int = 20000) -> xr.Dataset:
    """The output-space hat matrix Pi_out(λ) = J (J^T J + λ I)^{-1} J^T of a small float64
    model from its explicit Jacobian J `[M, P]` (M = N C H W outputs), for each λ:

    - `distance_identity` / `distance_projection` (lambda): max |Pi_out - I| and max
      |Pi_out - U U^T| (U: orthonormal basis of range(J)); the algebra says Pi_out -> I when
      P >= M and J has full row rank, and -> U U^T (the orthogonal projection) in general;
    - `mass_dense`: off-diagonal mass of the dense H(n, m) = r_n^T Pi_out[n, m] r_m / (C H W)
      (r: the paper's SMSE residual), `mass_krylov` the same from `full_space_hat_matrix`
      (krylov: True = at every λ, False = nowhere, or the λ values where to run it; NaN
      elsewhere), `krylov_error`: max |H_krylov - H_dense| / max |H_dense|;
    - `mass_limit` (scalar): the off-diagonal mass of the λ -> 0 limit (projection);
    attrs P, M, rank(J).
    """
    from torch.func import functional_call

    from pdeinf.influence import gradients as _grad
    from pdeinf.influence.fullspace import full_space_hat_matrix, smse_residual

    lams = [float(v) for v in np.atleast_1d(np.asarray(lambdas, dtype=float))]
    if not lams or any(not (math.isfinite(v) and v > 0) for v in lams):
        raise InputError(f"lambdas={lambdas!r}: expected finite numbers > 0")
    params, layout = _grad.trainable_parameters(model)
    if next(iter(params.values())).dtype != torch.float64:
        raise InputError("model: lambda_limit needs a float64 model (model.double())")
    x, y = inputs.to(torch.float64), targets.to(torch.float64)
    flat = layout.flatten(params)

    def f(theta):
        return functional_call(model, layout.unflatten(theta), (x,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, flat, vectorize=True)  # [M, P]
    m_out, p = jac.shape
    u, s, _ = torch.linalg.svd(jac, full_matrices=False)
    rank = int((s > s[0] * max(m_out, p) * 1e-12).sum())
    u, s = u[:, :rank], s[:rank]
    projection = u @ u.T
    with torch.no_grad():
        pred = model(x)
    n, per = x.shape[0], x[0].numel()
    r = smse_residual(pred, y).reshape(n, per)

    def hat(pi_out):
        return torch.einsum("nk,nkml,ml->nm", r, pi_out.reshape(n, per, n, per), r) / per

    eye = torch.eye(m_out, dtype=torch.float64)
    out = {k: [] for k in ("distance_identity", "distance_projection", "mass_dense", "mass_krylov",
                           "krylov_error")}
    for lam in lams:
        pi_out = (u * (s**2 / (s**2 + lam))) @ u.T
        h = hat(pi_out)
        out["distance_identity"].append(float((pi_out - eye).abs().max()))
        out["distance_projection"].append(float((pi_out - projection).abs().max()))
        out["mass_dense"].append(float(offdiagonal_mass(h.numpy())))
        if krylov is True or (krylov is not False
                              and np.isclose(lam, np.atleast_1d(krylov), rtol=1e-9, atol=0.0).any()):
            est = full_space_hat_matrix(model, x, y, damping=lam, rtol=rtol, maxiter=maxiter)
            out["mass_krylov"].append(float(offdiagonal_mass(est.pi.numpy())))
            out["krylov_error"].append(float((est.pi - h).abs().max() / h.abs().max()))
        else:
            out["mass_krylov"].append(math.nan)
            out["krylov_error"].append(math.nan)
    return xr.Dataset({k: ("lambda", np.asarray(v)) for k, v in out.items()} | {
        "mass_limit": ((), float(offdiagonal_mass(hat(projection).numpy())))},
        coords={"lambda": lams}, attrs={"P": int(p), "M": int(m_out), "rank_J": rank,
                                        "full_row_rank": int(rank == m_out)})


# --------------------------------------------------------------------------- the paragraph


def ridge_paragraph(fullspace: xr.DataArray, converged: np.ndarray, reference: xr.DataArray,
                    subspace: xr.DataArray, subspace_sweep: xr.DataArray | None = None, *,
                    reference_converged: bool = True) -> dict:
    """The README's paragraph, computed from the numbers.

    fullspace: findings (solve, finding) of every full-space solve; converged (solve) bool;
    reference: findings (finding) of the reference full-space solve (λ = 1e-4, the paper's
    rtol, the authors' stopping rule); subspace: findings (finding) of the subspace estimator
    on the same batch (follow-up defaults); subspace_sweep: findings (setting, finding) over the
    subspace's energy tolerances and dampings (optional).
    Rule (fixed): when the reference solve hit maxiter the question is "not settled by this
    run" (the signs where the solver stopped are still reported). Otherwise the narrow ridge
    (temporal_decay > 0) is "not set by the estimator" when its sign is the same for the
    reference full-space solve, the subspace estimator, every converged full-space solve and
    every subspace setting; "set by the estimator" when the two estimators at their defaults
    disagree in sign; otherwise "partly set by the estimator".
    Returns {"verdict", "paragraph", and the numbers quoted}.
    """
    fd = "temporal_decay"
    ref, sub = float(reference.sel(finding=fd)), float(subspace.sel(finding=fd))
    fs_vals = fullspace.sel(finding=fd).values
    conv = np.asarray(converged, dtype=bool)
    signs = [np.sign(ref), np.sign(sub)] + [np.sign(v) for v in fs_vals[conv] if np.isfinite(v)]
    if subspace_sweep is not None:
        signs += [np.sign(v) for v in subspace_sweep.sel(finding=fd).values if np.isfinite(v)]
    mass = fullspace.sel(finding="offdiagonal_mass").values
    agree = "agree" if np.sign(ref) == np.sign(sub) else "disagree"
    if not (math.isfinite(ref) and math.isfinite(sub)):
        verdict = "undetermined (fewer than 4 times per class)"
    elif not reference_converged:
        verdict = (f"not settled by this run (the full-space reference solve hit maxiter; where it "
                   f"stopped, the two estimators {agree} in the sign of the decay)")
    elif np.sign(ref) != np.sign(sub):
        verdict = "set by the estimator"
    elif all(s == signs[0] for s in signs):
        verdict = "not set by the estimator"
    else:
        verdict = "partly set by the estimator"
    ridge = "a ridge (decay > 0)" if sub > 0 else "no ridge (decay <= 0)"
    text = (
        f"The narrow ridge is {verdict}: on the same batch the subspace estimator gives a temporal "
        f"decay (|dt|=1 minus |dt|>=3, standardized) of {sub:+.3g} ({ridge}), the full-space estimator "
        f"at lambda 1e-4 and the paper's tolerance {ref:+.3g}; over the full-space solves "
        f"({int(conv.sum())} of {conv.size} converged) the decay ranges {np.nanmin(fs_vals):+.3g} .. "
        f"{np.nanmax(fs_vals):+.3g} and the standardized off-diagonal mass "
        f"{np.nanmin(mass):.3g} .. {np.nanmax(mass):.3g}.")
    return {"verdict": verdict, "paragraph": text, "reference_converged": bool(reference_converged),
            "decay_subspace": sub, "decay_fullspace": ref,
            "decay_fullspace_range": [float(np.nanmin(fs_vals)), float(np.nanmax(fs_vals))],
            "mass_fullspace_range": [float(np.nanmin(mass)), float(np.nanmax(mass))],
            "n_solves": int(conv.size), "n_converged": int(conv.sum())}


# --------------------------------------------------------------------------- study tables


def flat_matrices(pi: xr.DataArray) -> xr.DataArray:
    """Labelled influence (..., t_resp, c_resp, t_pert, c_pert) -> (..., n_resp, n_pert) with
    class-major n = c T + t (the stage's layout)."""
    lead = ag.lead_dims(ag.check_pi(pi))
    v = ag.to_blocks(pi, lead)
    return xr.DataArray(ag.flatten(v), dims=(*lead, "n_resp", "n_pert"),
                        coords={d: pi[d].values for d in lead if d in pi.coords})


def fullspace_table(ds: xr.Dataset) -> xr.Dataset:
    """Per full-space solve of one stage dataset: `findings` (solve, finding) and the solver's
    record `lambda`, `rtol`, `converged`, `iterations_max`, `iterations_mean`, `residual_max`,
    `matvecs`, `seconds` (solve)."""
    if "fs_pi" not in ds:
        raise InputError("ds: no full-space solves (fs_pi); pass the dataset of a full-space seed")
    n_c = int(ds.attrs["n_classes"])
    return xr.Dataset({
        "findings": batch_findings(ds["fs_pi"], n_c),
        "lambda": ("solve", ds["fs_lambda"].values), "rtol": ("solve", ds["fs_rtol"].values),
        "converged": ("solve", ds["fs_converged"].values.astype(bool)),
        "iterations_max": ds["fs_iterations"].max("n_pert"),
        "iterations_mean": ds["fs_iterations"].mean("n_pert"),
        "residual_max": ds["fs_residual"].max("n_pert"),
        "matvecs": ds["fs_matvecs"], "seconds": ds["fs_seconds"]},
        attrs={"reference_solve": int(ds.attrs["reference_solve"])})


def subspace_tables(datasets: dict) -> xr.Dataset:
    """Findings of the subspace side over seeds ({seed: stage dataset}): `by_energy` (seed,
    energy_tol, finding), `by_damping` (seed, damping, finding), `by_bra` (seed,
    bra_convention, finding), `rank` (seed, energy_tol)."""
    seeds = sorted(datasets)
    parts = {}
    for var, dim in (("sub_energy", "by_energy"), ("sub_damping", "by_damping"), ("sub_bra", "by_bra")):
        parts[dim] = xr.concat([batch_findings(datasets[s][var], int(datasets[s].attrs["n_classes"]))
                                for s in seeds], dim="seed").assign_coords(seed=seeds)
    parts["rank"] = xr.concat([datasets[s]["sub_rank"] for s in seeds], dim="seed").assign_coords(seed=seeds)
    return xr.Dataset(parts)


def side_by_side(ds: xr.Dataset, *, damping: float, energy_tol: float) -> dict:
    """Full-space (reference solve) vs subspace (at `damping`, `energy_tol`) on the same batch
    of one stage dataset: {"smse": {...}, and "mass" where both estimators have a mass bra}
    each with `entries` (entry_agreement) and `table` (agreement_table)."""
    n_c = int(ds.attrs["n_classes"])
    if not np.isclose(float(ds["energy_tol"].sel(energy_tol=energy_tol)), energy_tol):
        raise InputError(f"energy_tol={energy_tol}: not in the dataset")

    def compare(fs, sub):
        return {"entries": entry_agreement(fs, sub),
                "table": agreement_table(batch_findings(fs, n_c), batch_findings(sub, n_c))}

    out = {"smse": compare(ds["fs_pi"].isel(solve=int(ds.attrs["reference_solve"])),
                           ds["sub_damping"].sel(damping=damping))}
    if "M" in [str(b) for b in ds.get("bra", xr.DataArray([])).values] and \
            "mass_sq/joint" in [str(b) for b in ds["bra_convention"].values]:
        out["mass"] = compare(ds["fs_bra"].sel(bra="M"),
                              ds["sub_bra"].sel(bra_convention="mass_sq/joint"))
    return out


def _units(da: xr.DataArray) -> xr.DataArray:
    return da.expand_dims(batch=[0]).transpose("seed", "batch", "finding")


def bra_ablations(sub: xr.Dataset) -> dict:
    """Estimator conventions of the subspace side as changes of each finding (paired by seed):
    "ket basis" (mass_sq/ket - mass_sq/joint) and "signed drift" (mass_signed/joint -
    mass_sq/joint), `ablation_effect` each. Empty when the PDE has no mass bra."""
    held = [str(b) for b in sub["bra_convention"].values]
    out = {}
    for name, alt in (("ket basis", "mass_sq/ket"), ("signed drift", "mass_signed/joint")):
        if "mass_sq/joint" in held and alt in held:
            out[name] = ablation_effect(_units(sub["by_bra"].sel(bra_convention="mass_sq/joint", drop=True)),
                                        _units(sub["by_bra"].sel(bra_convention=alt, drop=True)))
    return out


def r_normalization_effect(pi: xr.DataArray, n_classes: int) -> xr.Dataset:
    """The follow-up's R (class mean) from the row-standardized minus from the raw matrices,
    `pi` (seed, batch, n_resp, n_pert): `change` and `base` (ci), `seed_spread` (std over seeds
    of the per-seed mean raw R), `standardized` (ci)."""
    values = pi.transpose("seed", "batch", "n_resp", "n_pert").values
    raw, std = (xr.DataArray(class_ratio(values, n_classes, norm).mean(-1), dims=("seed", "batch"))
                for norm in ("none", "standard"))
    return _paired_effect(raw, std).assign(standardized=seed_mean_ci(std))
