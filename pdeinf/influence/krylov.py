"""Conjugate gradients for K symmetric positive definite systems `A x_k = b_k` at once: one CG
recurrence per column, one batched operator call per sweep on the active directions. A column
claimed converged is checked on its true residual (one more sweep) and restarts if still above
its tolerance. The iterate state (`O(K P)`) goes to `checkpoint` and comes back via `resume`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pdeinf.checks import positive_int
from pdeinf.errors import InputError, NumericalError

MAX_RESTARTS = 5  # true-residual restarts allowed after the recursion claims convergence


@dataclass
class CGResult:
    """Solutions and bookkeeping of `batched_cg` (K right-hand sides of length P)."""

    x: torch.Tensor  # [K, P] solutions, dtype of b
    iterations: torch.Tensor  # [K] int64, CG iterations of each column
    residual_norms: torch.Tensor  # [K] float64, true ||b - A x|| / ||b||
    converged: torch.Tensor  # [K] bool, residual_norms <= rtol
    matvecs: int  # operator applications counted per column
    sweeps: int  # batched operator calls


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products `[k]` accumulated in float64."""
    return (a * b).sum(dim=-1, dtype=torch.float64)


def check_rtol_maxiter(rtol, maxiter) -> None:
    """InputError unless 0 < rtol < 1 and maxiter is a positive integer."""
    if not (isinstance(rtol, (int, float)) and 0.0 < rtol < 1.0):
        raise InputError(f"rtol={rtol!r}: expected a number in (0, 1)")
    positive_int(maxiter, "maxiter")


def column_tolerances(b: torch.Tensor, rtol, maxiter, column_tol: torch.Tensor | None) -> torch.Tensor:
    """Validated per-column relative tolerances `[K]` float64 for right-hand sides `b` `[K, P]`."""
    check_rtol_maxiter(rtol, maxiter)
    if b.ndim != 2:
        raise InputError(f"b: expected [K, P], got shape {tuple(b.shape)}")
    if column_tol is None:
        return torch.full((b.shape[0],), float(rtol), dtype=torch.float64)
    if column_tol.shape != (b.shape[0],) or not bool(torch.isfinite(column_tol).all()):
        raise InputError(f"column_tol: expected {b.shape[0]} finite tolerances")
    return column_tol.to(torch.float64)


def _counted_matvec(matvec: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, s: dict,
                    solver: str = "full-space solve") -> torch.Tensor:
    """`matvec(v)` `[k, P]`, counted in `s["matvecs"]` (k) and `s["sweeps"]` (1); NumericalError
    on NaN/Inf, its message starting with `solver`."""
    out = matvec(v)
    s["matvecs"] += v.shape[0]
    s["sweeps"] += 1
    if not torch.isfinite(out).all():
        raise NumericalError(f"{solver}: the operator returned NaN or Inf")
    return out


def _relative(rr_k: torch.Tensor, norm_k: torch.Tensor) -> torch.Tensor:
    """Relative residuals sqrt(r.r) / ||b|| `[k]` float64."""
    return rr_k.sqrt() / norm_k.clamp_min(1e-300)


def batched_cg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, rtol: float, maxiter: int,
               column_tol: torch.Tensor | None = None, resume: dict | None = None,
               checkpoint: Callable[[dict], None] | None = None, checkpoint_every: int = 5,
               progress: bool = False) -> CGResult:
    """Solve `A x_k = b_k` (A symmetric positive definite) for the rows of `b` `[K, P]`, `matvec`
    mapping `[k, P] -> [k, P]`. Column k stops at ||b_k - A x_k|| / ||b_k|| <= tol_k (rtol, or
    `column_tol[k]`) or after maxiter iterations (`converged` False). NumericalError on NaN/Inf
    or a non-positive curvature."""
    tol = column_tolerances(b, rtol, maxiter, column_tol)
    if resume is not None:  # its columns above tol go on
        s = resume
        s["verified"] &= s["true_residual"] <= tol
    else:
        k = b.shape[0]
        rr = _dot(b, b)
        s = {"x": torch.zeros_like(b), "r": b.clone(), "p": b.clone(), "rr": rr, "b_norm": rr.sqrt(),
             "iterations": torch.zeros(k, dtype=torch.int64), "verified": torch.zeros(k, dtype=torch.bool),
             "true_residual": torch.full((k,), math.inf, dtype=torch.float64),
             "restarts": 0, "matvecs": 0, "sweeps": 0}
    zero = s["b_norm"] == 0  # x = 0 solves these exactly
    s["true_residual"][zero] = 0.0
    s["verified"] |= zero
    x, r, p, rr, iterations = s["x"], s["r"], s["p"], s["rr"], s["iterations"]  # updated in place
    bar = tqdm(total=None, desc="CG", unit="sweep", disable=not progress, leave=False)
    since_checkpoint = 0
    while True:
        active = ~s["verified"] & (_relative(rr, s["b_norm"]) > tol) & (iterations < maxiter)
        if bool(active.any()):  # one CG step of the active columns
            idx = active.nonzero().squeeze(1)
            pk = p[idx]
            ap = _counted_matvec(matvec, pk, s)
            curvature = _dot(pk, ap)
            if not bool((curvature > 0).all()):
                raise NumericalError("full-space solve: non-positive curvature p^T A p (the damped metric "
                                     "is not positive definite; damping > 0 and a finite model are required)")
            alpha = rr[idx] / curvature
            x[idx] += alpha.to(x.dtype)[:, None] * pk
            rk = r[idx] - alpha.to(x.dtype)[:, None] * ap
            rr_new = _dot(rk, rk)
            beta = rr_new / rr[idx]
            r[idx] = rk
            p[idx] = rk + beta.to(x.dtype)[:, None] * pk
            rr[idx] = rr_new
            iterations[idx] += 1
            bar.update(1)
            live = _relative(rr, s["b_norm"])[~s["verified"]]
            bar.set_postfix(max_rel_residual=f"{float(live.max()) if live.numel() else 0.0:.2e}")
            since_checkpoint += 1
            if checkpoint is not None and since_checkpoint >= checkpoint_every:
                checkpoint(s)
                since_checkpoint = 0
            continue
        # The recursion is done for every column: verify with the true residuals b - A x; those
        # within tol (or at maxiter, or after MAX_RESTARTS) are verified, the others restart.
        todo = (~s["verified"]).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        true_r = b[todo] - _counted_matvec(matvec, x[todo], s)
        true_rr = _dot(true_r, true_r)
        true_rel = _relative(true_rr, s["b_norm"][todo])
        s["true_residual"][todo] = true_rel
        ok = (true_rel <= tol[todo]) | (iterations[todo] >= maxiter) | (s["restarts"] >= MAX_RESTARTS)
        s["verified"][todo[ok]] = True
        again = todo[~ok]
        if again.numel():  # restart CG from the current iterate on the true residual
            s["restarts"] += 1
            r[again] = true_r[~ok]
            p[again] = true_r[~ok]
            rr[again] = true_rr[~ok]
        if checkpoint is not None:
            checkpoint(s)
            since_checkpoint = 0
    bar.close()
    residual = s["true_residual"].clone()
    return CGResult(x=x, iterations=iterations.clone(), residual_norms=residual, converged=residual <= tol,
                    matvecs=int(s["matvecs"]), sweeps=int(s["sweeps"]))
