"""What the influence estimator itself does to the findings [ours]. Pure. A matrix is one batch's
RAW influence `[..., N, N]` (`aggregate`'s flat layout); the `FINDINGS` of one batch are read off
the row-standardized Ĥ: off-diagonal mass, lag-1 intra- minus inter-class median, temporal decay
(|dt| = 1 minus |dt| >= 3, intra-class means; NaN when T < 4), class-locked contrast.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import xarray as xr

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.statistics import interval_text, seed_interval, seed_mean_ci, seed_spread
from pdeinf.errors import InputError

FINDINGS: tuple[str, ...] = ("offdiagonal_mass", "lag1_gap", "temporal_decay", "class_locked")
#: Findings whose sign is a claim of the papers (offdiagonal_mass is >= 0 by construction).
SIGNED_FINDINGS: tuple[str, ...] = ("lag1_gap", "temporal_decay", "class_locked")
FAR_LAG = 3
#: Magnitudes below this in the lambda-limit table are float64 round-off, not results.
ROUND_OFF = 1e-12


def _square(pi) -> np.ndarray:
    a = np.asarray(pi.values if isinstance(pi, xr.DataArray) else pi, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2:
        raise InputError(f"pi: expected shape [..., N, N] with N >= 2, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("pi: contains NaN or Inf")
    return a


def standardize(pi) -> np.ndarray:
    """Row-standardized `[..., N, N]` (checked; `aggregate.standardize_rows(zero_std="keep")`)."""
    return ag.standardize_rows(_square(pi), zero_std="keep")


def offdiagonal_mass(pi) -> np.ndarray:
    """mean_{n != m} |Ĥ(n, m)| / mean_n |Ĥ(n, n)| over the last two axes, `[...]`."""
    h = np.abs(standardize(pi))
    diag = np.diagonal(h, axis1=-2, axis2=-1)
    off = h[..., ~np.eye(h.shape[-1], dtype=bool)].mean(-1)  # masked, not total - diagonal: zeros stay 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return off / diag.mean(-1)


def batch_findings(pi, n_classes: int) -> xr.DataArray:
    """The `FINDINGS` of each `[..., N, N]` matrix (array or DataArray) -> dims (..., finding)."""
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
    labelled = isinstance(pi, xr.DataArray)
    dims = tuple(pi.dims[:-2]) if labelled else tuple(f"dim_{i}" for i in range(len(lead)))
    coords = {d: pi[d].values for d in dims if labelled and d in pi.coords}
    return xr.DataArray(out.reshape(*lead, len(FINDINGS)), dims=(*dims, "finding"),
                        coords={**coords, "finding": list(FINDINGS)}, name="finding_value")


def class_ratio(pi, n_classes: int, normalization: str = "none") -> np.ndarray:
    """The follow-up's R per class `[..., C]` of the raw ("none") or row-standardized matrix."""
    if normalization not in ("none", "standard"):
        raise InputError(f"normalization={normalization!r}: expected 'none' or 'standard'")
    a = _square(pi) if normalization == "none" else standardize(pi)
    return ag.cross_time_ratio(ag.unflatten(a, n_classes))


def entry_agreement(pi_a, pi_b) -> dict:
    """Pearson / Spearman r of the standardized off-diagonal entries, Pearson r of all."""
    from scipy.stats import spearmanr  # lazy: scipy is slow to import
    a, b = standardize(pi_a), standardize(pi_b)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"pi_b: expected one [N, N] matrix shaped like pi_a {a.shape}, got {b.shape}")
    off = ~np.eye(a.shape[0], dtype=bool)
    return {"pearson_offdiagonal": float(ag.pearson(a[off], b[off], zero_spread="tolerance")),
            "spearman_offdiagonal": float(spearmanr(a[off], b[off])[0]),
            "pearson_all": float(ag.pearson(a.ravel(), b.ravel(), zero_spread="tolerance"))}


def agreement_table(a: xr.DataArray, b: xr.DataArray, names=("full-space", "subspace")) -> pd.DataFrame:
    """Per finding: values under a and b, b - a, same sign (None if unsigned or NaN)."""
    rows = []
    for f in FINDINGS:
        va, vb = float(a.sel(finding=f)), float(b.sel(finding=f))
        signed = f in SIGNED_FINDINGS and not (math.isnan(va) or math.isnan(vb))
        rows.append({"finding": f, names[0]: va, names[1]: vb, "difference": vb - va,
                     "same_sign": bool(np.sign(va) == np.sign(vb)) if signed else None})
    return pd.DataFrame(rows).set_index("finding")


def ablation_effect(base: xr.DataArray, alt: xr.DataArray) -> xr.Dataset:
    """Paired `alt - base` (seed, batch, finding): `change`, `base` (ci, finding), `seed_spread`."""
    for name, da in (("base", base), ("alt", alt)):
        if not isinstance(da, xr.DataArray) or set(da.dims) != {"seed", "batch", "finding"}:
            raise InputError(f"{name}: expected a DataArray with dims (seed, batch, finding)")
    if base.shape != alt.transpose(*base.dims).shape:
        raise InputError("alt: shape differs from base")
    return _paired_effect(base, alt).transpose("ci", "finding")


def _paired_effect(base: xr.DataArray, alt: xr.DataArray) -> xr.Dataset:
    return xr.Dataset({"change": seed_mean_ci(alt - base), "base": seed_mean_ci(base),
                       "seed_spread": seed_spread(base)})


def lambda_limit(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, lambdas, *,
                 krylov=True, rtol: float = 1e-9, maxiter: int = 20000) -> xr.Dataset:
    """Pi_out(λ) = J (J^T J + λ I)^{-1} J^T of a small float64 model from its dense Jacobian J `[M, P]`,
    per λ: `distance_identity` |Pi_out - I|, `distance_projection` |Pi_out - U U^T| (max), the
    off-diagonal mass of H = r^T Pi_out r / (C H W) dense (`mass_dense`) and by Krylov at the λ
    of `krylov` (`mass_krylov`, `krylov_error`; else NaN); `mass_limit` at λ -> 0."""
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
    jac = torch.autograd.functional.jacobian(  # [M, P]
        lambda theta: functional_call(model, layout.unflatten(theta), (x,)).reshape(-1),
        layout.flatten(params), vectorize=True)
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
    rows = []
    for lam in lams:
        pi_out = (u * (s**2 / (s**2 + lam))) @ u.T
        h = hat(pi_out)
        mass_krylov = error = math.nan
        if krylov is True or (krylov is not False
                              and np.isclose(lam, np.atleast_1d(krylov), rtol=1e-9, atol=0.0).any()):
            est = full_space_hat_matrix(model, x, y, damping=lam, rtol=rtol, maxiter=maxiter)
            mass_krylov = float(offdiagonal_mass(est.pi.numpy()))
            error = float((est.pi - h).abs().max() / h.abs().max())
        rows.append((float((pi_out - eye).abs().max()), float((pi_out - projection).abs().max()),
                     float(offdiagonal_mass(h.numpy())), mass_krylov, error))
    names = ("distance_identity", "distance_projection", "mass_dense", "mass_krylov", "krylov_error")
    return xr.Dataset({k: ("lambda", np.asarray(v)) for k, v in zip(names, zip(*rows))} | {
        "mass_limit": ((), float(offdiagonal_mass(hat(projection).numpy())))},
        coords={"lambda": lams}, attrs={"P": int(p), "M": int(m_out), "rank_J": rank,
                                        "full_row_rank": int(rank == m_out)})


def ridge_paragraph(fullspace: xr.DataArray, converged: np.ndarray, reference: xr.DataArray,
                    subspace: xr.DataArray, subspace_sweep: xr.DataArray | None = None, *,
                    reference_converged: bool = True) -> dict:
    """The README's paragraph and verdict on the sign of temporal_decay from the full-space solves
    (solve, finding), the `reference` solve, the `subspace` estimator and its `subspace_sweep`:
    "not settled by this run", "set by the estimator", "not set ..." or "partly set ..."."""
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
    return {"verdict": verdict, "paragraph": text}


def flat_matrices(pi: xr.DataArray) -> xr.DataArray:
    """Labelled influence (..., t_resp, c_resp, t_pert, c_pert) -> (..., n_resp, n_pert)."""
    lead = ag.lead_dims(ag.check_pi(pi))
    return xr.DataArray(ag.flatten(ag.to_blocks(pi, lead)), dims=(*lead, "n_resp", "n_pert"),
                        coords={d: pi[d].values for d in lead if d in pi.coords})


def fullspace_table(ds: xr.Dataset) -> xr.Dataset:
    """Per full-space solve: `findings` (solve, finding) and the solver's `lambda`, `rtol`,
    `converged`, `iterations_max` / `_mean`, `residual_max`, `matvecs`, `seconds`."""
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
    """Subspace findings over {seed: stage dataset}: `by_energy`, `by_damping`, `by_bra`, `rank`."""
    seeds = sorted(datasets)
    parts = {dim: [batch_findings(datasets[s][var], int(datasets[s].attrs["n_classes"])) for s in seeds]
             for var, dim in (("sub_energy", "by_energy"), ("sub_damping", "by_damping"),
                              ("sub_bra", "by_bra"))}
    parts["rank"] = [datasets[s]["sub_rank"] for s in seeds]
    return xr.Dataset({k: xr.concat(v, dim="seed").assign_coords(seed=seeds) for k, v in parts.items()})


def side_by_side(ds: xr.Dataset, *, damping: float, energy_tol: float) -> dict:
    """Full-space reference vs subspace (`damping`, `energy_tol`) on one batch: {"smse"[, "mass"]:
    {"entries": entry_agreement, "table": agreement_table}}."""
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
        out["mass"] = compare(ds["fs_bra"].sel(bra="M"), ds["sub_bra"].sel(bra_convention="mass_sq/joint"))
    return out


def bra_ablations(sub: xr.Dataset) -> dict:
    """`ablation_effect`s of the "ket basis" and "signed drift" conventions vs mass_sq/joint."""
    held = [str(b) for b in sub["bra_convention"].values]
    out = {}
    for name, alt in (("ket basis", "mass_sq/ket"), ("signed drift", "mass_signed/joint")):
        if "mass_sq/joint" in held and alt in held:
            out[name] = ablation_effect(*(sub["by_bra"].sel(bra_convention=c, drop=True).expand_dims(
                batch=[0]).transpose("seed", "batch", "finding") for c in ("mass_sq/joint", alt)))
    return out


def r_normalization_effect(pi: xr.DataArray, n_classes: int) -> xr.Dataset:
    """Class-mean R of row-standardized minus raw `pi` (seed, batch, n_resp, n_pert): `change`,
    `base`, `seed_spread`, `standardized`."""
    values = pi.transpose("seed", "batch", "n_resp", "n_pert").values
    raw, std = (xr.DataArray(class_ratio(values, n_classes, norm).mean(-1), dims=("seed", "batch"))
                for norm in ("none", "standard"))
    return _paired_effect(raw, std).assign(standardized=seed_mean_ci(std))


def _text(frame: pd.DataFrame, fmt: str = "{:.3g}") -> str:
    return frame.to_string(float_format=fmt.format)


def describe_fullspace(table: xr.Dataset) -> str:
    """A `fullspace_table` as text: per solve the solver's settings, convergence, `FINDINGS`."""
    solves = table.drop_dims("finding").reset_coords(drop=True).to_dataframe()
    return _text(solves.join(table["findings"].to_pandas()))


def describe_limit(limits: dict, pm: list[dict]) -> str:
    """`{case: lambda_limit}` at the smallest λ, then the rows of `pipeline.estimator.pm_table`.
    Nonzero values below `ROUND_OFF` print as "<1e-12": float64 round-off, whose digits change
    with the thread count and the BLAS."""
    last = pd.DataFrame({case: {"lambda": float(ds["lambda"][-1]), **ds.attrs, **{
        k: float(v) for k, v in ds.isel({"lambda": -1}).items()}} for case, ds in limits.items()}).T
    text = last.to_string(
        float_format=lambda v: f"<{ROUND_OFF:.0e}" if 0 < abs(v) < ROUND_OFF else f"{v:.3g}")
    return f"{text}\n\n{pd.DataFrame(pm).to_string(index=False)}"


def describe_subspace(sub: xr.Dataset) -> str:
    """Range over each setting swept in `subspace_tables` of each finding's mean over seeds."""
    ranges = {dim: (m.max(dim) - m.min(dim)).to_pandas() for var, dim in
              (("by_energy", "energy_tol"), ("by_damping", "damping")) for m in [sub[var].mean("seed")]}
    return f"range of the mean over seeds:\n{_text(pd.DataFrame(ranges).T)}"


def describe_estimators(compared: dict, conventions: dict) -> str:
    """`side_by_side` and the conventions' effects ({name: `ablation_effect`}: change with its
    95% interval, seed spread) as text, and the findings whose sign the estimators disagree on."""
    lines = [f"{bra} bra: " + ", ".join(f"{k} {v:.2f}" for k, v in rec["entries"].items())
             + f"\n{_text(rec['table'], '{:+.3g}')}" for bra, rec in compared.items()]
    for name, effect in conventions.items():
        effect = effect if "finding" in effect.dims else effect.expand_dims(finding=["R (class mean)"])
        frame = effect["change"].transpose("finding", "ci").to_pandas()
        lines.append(f"{name}, change and seed spread (std):\n"
                     + _text(frame.assign(seed_spread=effect["seed_spread"].to_pandas()), "{:+.3g}"))
    differ = [f for rec in compared.values() for f, same in rec["table"]["same_sign"].items()
              if same is False]
    lines.append(f"findings whose sign differs between the estimators: {', '.join(differ) or 'none'}")
    return "\n".join(lines)


def ridge_summary(table: xr.Dataset, sub: xr.Dataset, *, damping: float) -> str:
    """`ridge_paragraph` from a `fullspace_table` and the first seed of `subspace_tables` at
    `damping`; with several seeds, the subspace decay with its 95% interval over seeds."""
    ref, first = int(table.attrs["reference_solve"]), sub.sel(seed=sub["seed"].values.min())
    text = ridge_paragraph(table.findings, table.converged.values, table.findings.isel(solve=ref),
                           first.by_damping.sel(damping=damping), first.by_energy,
                           reference_converged=bool(table.converged.values[ref]))["paragraph"]
    ci = seed_interval(sub.by_damping.sel(damping=damping, finding="temporal_decay").values)
    if sub.sizes["seed"] > 1 and np.all(np.isfinite(ci)):
        text += f" Subspace decay over {sub.sizes['seed']} seeds: {interval_text(ci, '+.3g')} (95%)."
    return text
