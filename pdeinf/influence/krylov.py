"""Conjugate gradients for K symmetric positive definite systems `A x_k = b_k` at once.

Each right-hand side runs its own CG recurrence (its own step lengths), but every sweep
applies the operator to all still-active search directions in one call, so a matrix-free
operator can vmap its Jacobian products over them (one batched JVP + VJP per sweep instead
of K separate ones). Each column stops at its own relative residual
`||b_k - A x_k|| / ||b_k|| <= rtol`; since this holds per column it also holds for the
stacked system (`||B - A X||_F <= rtol ||B||_F`, the authors' joint CRAIGMR rule).

When the recursive residuals say "converged", the true residuals `b - A x` are formed with one
more sweep; a column whose true residual is still above rtol (drift of the recursion) restarts
CG from its current iterate. The returned residual norms are those true residuals.

The iterate state (x, r, p, r.r, iterations, flags) is a dict of tensors, `O(K P)` memory,
that `checkpoint` receives every `checkpoint_every` sweeps and that `resume` takes back.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pdeinf.errors import InputError, NumericalError

#: True-residual restarts allowed after the recursion claims convergence.
MAX_RESTARTS = 5


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
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter <= 0:
        raise InputError(f"maxiter={maxiter!r}: expected a positive integer")


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


def _initial_state(b: torch.Tensor) -> dict:
    """Fresh CG state for `b` `[K, P]`: x = 0, r = p = b, r.r and ||b|| `[K]` float64, counters at 0."""
    k = b.shape[0]
    rr = _dot(b, b)
    return {
        "x": torch.zeros_like(b), "r": b.clone(), "p": b.clone(), "rr": rr,
        "b_norm": rr.sqrt(), "iterations": torch.zeros(k, dtype=torch.int64),
        "verified": torch.zeros(k, dtype=torch.bool), "true_residual": torch.full((k,), math.inf, dtype=torch.float64),
        "restarts": 0, "matvecs": 0, "sweeps": 0,
    }


def _starting_state(b: torch.Tensor, tol: torch.Tensor, resume: dict | None) -> dict:
    """The iterate state `batched_cg` starts from for right-hand sides `b` `[K, P]` and
    tolerances `tol` `[K]`: `resume` (its columns above tol unverified again, so that a column
    stopped by an earlier maxiter or looser rtol goes on) or `_initial_state(b)`. Zero
    right-hand sides are verified with true residual 0 (x = 0 solves them exactly)."""
    s = resume if resume is not None else _initial_state(b)
    if resume is not None:
        s["verified"] &= s["true_residual"] <= tol
    zero = s["b_norm"] == 0
    s["true_residual"][zero] = 0.0
    s["verified"] |= zero
    return s


def _counted_matvec(matvec: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, s: dict,
                    solver: str = "full-space solve") -> torch.Tensor:
    """`matvec(v)` `[k, P]` for directions v `[k, P]`, counted in `s["matvecs"]` (k) and
    `s["sweeps"]` (1); NumericalError on NaN/Inf, its message starting with `solver`."""
    out = matvec(v)
    s["matvecs"] += v.shape[0]
    s["sweeps"] += 1
    if not torch.isfinite(out).all():
        raise NumericalError(f"{solver}: the operator returned NaN or Inf")
    return out


def _relative(rr_k: torch.Tensor, norm_k: torch.Tensor) -> torch.Tensor:
    """Relative residuals `[k]` sqrt(r.r) / ||b|| from `rr_k` and `norm_k` `[k]` (float64)."""
    return rr_k.sqrt() / norm_k.clamp_min(1e-300)


def _cg_iteration(s: dict, idx: torch.Tensor, apply: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """One CG step, in place in state `s`, for the columns `idx` `[k]`: one batched operator
    call on their search directions p `[k, P]`, then x, r, p, r.r and iterations updated.
    NumericalError on a non-positive curvature p^T A p."""
    x, r, p, rr, iterations = s["x"], s["r"], s["p"], s["rr"], s["iterations"]
    pk = p[idx]
    ap = apply(pk)
    curvature = _dot(pk, ap)
    if not bool((curvature > 0).all()):
        raise NumericalError(
            "full-space solve: non-positive curvature p^T A p (the damped metric is not "
            "positive definite; damping > 0 and a finite model are required)"
        )
    alpha = rr[idx] / curvature
    x[idx] += alpha.to(x.dtype)[:, None] * pk
    rk = r[idx] - alpha.to(x.dtype)[:, None] * ap
    rr_new = _dot(rk, rk)
    beta = rr_new / rr[idx]
    r[idx] = rk
    p[idx] = rk + beta.to(x.dtype)[:, None] * pk
    rr[idx] = rr_new
    iterations[idx] += 1


def _verify(s: dict, b: torch.Tensor, tol: torch.Tensor, maxiter: int,
            apply: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Check the unverified columns of `s` against their true residuals b - A x (one batched
    operator call on their iterates `[k, P]`), in place: `s["true_residual"]` `[K]` set for them,
    those within `tol` `[K]` (or at maxiter, or after MAX_RESTARTS) verified, the others'
    CG restarted from their iterate on the true residual. False when none was left to check."""
    x, r, p, rr, iterations = s["x"], s["r"], s["p"], s["rr"], s["iterations"]
    todo = (~s["verified"]).nonzero().squeeze(1)
    if todo.numel() == 0:
        return False
    true_r = b[todo] - apply(x[todo])
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
    return True


def batched_cg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    rtol: float,
    maxiter: int,
    column_tol: torch.Tensor | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 5,
    progress: bool = False,
) -> CGResult:
    """Solve `A x_k = b_k` for the rows of `b` `[K, P]`; `matvec` maps `[k, P] -> [k, P]` (A V^T)^T.

    Column k stops when its relative residual ||b_k - A x_k|| / ||b_k|| <= tol_k, with
    tol_k = rtol, or `column_tol[k]` when given (e.g. the authors' rule, one absolute
    threshold rtol ||B||_F for every column, is tol_k = rtol ||B||_F / ||b_k||).
    A must be symmetric positive definite. maxiter bounds the CG iterations of each column;
    a column that reaches it unconverged keeps `converged = False`. Raises NumericalError on
    NaN/Inf or a non-positive curvature p^T A p (A not positive definite).
    """
    tol = column_tolerances(b, rtol, maxiter, column_tol)
    s = _starting_state(b, tol, resume)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return _counted_matvec(matvec, v, s)

    bar = tqdm(total=None, desc="CG", unit="sweep", disable=not progress, leave=False)
    since_checkpoint = 0
    while True:
        rel = _relative(s["rr"], s["b_norm"])
        active = ~s["verified"] & (rel > tol) & (s["iterations"] < maxiter)
        if bool(active.any()):
            _cg_iteration(s, active.nonzero().squeeze(1), apply)
            bar.update(1)
            live = _relative(s["rr"], s["b_norm"])[~s["verified"]]
            bar.set_postfix(max_rel_residual=f"{float(live.max()) if live.numel() else 0.0:.2e}")
            since_checkpoint += 1
            if checkpoint is not None and since_checkpoint >= checkpoint_every:
                checkpoint(s)
                since_checkpoint = 0
            continue
        # The recursion is done for every column: verify with the true residuals.
        if not _verify(s, b, tol, maxiter, apply):
            break
        if checkpoint is not None:
            checkpoint(s)
            since_checkpoint = 0
    bar.close()
    residual = s["true_residual"].clone()
    return CGResult(
        x=s["x"], iterations=s["iterations"].clone(), residual_norms=residual,
        converged=residual <= tol, matvecs=int(s["matvecs"]), sweeps=int(s["sweeps"]),
    )
