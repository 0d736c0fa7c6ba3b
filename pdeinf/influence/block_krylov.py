"""Block Krylov (Galerkin) solver for K symmetric positive definite systems `A x_k = b_k` sharing A:
block CG with full reorthogonalisation, one batched operator call per sweep on the new directions
(quick UNet, N = 48: ~5.5 directions per column against 148-391 CG iterations,
`benchmarks/bench_fullspace.py`). Residuals come from the stored W = A V; a full basis folds into
x0 and restarts. The checkpointed state is (x0, A x0), `O(K P)`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pdeinf.checks import positive_int
from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import gradients as _grad
from pdeinf.influence.krylov import CGResult, _counted_matvec, column_tolerances

MAX_BASIS_CAP = 4096  # largest default basis (the projected eigenproblem is dense in it)
MEMORY_SHARE = 0.25  # of the available memory the default basis (V and W) may take
MAX_STALLS = 2  # consecutive sweeps adding no direction before the solve gives up


def default_max_basis(length: int, dtype: torch.dtype, device: torch.device | str | None = None) -> int:
    """Directions of `length` values that V and W may hold in MEMORY_SHARE of the free memory
    of `device` (a CUDA device's own, the host's otherwise)."""
    have = _grad.available_memory(device)
    if have is None:
        return MAX_BASIS_CAP
    per_direction = 2 * length * torch.empty(0, dtype=dtype).element_size()
    return int(min(MAX_BASIS_CAP, max(1, have * MEMORY_SHARE // per_direction)))


def orthonormal_extension(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows `[k', P]`, k' <= k, spanning the part of rows `z` `[k, P]` outside the span
    of the orthonormal rows `basis` (to 10 sqrt(eps) after normalisation)."""
    norms = z.norm(dim=1, keepdim=True)
    z = z[norms.squeeze(1) > 0] / norms[norms.squeeze(1) > 0]
    if z.shape[0] == 0:
        return z
    for _ in range(2):
        if basis.shape[0]:
            z = z - (z @ basis.T) @ basis
    _, singular, rows = torch.linalg.svd(z, full_matrices=False)
    z = rows[singular > 10.0 * math.sqrt(torch.finfo(z.dtype).eps)]
    if basis.shape[0] and z.shape[0]:
        z = z - (z @ basis.T) @ basis
    if z.shape[0] == 0:
        return z
    q, _ = torch.linalg.qr(z.T)
    return q.T.contiguous()


def _galerkin_coefficients(t: torch.Tensor, vb: torch.Tensor, lower_bound: float) -> torch.Tensor:
    """y `[k, K]` solving T y = VB for the projected T = V A V^T `[k, k]` float64, its eigenvalues
    floored at `lower_bound` (the damping: float32 rounding leaves spurious tiny or negative ones)."""
    evals, evecs = torch.linalg.eigh(0.5 * (t + t.T))
    if lower_bound <= 0 and float(evals.min()) <= 0:
        raise NumericalError("block Krylov solve: the projected operator V A V^T is not positive definite "
                             "(A must be symmetric positive definite)")
    evals = evals.clamp_min(lower_bound) if lower_bound > 0 else evals
    return evecs @ ((evecs.T @ vb) / evals[:, None])


@dataclass
class _SharedSpace:
    """The block Krylov space since the restart point x0 (K right-hand sides, k directions)."""

    base: torch.Tensor  # [K, P] b - A x0, the residuals at the restart point
    basis: torch.Tensor  # [k, P] V, orthonormal rows
    images: torch.Tensor  # [k, P] W = A V
    projected: torch.Tensor  # [k, k] float64, T = V A V^T
    projected_rhs: torch.Tensor  # [k, K] float64, V (b - A x0)
    coefficients: torch.Tensor  # [k, K] float64, y with T y = V (b - A x0)

    @classmethod
    def empty(cls, b: torch.Tensor, ax: torch.Tensor) -> _SharedSpace:
        k_rhs, length = b.shape
        empty = torch.zeros(0, k_rhs, dtype=torch.float64)  # [0, K] float64
        return cls(b - ax, b.new_zeros(0, length), b.new_zeros(0, length),
                   torch.zeros(0, 0, dtype=torch.float64), empty, empty.clone())

    def iterate(self, s: dict, dtype: torch.dtype) -> dict:
        """State `s` at the current iterate: x = x0 + V^T y, A x = A x0 + W^T y (y in `dtype`)."""
        y = self.coefficients.to(dtype).T
        return {**s, "x": s["x"] + y @ self.basis, "ax": s["ax"] + y @ self.images,
                "iterations": s["iterations"].clone()}

    def extend(self, new: torch.Tensor, pushed: torch.Tensor, lower_bound: float) -> None:
        """Append the orthonormal directions `new` `[k', P]` and `pushed` = A new, growing T and
        V (b - A x0), and solve for y (`_galerkin_coefficients`). NumericalError on a non-positive
        curvature z^T A z."""
        cross = (self.basis @ pushed.T).to(torch.float64)  # [k_old, k_new]
        own = (new @ pushed.T).to(torch.float64)
        if not bool((own.diagonal() > 0).all()):
            raise NumericalError("block Krylov solve: non-positive curvature z^T A z (the damped metric is "
                                 "not positive definite; damping > 0 and a finite model are required)")
        self.projected = torch.cat([torch.cat([self.projected, cross], 1),
                                    torch.cat([cross.T, 0.5 * (own + own.T)], 1)], 0)
        self.projected_rhs = torch.cat([self.projected_rhs, (new @ self.base.T).to(torch.float64)])
        self.basis, self.images = torch.cat([self.basis, new]), torch.cat([self.images, pushed])
        self.coefficients = _galerkin_coefficients(self.projected, self.projected_rhs, lower_bound)


def _restart(s: dict, space: _SharedSpace, b: torch.Tensor) -> _SharedSpace:
    """Fold the iterate of `space` into the restart point (x0, A x0) of `s` (no operator call)
    and return the empty space there."""
    if space.basis.shape[0]:
        s.update(space.iterate(s, b.dtype))
    s["restarts"] += 1
    return _SharedSpace.empty(b, s["ax"])


def _relative_residuals(residual: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    """||r_k|| / ||b_k|| `[K]` float64 for residuals `[K, P]` and norms `b_norm` `[K]` (0 where b_k = 0)."""
    norms = residual.norm(dim=1, dtype=torch.float64)
    return torch.where(b_norm > 0, norms / b_norm.clamp_min(1e-300), torch.zeros_like(norms))


def block_galerkin(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, rtol: float,
                   maxiter: int, column_tol: torch.Tensor | None = None, lower_bound: float = 0.0,
                   max_basis: int | None = None, resume: dict | None = None,
                   checkpoint: Callable[[dict], None] | None = None, checkpoint_every: int = 5,
                   progress: bool = False) -> CGResult:
    """As `krylov.batched_cg` (maxiter: sweeps adding a column's directions). lower_bound: a lower
    bound on A's eigenvalues (the damping; 0: A must be positive definite). max_basis: directions
    kept before a restart (None: `default_max_basis`)."""
    tol = column_tolerances(b, rtol, maxiter, column_tol)
    cap = (positive_int(max_basis, "max_basis", allow_none=True)
           or default_max_basis(b.shape[1], b.dtype, b.device))
    if max_basis is not None:
        _grad.check_memory(2 * cap, b.shape[1], b.dtype, f"block Krylov basis V, W for max_basis={cap}",
                           "max_basis")
    if resume is not None and (resume.get("solver") != "block" or resume["x"].shape != b.shape):
        raise InputError("resume: not the state of a block Krylov solve of these right-hand sides")
    s = resume if resume is not None else {
        "solver": "block", "x": torch.zeros_like(b), "ax": torch.zeros_like(b),
        "iterations": torch.zeros(b.shape[0], dtype=torch.int64), "matvecs": 0, "sweeps": 0, "restarts": 0}
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
        space.extend(new, _counted_matvec(matvec, new, s, "block Krylov solve"), lower_bound)
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
    return CGResult(x=final["x"], iterations=s["iterations"].clone(), residual_norms=rel,
                    converged=rel <= tol, matvecs=int(s["matvecs"]), sweeps=int(s["sweeps"]))
