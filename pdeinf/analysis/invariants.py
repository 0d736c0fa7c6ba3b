"""Invariants of the stored influence matrices and a training summary (the notebooks' closing
checks). Gauss-Newton and Euclidean Pi are symmetric PSD: symmetric, eigenvalues >= 0, 2x2 principal
minors >= 0, mean diagonal >= mean off-diagonal, cosine-normalised diagonal 1 and entries in [-1, 1].
"""
from __future__ import annotations

import warnings

import numpy as np

from pdeinf.analysis import aggregate as ag
from pdeinf.analysis.coherence import normalized_pi, variants

SYMMETRIC_VARIANTS = ("gauss-newton", "euclidean")


def pi_invariant_violations(ds, *, rtol: float = 1e-4) -> list[str]:
    """Violated invariants (module docstring) as `"<variant>: <invariant>"`, all checkpoints."""
    out = [] if np.all(np.isfinite(ds["pi"].values)) else ["pi: non-finite entries"]
    for name in [v for v in SYMMETRIC_VARIANTS if v in variants(ds)]:
        flat, cos = (ag.flatten(normalized_pi(ds, variant=name, normalization=norm, epoch="all").values)
                     for norm in ("none", "cosine"))
        tol, flat_t = rtol * np.abs(flat).max(), np.swapaxes(flat, -1, -2)
        diag = np.diagonal(flat, axis1=-2, axis2=-1)
        diag_mean, off_mean = ag.diagonal_means(flat)
        failed = {
            "symmetry": np.abs(flat - flat_t).max() > tol,
            "positive semi-definite": np.linalg.eigvalsh(0.5 * (flat + flat_t)).min() < -tol,
            "2x2 principal minors": np.any(diag[..., :, None] + diag[..., None, :] - 2 * flat < -tol),
            "mean diagonal >= mean off-diagonal": np.any(diag_mean < off_mean - tol),
            "cosine diagonal != 1": not np.allclose(np.diagonal(cos, axis1=-2, axis2=-1), 1.0, atol=1e-6),
            "cosine entry outside [-1, 1]": np.abs(cos).max() > 1.0 + rtol}
        out += [f"{name}: {check}" for check, bad in failed.items() if bad]
    return out


def training_summary(history, rollouts) -> dict:
    """First / last median train and validation SMSE (`history`) and the median rollout SMSE
    (`rollouts`, dim `horizon`) at step 1 and at the last finite step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN horizons past the window
        per_step = np.nanmedian(
            rollouts.transpose("horizon", ...).values.reshape(rollouts.sizes["horizon"], -1), axis=1)
    finite = per_step[np.isfinite(per_step)]
    ends = {"first": history.epoch.min(), "last": history.epoch.max()}
    return {**{f"{col}_{end}": float(history[history.epoch == epoch][col].median())
               for col in ("train_loss", "val_loss") for end, epoch in ends.items()},
            "rollout_smse_step1": float(per_step[0]),
            "rollout_smse_last_step": float(finite[-1]) if finite.size else float("nan"),
            "rollout_steps": int(finite.size)}
