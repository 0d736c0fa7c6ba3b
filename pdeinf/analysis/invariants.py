"""Mathematical invariants of the stored influence matrices and a training summary, for the
notebooks' closing checks (pure: xarray / pandas in, plain values out).

Gauss-Newton Pi = Gp^T (eta + lambda I)^-1 Gp and Euclidean Pi = G G^T are symmetric PSD, hence
(a) Pi = Pi^T, (b) eigenvalues >= 0, (c) every 2x2 principal minor gives
Pi[n,n] + Pi[m,m] >= 2 Pi[n,m], (d) summing (c) over n != m: mean diagonal >= mean off-diagonal,
(e) the cosine-normalised matrix has diagonal exactly 1 and entries in [-1, 1]. The
standardized diagonal is NOT guaranteed to exceed its row's off-diagonal entries (rows have
different scales), so it is not checked. Adam and drift-bra matrices pair different vectors on
the two sides and are not symmetric: only finiteness is checked for them.
"""
from __future__ import annotations

import warnings

import numpy as np

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.coherence import normalized_pi, variants

SYMMETRIC_VARIANTS = ("gauss-newton", "euclidean")


def _psd_violations(flat: np.ndarray, rtol: float) -> list[str]:
    """Checks (a)-(d) on matrices `[..., n, n]`; returns the names of those that fail."""
    tol = rtol * np.abs(flat).max()
    bad = []
    if np.abs(flat - np.swapaxes(flat, -1, -2)).max() > tol:
        bad.append("symmetry")
    if np.linalg.eigvalsh(0.5 * (flat + np.swapaxes(flat, -1, -2))).min() < -tol:
        bad.append("positive semi-definite")
    diag = np.diagonal(flat, axis1=-2, axis2=-1)
    if np.any(diag[..., :, None] + diag[..., None, :] - 2 * flat < -tol):
        bad.append("2x2 principal minors")
    diag_mean, off_mean = ag.diagonal_means(flat)
    if np.any(diag_mean < off_mean - tol):
        bad.append("mean diagonal >= mean off-diagonal")
    return bad


def pi_invariant_violations(ds, *, rtol: float = 1e-4) -> list[str]:
    """Every violated invariant of the module docstring, as `"<variant>: <invariant>"`
    (empty when all hold). Every checkpoint of the sweep is checked."""
    out = []
    if not np.all(np.isfinite(ds["pi"].values)):
        out.append("pi: non-finite entries")
    for name in [v for v in SYMMETRIC_VARIANTS if v in variants(ds)]:
        flat, cos = (ag.flatten(normalized_pi(ds, variant=name, normalization=norm, epoch="all").values)
                     for norm in ("none", "cosine"))
        out += [f"{name}: {b}" for b in _psd_violations(flat, rtol)]
        if not np.allclose(np.diagonal(cos, axis1=-2, axis2=-1), 1.0, atol=1e-6):
            out.append(f"{name}: cosine diagonal != 1")
        if np.abs(cos).max() > 1.0 + rtol:
            out.append(f"{name}: cosine entry outside [-1, 1]")
    return out


def training_summary(history, rollouts) -> dict:
    """First/last median train and validation SMSE over seeds (`history`: DataFrame with seed,
    epoch, train_loss, val_loss) and the median per-step rollout SMSE at step 1 and at the last
    finite step (`rollouts`: DataArray with a `horizon` dimension)."""
    first, last = history.epoch.min(), history.epoch.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN horizons past the window
        per_step = np.nanmedian(
            rollouts.transpose("horizon", ...).values.reshape(rollouts.sizes["horizon"], -1), axis=1)
    finite = per_step[np.isfinite(per_step)]
    return {
        "train_loss_first": float(history[history.epoch == first].train_loss.median()),
        "train_loss_last": float(history[history.epoch == last].train_loss.median()),
        "val_loss_first": float(history[history.epoch == first].val_loss.median()),
        "val_loss_last": float(history[history.epoch == last].val_loss.median()),
        "rollout_smse_step1": float(per_step[0]),
        "rollout_smse_last_step": float(finite[-1]) if finite.size else float("nan"),
        "rollout_steps": int(finite.size),
    }
