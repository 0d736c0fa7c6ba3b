"""The influence ("hat") matrix of one batch at one checkpoint (docs/method.md section 4).

Steps, for N examples and P trainable parameters (`HatEngine` caches each so that several
variants of one batch share the expensive parts):

1. Per-example SMSE gradients `G` (`[N, P]`, rows g_n) with torch.func `vmap(grad)`, chunked.
2. Basis of the gradient span from the N x N Gram matrix `K = G G^T = V S^2 V^T` (float64
   eigh) instead of an SVD of the P x N matrix: P >> N (1e4..1e7 against 48), so the Gram is
   one BLAS-3 product (N^2 P flops, no P x N copy or QR of a tall matrix) and its eigh is
   48 x 48. The price is accuracy for singular values below sqrt(eps) s_1. The default keeps
   every direction above rounding level of the Gram (energy_tol = 0: Pi is exact); with
   energy_tol > 0 the rank r is the smallest with sum_{i<=r} s_i^2 / sum s_i^2 >= 1 - tol, and
   the result reports what was cut (`cut_report`). That change to Pi is NOT bounded by the
   energy: a direction with little gradient energy can carry a small metric eigenvalue, and
   its term in Pi grows as s_i^2 / eigenvalue (docs/models.md).
   The basis Q = G^T V_r S_r^{-1} (P x r) is never stored; the gradients in the basis are
   `Gp = S_r V_r^T`.
3. `JQ = (J G^T) V_r S_r^{-1}`: forward-mode JVPs of the raw model outputs along the N stored
   gradient rows (vmapped over them), `jvp_chunk` examples per call; each example block's
   rows of JQ are formed in float64 and accumulated into the Gram `(JQ)^T (JQ)`.
4. `eta = (JQ)^T (JQ) / M + damping I` with M = N*C*H*W: the Gauss-Newton matrix of a plain
   mean squared error of the raw outputs (not of SMSE, whose per-channel scales would weight
   the outputs), exactly as in docs/method.md section 4.
5. `Pi = Gp^T eta^{-1} Gp` via the eigendecomposition of the r x r metric (eta^{-1/2} applied
   to Gp, then a product A^T A): symmetric positive semi-definite by construction.

Variants: metric "euclidean" (`Pi = G G^T`, no truncation) and "adam" (`Pi = R D G^T` with the
Adam preconditioner D of the checkpoint's optimizer state, see `adam_preconditioner`).

Bras other than the SMSE gradients (a response observable O, e.g. a mass drift, and/or the
SMSE at transformed inputs and targets (g.x_n, g.y_n) for orbit influence), rows R = grad O_n:
- `bra_basis="joint"` (the follow-up's recipe, default): the basis is that of the joint rows
  `[G; R]` (2N x 2N Gram, same energy cut), ket coordinates `Gp`, bra coordinates `Bp` (both
  `S V^T`, split), `eta = (JQ)^T (JQ) / M + damping I` with J at the UNtransformed inputs, and
  `Pi = Bp^T eta^{-1} Gp`. JQ = J G^T V_k S^{-1} + J R^T V_b S^{-1}: the JVPs of the ket rows
  J G^T are computed once per batch and kept (`HatEngine`, when they fit in memory), so each
  further bra costs its gradients and the JVPs of its own N rows.
- `bra_basis="ket"`: R projected on the span of the ket gradients alone,
  `Pi = (Q^T R^T)^T eta^{-1} Gp` with the ket metric (the ket-basis ablation).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.checks import one_of, positive_int
from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import gradients as _grad
from pdeinf.influence import observables as _obs
from pdeinf.influence.untouched import keeps_model

METRICS: tuple[str, ...] = ("gauss-newton", "euclidean", "adam")
#: Bases for a bra other than SMSE (module docstring) and the estimators of `hat_matrix`.
BRA_BASES: tuple[str, ...] = ("joint", "ket")
ESTIMATORS: tuple[str, ...] = ("subspace", "full-space")
#: Damping of the restricted metric (docs/method.md section 4, the follow-up).
DEFAULT_DAMPING = 1e-6
#: Parameters per block when forming float64 products of [N, P] rows: 16384 columns keep each
#: float64 copy at N * 128 KiB (6 MiB for N = 48); the Gram of the quick UNet's gradients
#: (N = 48, P = 1.6e5) takes about 0.03 s either way.
_COLUMN_BLOCK = 1 << 14
#: Examples per vmapped jvp call, each call pushing all K directions (the r basis vectors, or
#: the N gradient rows when they are kept for reuse; memory grows linearly with it: jvp_chunk x
#: K (example, direction) pairs). Each example's primal forward runs once in the whole JVP
#: stage (instead of once per chunk of directions). Quick UNet, N = 48, one thread: 2.1-2.7
#: batched forwards per basis vector for 2, 4 and 8 alike (benchmarks/bench_influence.py); 4
#: keeps one call small.
JVP_CHUNK = 4
#: Examples per vmapped gradient call. 8 rather than 16: the gradient stage's activations
#: (linear in it) stay in the allocator's heap under the JVP stage; on the quick UNet (N = 48,
#: one thread) 8 lowered the peak RSS of hat_matrix by 20-35 MiB (of about 380) and cost
#: 0.2 s in the gradient stage (0.74 s against 0.53 s), 3 % of the whole call.
GRAD_CHUNK = 8


def cross_gram(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`a diag(weight) b^T` in float64 for rows a `[Na, P]`, b `[Nb, P]`, in column blocks.

    The blocks keep the float64 copies small when a and b are float32.
    """
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for start in range(0, a.shape[1], _COLUMN_BLOCK):
        sl = slice(start, start + _COLUMN_BLOCK)
        a64 = a[:, sl].to(torch.float64)
        b64 = a64 if b is a else b[:, sl].to(torch.float64)
        if weight is not None:
            a64 = a64 * weight[sl].to(torch.float64)
        out += a64 @ b64.T
        del a64, b64  # before the next block is allocated
    return out


@dataclass
class GradientSpan:
    """Orthonormal basis Q `[P, r]` of the rows of `[G; R]` (ket rows G `[N, P]`, bra rows R
    `[Nb, P]` of a joint span, none for the ket span alone) in factored form
    `Q = G^T C_k + R^T C_b`, `[C_k; C_b] = V_r diag(1/s_r)` (never stored; module docstring)."""

    grads: torch.Tensor  # [N, P], model dtype
    gram: torch.Tensor  # [K, K] float64, K = N + Nb: [G; R] [G; R]^T
    singular_values: torch.Tensor  # [r] float64, descending
    right_vectors: torch.Tensor  # [K, r] float64 (V_r)
    all_singular_values: torch.Tensor  # [K] float64, descending, clamped at 0
    bra_grads: torch.Tensor | None = None  # [Nb, P], model dtype

    @property
    def rank(self) -> int:
        return int(self.singular_values.numel())

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(C_k [N, r], C_b [Nb, r])` float64 (C_b empty for the ket span alone)."""
        coeff = self.right_vectors / self.singular_values
        return coeff[:self.grads.shape[0]], coeff[self.grads.shape[0]:]

    def basis_rows(self, columns: slice) -> torch.Tensor:
        """Rows q_a^T of Q^T for the basis indices in `columns`: `[k, P]` in the model dtype."""
        c_k, c_b = (c[:, columns].T.to(self.grads.dtype) for c in self.coefficients())
        rows = c_k @ self.grads
        return rows if self.bra_grads is None else rows + c_b @ self.bra_grads

    def coordinates(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Q^T rows^T `[r, Nr]` (float64) for rows `[Nr, P]` of a ket span. None: the span's
        own rows `[G; R]`, `S V^T` `[r, K]` (columns N.. are the bras' Bp)."""
        if rows is None:
            return self.singular_values[:, None] * self.right_vectors.T
        cross = cross_gram(self.grads, rows)  # [N, Nr] = G R^T
        return (self.right_vectors.T @ cross) / self.singular_values[:, None]


def _span(grads: torch.Tensor, gram: torch.Tensor, energy_tol: float,
          bra_grads: torch.Tensor | None = None) -> GradientSpan:
    """The basis of the rows `[grads; bra_grads]` from their K x K Gram `V S^2 V^T` with the
    energy cut (module docstring)."""
    if not (0.0 <= energy_tol < 1.0):
        raise InputError(f"energy_tol={energy_tol!r}: expected 0 <= energy_tol < 1")
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(evals.sum())
    k = gram.shape[0]
    if total <= 0.0 or not math.isfinite(total):
        rank = 0
    else:
        energy = torch.cumsum(evals, 0) / total
        rank = int((energy < 1.0 - energy_tol).sum()) + 1
        # Modes at rounding level of the Gram are not directions of the span (duplicates).
        numerical = int((evals > k * torch.finfo(torch.float64).eps * evals[0]).sum())
        rank = max(1, min(rank, numerical, k))
    s = evals.sqrt()
    return GradientSpan(grads=grads, gram=gram, singular_values=s[:rank].clone(),
                        right_vectors=evecs[:, :rank].clone(), all_singular_values=s, bra_grads=bra_grads)


def cut_report(span: GradientSpan) -> dict:
    """What the basis left out of the gradient rows, `{"cut_directions", "cut_energy"}`:
    directions of the span with a nonzero singular value that the basis drops (the energy cut
    and modes at rounding level of the Gram), and the fraction of sum s_i^2 they carry."""
    s = span.all_singular_values
    total = float(s.pow(2).sum())
    kept = float(span.singular_values.pow(2).sum())
    nonzero = int((s > 0).sum())
    return {"cut_directions": max(nonzero - span.rank, 0),
            "cut_energy": max(total - kept, 0.0) / total if total > 0 else 0.0}


def gradient_span(grads: torch.Tensor, energy_tol: float = 0.0) -> GradientSpan:
    """Energy-truncated basis of the row span of `grads` `[N, P]`."""
    gram = cross_gram(grads, grads)
    return _span(grads, 0.5 * (gram + gram.T), energy_tol)


def joint_span(ket: GradientSpan, bra_grads: torch.Tensor, energy_tol: float = 0.0) -> GradientSpan:
    """Energy-truncated basis of the joint rows `[G_ket; G_bra]`; reuses the ket Gram."""
    cross = cross_gram(ket.grads, bra_grads)
    bb = cross_gram(bra_grads, bra_grads)
    gram = torch.cat([torch.cat([ket.gram, cross], 1), torch.cat([cross.T, 0.5 * (bb + bb.T)], 1)], 0)
    return _span(ket.grads, gram, energy_tol, bra_grads)

def metric_pass(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    blocks: list,
    rank: int,
    *,
    jvp_chunk: int = JVP_CHUNK,
    vmap_tangents: bool = True,
    progress: bool = False,
    params=None,
    layout=None,
    support: _grad.FuncSupport | None = None,
    keep: tuple[bool, ...] = (),
) -> tuple[torch.Tensor, list]:
    """Undamped `(JQ)^T (JQ) / M` `[r, r]` float64 for `Q = sum_i D_i^T C_i`.

    blocks: `(D_i [K_i, P] directions, C_i [K_i, r] float64, pushed_i)` where pushed_i is None
    (the JVPs J(x) D_i^T are computed here) or the kept `[K_i, N, C, H, W]` JVPs of an earlier
    pass. J is block-diagonal over examples, so per `jvp_chunk` examples the rows of JQ are
    formed in float64 and accumulated into the Gram; no r x M store. keep[i]: return the JVPs
    of block i (computed here) for later passes. Blocks neither pushed nor kept go through
    the JVPs as the r basis directions themselves when r is fewer than their rows
    (`_fewest_directions`). Returns `(eta_raw, kept)`, kept[i] None where not kept.
    """
    kept = [None] * len(blocks)
    if rank == 0:
        return torch.zeros(0, 0, dtype=torch.float64), kept
    blocks = _fewest_directions(blocks, rank, keep)
    n = inputs.shape[0]
    m_outputs = inputs.numel()  # outputs have the inputs' shape [N, C, H, W]
    eta = torch.zeros(rank, rank, dtype=torch.float64)
    bar = tqdm(total=n, desc="JVPs", unit="ex", disable=not progress, leave=False)
    for start in range(0, n, jvp_chunk):
        rows = slice(start, min(start + jvp_chunk, n))
        jq = None
        for i, (directions, coeff, pushed) in enumerate(blocks):
            if pushed is None and directions.shape[0] == 0:
                continue  # folded into the basis block by `_fewest_directions`
            if pushed is not None:
                out = pushed[:, rows]
            else:
                out = _grad.output_jvps(
                    model, inputs[rows], directions, params=params, layout=layout,
                    vmap_tangents=vmap_tangents, support=support,
                )  # [K_i, b, C, H, W]: J(x_b) d_k for every direction k
                if out[0].numel() != inputs[rows].numel():
                    raise InputError(
                        f"model: outputs have {out[0].numel() // (rows.stop - rows.start)} values per "
                        f"example, inputs {m_outputs // n}; expected [B, C, H, W] -> [B, C, H, W]"
                    )
                if i < len(keep) and keep[i]:
                    if kept[i] is None:
                        kept[i] = torch.empty(out.shape[0], n, *out.shape[2:], dtype=out.dtype)
                    kept[i][:, rows] = out
            # Combine into (JQ) rows before squaring: error ~ eps s_1 / s_r, as for a basis
            # formed in parameter space (squaring (J D^T) first would square that factor).
            part = coeff.T @ out.reshape(out.shape[0], -1).to(torch.float64)  # [r, b*C*H*W]
            del out  # not alive during the next call
            jq = part if jq is None else jq.add_(part)
            del part
        eta += jq @ jq.T
        del jq
        bar.update(rows.stop - rows.start)
    bar.close()
    eta = eta / m_outputs
    return 0.5 * (eta + eta.T), kept


def _fewest_directions(blocks: list, rank: int, keep: tuple[bool, ...]) -> list:
    """The blocks of `metric_pass` with every block that is neither pushed already nor to be
    kept folded into ONE block of `rank` directions, the rows of `sum_i C_i^T D_i` formed in
    parameter space (coefficients I_r), when that pushes fewer directions than the blocks'
    own rows and the `[rank, P]` rows fit in a quarter of the available memory.

    Exact: J is linear, so J (sum_i D_i^T C_i) = sum_i (J D_i^T) C_i. A basis cut at energy
    1e-4 keeps r well below the N gradient rows (trained quick CE UNet, N = 48: r = 26 for the
    SMSE kets, 43..49 for the D4 orbit bras' joint bases against N + Nb = 96 rows;
    `benchmarks/bench_orbit.py --trained` prints them), and the JVPs (N per direction) are the
    whole cost of the pass. Rounding: the coefficients are rounded to the model dtype and
    combined there, of the order eps s_1 / s_r as for a basis formed in parameter space (a
    sweep task's matrices within 3.6e-6 relative of the row route's in float32,
    `benchmarks/bench_basis_jvps.py`)."""
    fold = [i for i, (_, _, pushed) in enumerate(blocks)
            if pushed is None and not (i < len(keep) and keep[i])]
    rows = sum(int(blocks[i][0].shape[0]) for i in fold)
    if not fold or rank >= rows:
        return blocks
    directions = blocks[fold[0]][0]
    need = rank * directions.shape[1] * directions.element_size()
    have = _grad.available_memory()
    if have is not None and need > have // 4:
        return blocks
    basis = sum(blocks[i][1].T.to(directions.dtype) @ blocks[i][0] for i in fold)  # [r, P]
    identity = torch.eye(rank, dtype=torch.float64)
    # folded blocks become empty ([0, P] rows, [0, r] coefficients) so indices (and `keep`)
    # still refer to the caller's blocks
    empty = (directions[:0], identity[:0], None)
    out = [empty if i in fold else block for i, block in enumerate(blocks)]
    return out + [(basis, identity, None)]


def restricted_gauss_newton(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    span: GradientSpan,
    *,
    jvp_chunk: int = JVP_CHUNK,
    vmap_tangents: bool = True,
    progress: bool = False,
    params=None,
    layout=None,
    support: _grad.FuncSupport | None = None,
) -> torch.Tensor:
    """Undamped restricted Gauss-Newton metric (JQ)^T (JQ) / M, `[r, r]` float64.

    J is the Jacobian of all raw outputs of the batch (M = N*C*H*W) with respect to the
    parameters. Since Q = G^T V_r S_r^{-1}, JQ = (J G^T) V_r S_r^{-1}: the JVPs push the
    stored gradient rows themselves (no P-sized basis copy), `jvp_chunk` examples at a time
    with all N directions vmapped in one call (`metric_pass`).
    Peak extra memory: one call's N x jvp_chunk forward-mode evaluations.
    """
    eta, _ = metric_pass(
        model, inputs, [(span.grads, span.coefficients()[0], None)], span.rank, jvp_chunk=jvp_chunk,
        vmap_tangents=vmap_tangents, progress=progress, params=params, layout=layout, support=support,
    )
    return eta


def solve_hat(
    eta_raw: torch.Tensor,
    damping: float,
    ket: torch.Tensor,
    bra: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`Pi = bra^T (eta_raw + damping I)^{-1} ket` `[N, N]` and the undamped eigenvalues.

    ket, bra: coordinates in the basis, `[r, N]` float64 (bra None: bra = ket, then Pi is
    A^T A with A = eta^{-1/2} ket, exactly symmetric positive semi-definite).
    """
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
        raise InputError(f"damping={damping!r}: expected a finite number >= 0")
    r, n = ket.shape
    if r == 0:
        return torch.zeros(n, n, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(eta_raw)
    evals, evecs = evals.flip(0), evecs.flip(1)
    damped = evals + damping
    floor = r * torch.finfo(torch.float64).eps * max(float(evals.abs().max()), 1e-300)
    if float(damped.min()) <= floor:
        raise NumericalError(
            f"damping={damping!r}: the restricted Gauss-Newton metric is singular "
            f"(smallest eigenvalue {float(evals.min()):.3e} of {float(evals.max()):.3e}); "
            "pass damping > 0"
        )
    inv_sqrt = damped.rsqrt()[:, None]
    a = inv_sqrt * (evecs.T @ ket)
    if bra is None:
        pi = a.T @ a
        return 0.5 * (pi + pi.T), evals
    b = inv_sqrt * (evecs.T @ bra)
    return b.T @ a, evals


def adam_preconditioner(optimizer_state: dict, layout: _grad.ParameterLayout) -> torch.Tensor:
    """First-order Adam(W) update direction per unit gradient, `[P]` float64.

    One more AdamW step (step count t -> t+1) with gradient g changes the parameters by
    `-lr * ((beta1 m + (1-beta1) g) / b1 / (sqrt((beta2 v + (1-beta2) g^2) / b2) + eps) + wd theta)`
    with b1 = 1 - beta1^(t+1), b2 = 1 - beta2^(t+1). Its part linear in g (the g^2 term in the
    second moment is second order) is `-lr * D g` with
    `D = (1 - beta1) / b1 / (sqrt(beta2 v / b2) + eps)` (amsgrad: v -> the stored maximum).
    `Pi_adam[n, m] = grad_n^T D g_m`, so an Adam step on example m changes the loss of n by
    `-lr * Pi_adam[n, m]` to first order. optimizer_state: `torch.optim.AdamW.state_dict()`
    of an optimizer built from `model.parameters()` (trainable parameters, in order).
    """
    try:
        state, groups = optimizer_state["state"], optimizer_state["param_groups"]
    except (KeyError, TypeError):
        raise InputError("optimizer_state: expected an AdamW state_dict with 'state' and 'param_groups'") from None
    indices = [(i, g) for g in groups for i in g["params"]]
    if len(indices) != len(layout.names):
        raise InputError(
            f"optimizer_state: holds {len(indices)} parameters, the model {len(layout.names)} trainable ones"
        )
    parts = []
    for (index, group), name, shape in zip(indices, layout.names, layout.shapes):
        entry = state.get(index)
        if entry is None or "exp_avg_sq" not in entry:
            raise InputError(f"optimizer_state: no Adam moments for parameter {name!r} (index {index})")
        v = entry.get("max_exp_avg_sq") if group.get("amsgrad") else entry["exp_avg_sq"]
        if v.is_complex():  # Adam steps on (re, im) with one second moment each
            v = torch.view_as_real(v)
        if tuple(v.shape) != tuple(shape):
            raise InputError(
                f"optimizer_state: parameter {name!r} has moments of shape {tuple(v.shape)}, "
                f"the model {tuple(shape)}"
            )
        beta1, beta2 = group["betas"]
        step = float(entry["step"]) + 1.0
        b1, b2 = 1.0 - beta1**step, 1.0 - beta2**step
        second = (v.to(torch.float64) if group.get("amsgrad") else beta2 * v.to(torch.float64)) / b2
        parts.append(((1.0 - beta1) / b1 / (second.sqrt() + group["eps"])).reshape(-1))
    return torch.cat(parts)


class HatEngine:
    """One batch at one checkpoint; caches gradients, basis and metric across variants.

    Shared by every variant of the batch: the SMSE gradients G, their span and metric, and (for
    joint-basis bras) the JVPs of the ket rows J G^T, `[N, N, C, H, W]` in the model dtype.
    keep_ket_jvps: True keeps them from the first metric pass on (InputError if they cannot
    fit in memory; the ket metric then pushes the N gradient rows instead of its r basis
    vectors, and each joint bra pushes min(Nb bra rows, joint rank) directions); False never
    (every pass pushes its own basis: r for the ket metric, the joint rank for a bra; see
    `metric_pass`); None (default) keeps them when r > 3N/4 and they take at most a quarter
    of the available memory. Why: with r well below N (a trained checkpoint; quick UNet r = 26
    of 48) pushing r and then each joint basis (43..49 for the D4 bras) is fewer JVPs, while near
    full rank (early checkpoints: r = N) a joint basis approaches N + Nb and reusing the kept
    rows caps each bra at Nb. Only the latest bra's gradients and joint basis are cached (a
    symmetry study walks through many bras; each N x P bra matrix is freed when the next one
    is computed).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        energy_tol: float = 0.0,
        grad_chunk: int | None = GRAD_CHUNK,
        jvp_chunk: int = JVP_CHUNK,
        vmap_tangents: bool = True,
        progress: bool = False,
        keep_ket_jvps: bool | None = None,
    ):
        _grad.check_model_mode(model)
        self.model = model
        self.params, self.layout = _grad.trainable_parameters(model)
        dtype = _grad.real_dtype(self.params, self.layout.complex_names)
        self.inputs, self.targets = _grad.check_batch(inputs, targets, dtype)
        self.grad_chunk = positive_int(grad_chunk, "grad_chunk", allow_none=True)
        self.jvp_chunk = positive_int(jvp_chunk, "jvp_chunk")
        if not (0.0 <= energy_tol < 1.0):
            raise InputError(f"energy_tol={energy_tol!r}: expected 0 <= energy_tol < 1")
        if keep_ket_jvps not in (None, True, False):
            raise InputError(f"keep_ket_jvps={keep_ket_jvps!r}: expected None, True or False")
        n = self.inputs.shape[0]
        _grad.check_memory(3 * n, n, torch.float64, "N x N matrices (Gram, its eigenvectors, Pi)", "inputs")
        _grad.check_model_output(model, self.inputs)
        _grad.check_memory(self.inputs.shape[0], self.layout.size, dtype, "per-example gradient matrix")
        self.energy_tol = float(energy_tol)
        self.vmap_tangents = vmap_tangents
        self.progress = progress
        self.keep_ket_jvps = keep_ket_jvps
        self.support = _grad.FuncSupport(type(model).__name__)
        self._grads = None
        self._losses = None
        self._span = None
        self._eta_raw = None
        self._ket_jvps = None
        self._bra = None  # (key, [N, P] bra gradients): the latest one only
        self._joint = None  # (key, joint GradientSpan, undamped joint eta)

    def _gradients(self, function, inputs, targets):
        return _grad.per_example_gradients(
            self.model, inputs, targets, function,
            chunk=self.grad_chunk, params=self.params, layout=self.layout, support=self.support,
        )

    @property
    def grads(self) -> torch.Tensor:
        """SMSE gradients `[N, P]`."""
        if self._grads is None:
            grads, losses = self._gradients(_obs.smse, self.inputs, self.targets)
            _grad.check_finite(grads, "model: SMSE")
            self._grads, self._losses = grads, losses
        return self._grads

    @property
    def losses(self) -> torch.Tensor:
        """SMSE per example `[N]`."""
        _ = self.grads  # computes the losses alongside
        return self._losses

    @property
    def span(self) -> GradientSpan:
        if self._span is None:
            self._span = gradient_span(self.grads, self.energy_tol)
        return self._span

    def _keep_ket_jvps(self) -> bool:
        """Whether the next pass that pushes the ket rows keeps them (class docstring)."""
        if self._ket_jvps is not None or self.keep_ket_jvps is False:
            return False
        n = self.inputs.shape[0]
        if self.keep_ket_jvps:
            _grad.check_memory(n, self.inputs.numel(), self.inputs.dtype, "kept ket JVPs J G^T")
            return True
        if 4 * self.span.rank <= 3 * n:
            return False  # the ket metric's r basis vectors are far fewer than its N rows
        need = n * self.inputs.numel() * self.inputs.element_size()
        have = _grad.available_memory()
        return have is not None and need <= have // 4

    def _metric(self, blocks, rank, keep):
        eta, kept = metric_pass(
            self.model, self.inputs, blocks, rank, jvp_chunk=self.jvp_chunk,
            vmap_tangents=self.vmap_tangents, progress=self.progress, params=self.params,
            layout=self.layout, support=self.support, keep=keep,
        )
        if kept and kept[0] is not None:
            self._ket_jvps = kept[0]
        return eta

    @property
    def eta_raw(self) -> torch.Tensor:
        """Undamped (JQ)^T (JQ) / M `[r, r]` float64 in the ket basis."""
        if self._eta_raw is None:
            span = self.span
            self._eta_raw = self._metric([(span.grads, span.coefficients()[0], self._ket_jvps)], span.rank,
                                         (self._keep_ket_jvps(),))
        return self._eta_raw

    def response_gradients(
        self,
        response=None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> torch.Tensor | None:
        """Bra gradients `[N, P]` at `(transform(x_n), target_transform(y_n))`; None when they
        are the SMSE gradients themselves. target_transform None: `transform` for both."""
        function = _obs.resolve(response)
        if function is _obs.smse and transform is None and target_transform is None:
            return None
        key = (function, transform, target_transform)
        if self._bra is not None and self._bra[0] == key:
            return self._bra[1]
        self._bra = self._joint = None  # free the previous bra before computing the next
        inputs, targets = _grad.transformed_batch(self.inputs, self.targets, transform, target_transform)
        _grad.check_memory(inputs.shape[0], self.layout.size, self.inputs.dtype, "response gradient matrix")
        name = getattr(function, "__name__", "callable")
        grads, _ = self._gradients(function, inputs, targets)
        _grad.check_finite(grads, f"response {name!r}")
        self._bra = (key, grads)
        return grads

    def joint(self, response=None, transform=None,
              target_transform=None) -> tuple[GradientSpan, torch.Tensor] | None:
        """`(basis of [G; R], its undamped metric [r, r] float64)` for a bra; None for SMSE."""
        bra = self.response_gradients(response, transform, target_transform)
        if bra is None:
            return None
        key = self._bra[0]
        if self._joint is None or self._joint[0] != key:
            span = joint_span(self.span, bra, self.energy_tol)
            c_k, c_b = span.coefficients()
            keep = self._keep_ket_jvps()
            eta = self._metric([(self.grads, c_k, self._ket_jvps), (bra, c_b, None)], span.rank, (keep,))
            self._joint = (key, span, eta)
        return self._joint[1], self._joint[2]

    def pi(
        self,
        metric: str = "gauss-newton",
        *,
        damping: float = DEFAULT_DAMPING,
        response=None,
        response_transform: Callable | None = None,
        target_transform: Callable | None = None,
        optimizer_state: dict | None = None,
        bra_basis: str = "joint",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(Pi [N, N] float64, undamped eta eigenvalues [r])` (empty eigenvalues off Gauss-Newton).

        Rows = response (bra) n, columns = perturbation (ket) m. The basis used is `basis(...)`.
        """
        one_of(metric, METRICS, "metric")
        one_of(bra_basis, BRA_BASES, "bra_basis")
        if metric == "adam" and optimizer_state is None:
            raise InputError("optimizer_state: required for metric='adam' (checkpoint['optimizer_state'])")
        bra = self.response_gradients(response, response_transform, target_transform)
        none = torch.zeros(0, dtype=torch.float64)
        if metric == "euclidean":
            return (self.span.gram.clone() if bra is None else cross_gram(bra, self.grads)), none
        if metric == "adam":
            weight = adam_preconditioner(optimizer_state, self.layout)
            return cross_gram(self.grads if bra is None else bra, self.grads, weight), none
        if bra is None:
            return solve_hat(self.eta_raw, damping, self.span.coordinates())
        if bra_basis == "ket":
            return solve_hat(self.eta_raw, damping, self.span.coordinates(), self.span.coordinates(bra))
        span, eta = self.joint(response, response_transform, target_transform)
        coords, n = span.coordinates(), self.inputs.shape[0]
        return solve_hat(eta, damping, coords[:, :n], coords[:, n:])

    def basis(self, metric="gauss-newton", *, response=None, response_transform=None,
              target_transform=None, bra_basis="joint") -> GradientSpan:
        """The basis `pi` uses for these arguments (the ket span unless a joint bra)."""
        if metric != "gauss-newton" or bra_basis == "ket":
            return self.span
        found = self.joint(response, response_transform, target_transform)
        return self.span if found is None else found[0]


@dataclass
class HatResult:
    """Influence matrix of one batch: rows = response n, columns = perturbation m."""

    pi: torch.Tensor  # [N, N] float64 (normalised when `normalization` is set)
    rank: int  # of the basis used: the joint one for a joint bra (attrs["ket_rank"]: G's alone)
    eta_eigenvalues: torch.Tensor  # [r] float64, undamped, descending (empty off Gauss-Newton)
    losses: torch.Tensor  # [N] SMSE of each example
    singular_values: torch.Tensor  # [N] singular values of G, descending
    metric: str
    damping: float
    energy_tol: float
    normalization: str | None = None
    response: str = "smse"
    attrs: dict = field(default_factory=dict)

    def to_xarray(self, *, t_max: int | None = None, classes=None, attrs: dict | None = None):
        """DataArray with dims (t_resp, c_resp, t_pert, c_pert) for an influence batch.

        The batch must be ordered n = c * T + t (pdeinf.data.datasets.influence_batch) with
        T = t_max - 1 transitions per class. t_max None: T = N / len(classes), or T = N (one
        class) without classes.
        """
        import xarray as xr

        n = self.pi.shape[0]
        if t_max is None:
            n_c = len(classes) if classes is not None else 1
            if n_c == 0 or n % n_c:
                raise InputError(f"classes: N = {n} examples is not a multiple of {n_c} classes")
            t_max = n // n_c + 1
        n_t = t_max - 1
        if n_t <= 0 or n % n_t:
            raise InputError(f"t_max={t_max}: N = {n} examples is not a multiple of t_max - 1 = {n_t}")
        n_c = n // n_t
        classes = list(classes) if classes is not None else list(range(n_c))
        if len(classes) != n_c:
            raise InputError(f"classes: {len(classes)} names for {n_c} classes")
        from pdeinf import __version__ as version

        merged = {
            "metric": self.metric, "damping": self.damping, "energy_tol": self.energy_tol,
            "rank": self.rank, "response": self.response,
            "normalization": self.normalization or "none", "pdeinf_version": version,
            **self.attrs, **(attrs or {}),
        }
        return xr.DataArray(
            batch_to_labelled(self.pi.numpy(), n_c, n_t),
            dims=("t_resp", "c_resp", "t_pert", "c_pert"),
            coords={"t_resp": np.arange(n_t), "c_resp": classes, "t_pert": np.arange(n_t), "c_pert": classes},
            name="pi",
            attrs=merged,
        )


def batch_to_labelled(pi: np.ndarray, n_classes: int, n_times: int) -> np.ndarray:
    """`[..., N, N]` with n = c * n_times + t -> `[..., t_resp, c_resp, t_pert, c_pert]`."""
    lead = pi.shape[:-2]
    arr = pi.reshape(*lead, n_classes, n_times, n_classes, n_times)
    k = len(lead)
    return arr.transpose(*range(k), k + 1, k, k + 3, k + 2)


def labelled_to_batch(labelled: np.ndarray) -> np.ndarray:
    """The inverse of `batch_to_labelled`: `[..., t_resp, c_resp, t_pert, c_pert]` -> `[..., N, N]`."""
    lead = labelled.shape[:-4]
    n_times, n_classes = labelled.shape[-4], labelled.shape[-3]
    k = len(lead)
    arr = labelled.transpose(*range(k), k + 1, k, k + 3, k + 2)
    return np.ascontiguousarray(arr).reshape(*lead, n_classes * n_times, n_classes * n_times)


@keeps_model
def hat_matrix(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    metric: str = "gauss-newton",
    damping: float | None = None,
    energy_tol: float = 0.0,
    optimizer_state: dict | None = None,
    response=None,
    response_transform: Callable | None = None,
    target_transform: Callable | None = None,
    bra_basis: str = "joint",
    estimator: str = "subspace",
    rtol: float | None = None,
    maxiter: int | None = None,
    reference_rtol: float | None = None,
    grad_chunk: int | None = GRAD_CHUNK,
    jvp_chunk: int = JVP_CHUNK,
    normalization: str | None = None,
    vmap_tangents: bool = True,
    progress: bool = False,
) -> HatResult:
    """Influence matrix Pi `[N, N]` of a batch (inputs, targets `[N, C, H, W]`, cast to the
    model's real dtype) at the model's current parameters; rows = response (bra) n, columns =
    perturbation (ket) m. The mathematics, metrics, bras and bases: the module docstring.

    model: any `nn.Module` `[B, C, H, W] -> [B, C, H, W]` in eval mode (complex parameters
    count as (re, im) pairs; what torch.func cannot vmap runs in an exact loop, with one
    RuntimeWarning); it is left exactly as found (parameters, buffers, flags, modes, RNG).
    damping: None = DEFAULT_DAMPING (subspace) or the full-space estimator's default.
    response: None/"smse", a name of `observables.OBSERVABLES` or a callable (input, target,
    prediction) -> scalar. response_transform: callable on `[N, C, H, W]` giving the bra
    inputs g.x_n; target_transform: the bra targets (None: response_transform again; pass
    `lambda y: y` to keep them); kets and J stay at the untransformed batch. energy_tol: the
    gradient energy the basis may drop (`.attrs["cut_directions"]`, `["cut_energy"]`).
    estimator: "subspace" (this module) | "full-space" (`fullspace.full_space_hat_matrix`,
    with its rtol, maxiter and reference_rtol). grad_chunk / jvp_chunk: examples per vmapped
    gradient (None = all) / jvp call (GRAD_CHUNK, JVP_CHUNK). normalization: a kind of
    `normalize` applied to Pi (None = raw).
    """
    one_of(estimator, ESTIMATORS, "estimator")
    one_of(metric, METRICS, "metric")
    one_of(bra_basis, BRA_BASES, "bra_basis")
    _grad.check_callable(response_transform, "response_transform")
    _grad.check_callable(target_transform, "target_transform")
    _obs.resolve(response)  # unknown names fail before any gradient is computed
    bra = {"response": response, "response_transform": response_transform,
           "target_transform": target_transform}
    if estimator == "full-space":
        result = _full_space(model, inputs, targets, metric=metric, damping=damping, rtol=rtol,
                             maxiter=maxiter, reference_rtol=reference_rtol, **bra)
    else:
        for name, value in (("rtol", rtol), ("maxiter", maxiter), ("reference_rtol", reference_rtol)):
            if value is not None:
                raise InputError(f"{name}={value!r}: only used by estimator='full-space' (the subspace "
                                 "estimator is exact)")
        engine = HatEngine(
            model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
            jvp_chunk=jvp_chunk, vmap_tangents=vmap_tangents, progress=progress,
            keep_ket_jvps=False,  # one matrix: no later bra would reuse them
        )
        damping = DEFAULT_DAMPING if damping is None else damping
        pi, eigenvalues = engine.pi(metric, damping=damping, optimizer_state=optimizer_state,
                                    bra_basis=bra_basis, **bra)
        result = _subspace_result(engine, engine.basis(metric, bra_basis=bra_basis, **bra), pi, eigenvalues,
                                  metric=metric, damping=damping, energy_tol=energy_tol, response=response)
    if normalization is not None:
        from pdeinf.influence.normalize import normalize

        result.pi = normalize(result.pi, normalization, losses=result.losses)
        result.normalization = normalization
    return result


def _subspace_result(engine: HatEngine, basis: GradientSpan, pi: torch.Tensor, eigenvalues: torch.Tensor, *,
                     metric: str, damping: float, energy_tol: float, response) -> HatResult:
    """`HatResult` of the subspace estimator from `engine`, the `basis` used, Pi `[N, N]` float64
    and the undamped eta eigenvalues `[r]`."""
    response_name = response if isinstance(response, str) else getattr(response, "__name__", "smse")
    return HatResult(
        pi=pi,
        rank=basis.rank,
        eta_eigenvalues=eigenvalues,
        losses=engine.losses.to(torch.float64),
        singular_values=engine.span.all_singular_values,
        metric=metric,
        damping=float(damping),
        energy_tol=float(energy_tol),
        response=response_name or "smse",
        attrs={"estimator": "subspace", "bra_basis": "ket" if basis.bra_grads is None else "joint",
               "ket_rank": engine.span.rank, **cut_report(basis)},
    )


def _full_space(model, inputs, targets, *, metric, **options):
    """The full-space (seed paper) estimator's result; options left None take its defaults."""
    if metric != "gauss-newton":
        raise InputError(f"metric={metric!r}: estimator='full-space' has only the Gauss-Newton metric")
    try:
        from pdeinf.influence.fullspace import full_space_hat_matrix
    except ImportError as err:
        if getattr(err, "name", None) not in ("pdeinf.influence.fullspace", None):
            raise
        raise InputError(
            "estimator='full-space': pdeinf.influence.fullspace.full_space_hat_matrix is not "
            "available in this installation; use estimator='subspace'"
        ) from None
    options = {k: v for k, v in options.items() if v is not None}
    return full_space_hat_matrix(model, inputs, targets, **options)
