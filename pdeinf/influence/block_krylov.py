"""Block Krylov (Galerkin) solver for K symmetric positive definite systems `A x_k = b_k` sharing A.

All right-hand sides share one search space. Each sweep takes the residuals of the columns
still above their tolerance, orthogonalises them against the kept basis V (classical
Gram-Schmidt, twice), drops the directions already in span(V) (rank-revealing SVD), applies
the operator to the new directions in one batched call and stores V and W = A V. Every column's
iterate is then the Galerkin solution on the whole space, x_k = x0_k + V^T y_k with
(V A V^T) y_k = V (b_k - A x0_k): the block form of CG (block Lanczos with full
reorthogonalisation), so each column's Krylov space K_j(A, b_k) lies inside the shared one and the
A-norm error of every column is at most that of j steps of its own CG.

Why: the seed paper's right-hand sides are the N per-example gradients of one batch. They share
the metric's dominant eigendirections, which a block space captures for all of them at once; on the
trained quick UNet (N = 48, rtol 1.5e-2) per-column CG needs 148-391 iterations per column (6
columns measured) where the block space converges with about 5.5 directions per column
(`benchmarks/bench_fullspace.py`).

Residuals are formed from the stored operator images, r_k = b_k - A x0_k - W^T y_k: they are the
true residuals b_k - A x_k up to rounding (no recursion drifts). Column k stops at
||r_k|| / ||b_k|| <= tol_k. Because a Galerkin residual need not fall monotonically, a column
that rises above its tolerance again rejoins the next sweep.

Memory: V and W hold at most `max_basis` directions of length P each (2 max_basis P values).
When the basis is full the solver restarts: the iterate and its image fold into x0 and A x0 (no
extra operator call) and the basis is emptied. The checkpointed state is (x0, A x0) at the
current iterate plus counters, `O(K P)`; a resumed solve restarts from it (the basis is rebuilt,
progress is kept).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence.krylov import CGResult, _counted_matvec, column_tolerances

#: Largest default basis (directions): the projected eigenproblem is dense in it.
MAX_BASIS_CAP = 4096
#: Share of the available memory the default basis (V and W) may take.
MEMORY_SHARE = 0.25
#: Consecutive sweeps that add no new direction before the solve gives up on the columns left.
MAX_STALLS = 2


def default_max_basis(length: int, dtype: torch.dtype, device: torch.device | str | None = None) -> int:
    """Directions (of `length` values each) that V and W may hold in MEMORY_SHARE of the free
    memory of `device`: the accelerator's own for a CUDA device, the host's otherwise."""
    from pdeinf.influence.gradients import available_memory

    have = available_memory(device)
    if have is None:
        return MAX_BASIS_CAP
    per_direction = 2 * length * torch.empty(0, dtype=dtype).element_size()
    return int(min(MAX_BASIS_CAP, max(1, have * MEMORY_SHARE // per_direction)))


def _drop_tolerance(dtype: torch.dtype) -> float:
    """Relative size below which a new direction counts as already in span(V)."""
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


def orthonormal_extension(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows `[k', P]` spanning the part of rows `z` `[k, P]` outside span(basis rows).

    Each row of z is normalised, orthogonalised against `basis` (orthonormal rows) twice, and
    the block's singular directions with singular value below `_drop_tolerance` are dropped, so
    k' <= k and [basis; result] stays orthonormal.
    """
    norms = z.norm(dim=1, keepdim=True)
    z = z[norms.squeeze(1) > 0] / norms[norms.squeeze(1) > 0]
    if z.shape[0] == 0:
        return z
    for _ in range(2):
        if basis.shape[0]:
            z = z - (z @ basis.T) @ basis
    _, singular, rows = torch.linalg.svd(z, full_matrices=False)
    z = rows[singular > _drop_tolerance(z.dtype)]
    if basis.shape[0] and z.shape[0]:
        z = z - (z @ basis.T) @ basis
    if z.shape[0] == 0:
        return z
    q, _ = torch.linalg.qr(z.T)
    return q.T.contiguous()


def _galerkin_coefficients(t: torch.Tensor, vb: torch.Tensor, lower_bound: float) -> torch.Tensor:
    """y `[k, K]` solving T y = VB for the symmetric projected operator T `[k, k]` (float64).

    T = V A V^T with orthonormal V has its eigenvalues in those of A, so they are floored at
    `lower_bound` (the damping: A = J^T J + lambda I >= lambda I); rounding in a float32 operator
    would otherwise leave spurious tiny or negative eigenvalues that blow up y.
    """
    evals, evecs = torch.linalg.eigh(0.5 * (t + t.T))
    if lower_bound <= 0 and float(evals.min()) <= 0:
        raise NumericalError(
            "block Krylov solve: the projected operator V A V^T is not positive definite "
            "(A must be symmetric positive definite)"
        )
    evals = evals.clamp_min(lower_bound) if lower_bound > 0 else evals
    return evecs @ ((evecs.T @ vb) / evals[:, None])


def _basis_capacity(b: torch.Tensor, max_basis: int | None) -> int:
    """Directions the shared basis may hold for right-hand sides `b` `[K, P]`: `max_basis`
    (checked against the memory of V and W) or `default_max_basis`; InputError unless positive."""
    length = b.shape[1]
    cap = default_max_basis(length, b.dtype, b.device) if max_basis is None else max_basis
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise InputError(f"max_basis={max_basis!r}: expected a positive integer")
    if max_basis is not None:
        from pdeinf.influence.gradients import check_memory

        check_memory(2 * cap, length, b.dtype, f"block Krylov basis V, W for max_basis={cap}", "max_basis")
    return cap


def _starting_state(b: torch.Tensor, resume: dict | None) -> dict:
    """The restart point of a solve of `b` `[K, P]`: `resume` (checked to be a block state of
    these shapes) or x0 = A x0 = 0 `[K, P]`, with `iterations` `[K]` and the counters at 0."""
    if resume is not None and (resume.get("solver") != "block" or resume["x"].shape != b.shape):
        raise InputError("resume: not the state of a block Krylov solve of these right-hand sides")
    return resume if resume is not None else {
        "solver": "block", "x": torch.zeros_like(b), "ax": torch.zeros_like(b),
        "iterations": torch.zeros(b.shape[0], dtype=torch.int64), "matvecs": 0, "sweeps": 0, "restarts": 0,
    }


@dataclass
class _SharedSpace:
    """The block Krylov space of `block_galerkin` since the last restart point x0 (K right-hand
    sides of length P, k directions so far)."""

    base: torch.Tensor  # [K, P] b - A x0, the residuals at the restart point
    basis: torch.Tensor  # [k, P] V, orthonormal rows
    images: torch.Tensor  # [k, P] W = A V
    projected: torch.Tensor  # [k, k] float64, T = V A V^T
    projected_rhs: torch.Tensor  # [k, K] float64, V (b - A x0)
    coefficients: torch.Tensor  # [k, K] float64, y with T y = V (b - A x0)

    @classmethod
    def empty(cls, b: torch.Tensor, ax: torch.Tensor) -> _SharedSpace:
        """No directions yet, restart point with image `ax` `[K, P]` for right-hand sides `b`."""
        k_rhs, length = b.shape
        return cls(base=b - ax, basis=b.new_zeros(0, length), images=b.new_zeros(0, length),
                   projected=torch.zeros(0, 0, dtype=torch.float64),
                   projected_rhs=torch.zeros(0, k_rhs, dtype=torch.float64),
                   coefficients=torch.zeros(0, k_rhs, dtype=torch.float64))

    def iterate(self, s: dict, dtype: torch.dtype) -> dict:
        """State `s` at the current iterate: x = x0 + V^T y and A x = A x0 + W^T y `[K, P]`
        (y cast to `dtype`, that of the right-hand sides)."""
        y = self.coefficients.to(dtype).T
        return {**s, "x": s["x"] + y @ self.basis, "ax": s["ax"] + y @ self.images,
                "iterations": s["iterations"].clone()}

    def extend(self, new: torch.Tensor, pushed: torch.Tensor) -> None:
        """Append the orthonormal directions `new` `[k', P]` and their images `pushed` = A new
        `[k', P]`: T grows by V A new^T and new A new^T (symmetrised), V (b - A x0) by new
        (b - A x0). NumericalError on a non-positive curvature z^T A z."""
        cross = (self.basis @ pushed.T).to(torch.float64)  # [k_old, k_new]
        own = (new @ pushed.T).to(torch.float64)
        if not bool((own.diagonal() > 0).all()):
            raise NumericalError(
                "block Krylov solve: non-positive curvature z^T A z (the damped metric is not "
                "positive definite; damping > 0 and a finite model are required)"
            )
        k_old = self.basis.shape[0]
        grown = torch.zeros(k_old + new.shape[0], k_old + new.shape[0], dtype=torch.float64)
        grown[:k_old, :k_old] = self.projected
        grown[:k_old, k_old:] = cross
        grown[k_old:, :k_old] = cross.T
        grown[k_old:, k_old:] = 0.5 * (own + own.T)
        self.projected = grown
        self.projected_rhs = torch.cat([self.projected_rhs, (new @ self.base.T).to(torch.float64)])
        self.basis, self.images = torch.cat([self.basis, new]), torch.cat([self.images, pushed])


def _restart(s: dict, space: _SharedSpace, b: torch.Tensor) -> _SharedSpace:
    """Fold the current iterate of `space` into the restart point (x0, A x0) `[K, P]` of `s`
    (no operator call), count the restart and return the empty space at the new x0."""
    if space.basis.shape[0]:
        y = space.coefficients.to(b.dtype).T
        s["x"] = s["x"] + y @ space.basis
        s["ax"] = s["ax"] + y @ space.images
    s["restarts"] += 1
    return _SharedSpace.empty(b, s["ax"])


def _relative_residuals(residual: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    """||r_k|| / ||b_k|| `[K]` float64 for residuals `[K, P]` and norms `b_norm` `[K]` (0 where b_k = 0)."""
    norms = residual.norm(dim=1, dtype=torch.float64)
    return torch.where(b_norm > 0, norms / b_norm.clamp_min(1e-300), torch.zeros_like(norms))


def block_galerkin(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    rtol: float,
    maxiter: int,
    column_tol: torch.Tensor | None = None,
    lower_bound: float = 0.0,
    max_basis: int | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 5,
    progress: bool = False,
) -> CGResult:
    """Solve `A x_k = b_k` for the rows of `b` `[K, P]`; `matvec` maps `[k, P] -> [k, P]` (A V^T)^T.

    Column k stops when ||b_k - A x_k|| / ||b_k|| <= tol_k (tol_k = rtol, or `column_tol[k]`).
    maxiter: sweeps in which one column may add directions (its `iterations`); a column that
    reaches it unconverged keeps `converged = False`. lower_bound: a known lower bound on A's
    eigenvalues (the damping), used to floor the projected operator's; 0 requires it positive
    definite. max_basis: directions kept before a restart (None: `default_max_basis`). resume /
    checkpoint: the state dict of a previous solve (module docstring). Raises NumericalError on
    NaN/Inf from the operator or a non-positive curvature z^T A z.
    """
    tol = column_tolerances(b, rtol, maxiter, column_tol)
    cap = _basis_capacity(b, max_basis)
    s = _starting_state(b, resume)
    b_norm = b.norm(dim=1, dtype=torch.float64)
    space = _SharedSpace.empty(b, s["ax"])
    residual = space.base.clone()

    bar = tqdm(total=None, desc="block Krylov", unit="sweep", disable=not progress, leave=False)
    stalls, since_checkpoint = 0, 0
    while True:
        rel = _relative_residuals(residual, b_norm)
        eligible = (rel > tol) & (s["iterations"] < maxiter)
        if not bool(eligible.any()) or stalls >= MAX_STALLS:
            break
        room = cap - space.basis.shape[0]
        if room == 0:
            space = _restart(s, space, b)
            continue
        order = eligible.nonzero().squeeze(1)
        order = order[rel[order].argsort(descending=True)][:room]  # the worst columns first
        new = orthonormal_extension(residual[order], space.basis)
        if new.shape[0] == 0:  # the residuals lie in span(V) to rounding: restart cleans them
            stalls += 1
            space = _restart(s, space, b)
            continue
        stalls = 0
        pushed = _counted_matvec(matvec, new, s, "block Krylov solve")  # A new [k', P]
        space.extend(new, pushed)
        del pushed
        space.coefficients = _galerkin_coefficients(space.projected, space.projected_rhs, lower_bound)
        residual = space.base - space.coefficients.to(b.dtype).T @ space.images
        s["iterations"][order] += 1
        bar.update(1)
        bar.set_postfix(max_rel_residual=f"{float(_relative_residuals(residual, b_norm).max()):.2e}",
                        basis=space.basis.shape[0])
        since_checkpoint += 1
        if checkpoint is not None and since_checkpoint >= checkpoint_every:
            checkpoint(space.iterate(s, b.dtype))
            since_checkpoint = 0
    bar.close()
    final = space.iterate(s, b.dtype)
    if checkpoint is not None:
        checkpoint(final)
    rel = _relative_residuals(residual, b_norm)
    return CGResult(
        x=final["x"], iterations=s["iterations"].clone(), residual_norms=rel,
        converged=rel <= tol, matvecs=int(s["matvecs"]), sweeps=int(s["sweeps"]),
    )
