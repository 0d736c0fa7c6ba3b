"""The influence ("hat") matrix of one batch at one checkpoint (docs/method.md section 4):
`Pi = Gp^T (eta + damping I)^{-1} Gp` with G `[N, P]` the per-example SMSE gradients, Q the basis
of their span (eigh of the float64 Gram; energy_tol > 0 drops that share of sum s_i^2, which does
not bound the change of Pi), Gp = Q^T G^T and eta = (JQ)^T (JQ) / M the restricted Gauss-Newton
metric of a plain MSE (forward-mode JVPs, M = N*C*H*W). Metrics "euclidean" (`G G^T`) and "adam"
(`R D G^T`); other bras R use the basis of `[G; R]` (`bra_basis="joint"`) or the span of G ("ket").
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.checks import finite_float, one_of, positive_int
from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import gradients as _grad
from pdeinf.influence import observables as _obs
from pdeinf.influence.normalize import normalize
from pdeinf.influence.untouched import keeps_model

METRICS: tuple[str, ...] = ("gauss-newton", "euclidean", "adam")
BRA_BASES: tuple[str, ...] = ("joint", "ket")
ESTIMATORS: tuple[str, ...] = ("subspace", "full-space")
DEFAULT_DAMPING = 1e-6  # of the restricted metric (the follow-up's)
_COLUMN_BLOCK = 1 << 14  # parameters per block of the float64 products of [N, P] rows
JVP_CHUNK = 4  # examples per vmapped jvp call, each pushing all its directions
GRAD_CHUNK = 8  # examples per vmapped gradient call


def cross_gram(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`a diag(weight) b^T` `[Na, Nb]` in float64 for rows a `[Na, P]`, b `[Nb, P]`, in column blocks."""
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
    `[Nb, P]` or none), factored as `Q = G^T C_k + R^T C_b`, `[C_k; C_b] = V_r diag(1/s_r)`."""

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
        """Q^T rows^T `[r, Nr]` float64 for rows `[Nr, P]` of a ket span; None: the span's own
        rows `S V^T` `[r, K]` (columns N.. are the bras')."""
        if rows is None:
            return self.singular_values[:, None] * self.right_vectors.T
        cross = cross_gram(self.grads, rows)  # [N, Nr] = G R^T
        return (self.right_vectors.T @ cross) / self.singular_values[:, None]


def gradient_span(grads: torch.Tensor, energy_tol: float = 0.0, bra_grads: torch.Tensor | None = None,
                  ket_gram: torch.Tensor | None = None) -> GradientSpan:
    """Energy-truncated basis of the rows of `grads` `[N, P]` (and `bra_grads` `[Nb, P]`: the
    joint span) from their Gram; `ket_gram`: the symmetrised Gram of `grads` when known."""
    if not (0.0 <= energy_tol < 1.0):
        raise InputError(f"energy_tol={energy_tol!r}: expected 0 <= energy_tol < 1")
    if ket_gram is None:
        gram = cross_gram(grads, grads)
        ket_gram = 0.5 * (gram + gram.T)
    gram = ket_gram
    if bra_grads is not None:
        cross = cross_gram(grads, bra_grads)
        bb = cross_gram(bra_grads, bra_grads)
        gram = torch.cat([torch.cat([ket_gram, cross], 1), torch.cat([cross.T, 0.5 * (bb + bb.T)], 1)], 0)
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


def metric_pass(model: torch.nn.Module, inputs: torch.Tensor, blocks: list, rank: int, *,
                jvp_chunk: int = JVP_CHUNK, vmap_tangents: bool = True, progress: bool = False,
                params=None, layout=None, support: _grad.FuncSupport | None = None,
                keep: tuple[bool, ...] = ()) -> tuple[torch.Tensor, list]:
    """`(eta_raw, kept)`: the undamped `(JQ)^T (JQ) / M` `[r, r]` float64 for `Q = sum_i D_i^T C_i`,
    blocks `(D_i [K_i, P], C_i [K_i, r] float64, pushed_i)` with pushed_i None or the kept JVPs
    `[K_i, N, C, H, W]` of an earlier pass; kept[i]: block i's JVPs where `keep[i]`, else None."""
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
                    raise InputError(f"model: outputs have {out[0].numel() // (rows.stop - rows.start)} "
                                     f"values per example, inputs {m_outputs // n}; expected [B, C, H, W] "
                                     "-> [B, C, H, W]")
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
    """`blocks` with those neither pushed nor kept folded into ONE block of the `rank` rows of
    `sum_i C_i^T D_i` (exact, J is linear) when that is fewer JVPs and fits in a quarter of free memory."""
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
    # folded blocks become empty so that indices (and `keep`) still refer to the caller's blocks
    empty = (directions[:0], identity[:0], None)
    out = [empty if i in fold else block for i, block in enumerate(blocks)]
    return out + [(basis, identity, None)]


def restricted_gauss_newton(model: torch.nn.Module, inputs: torch.Tensor, span: GradientSpan,
                            **options) -> torch.Tensor:
    """Undamped restricted Gauss-Newton metric (JQ)^T (JQ) / M `[r, r]` float64 of the ket span
    (J of all N*C*H*W raw outputs); options: those of `metric_pass` (jvp_chunk, ...)."""
    return metric_pass(model, inputs, [(span.grads, span.coefficients()[0], None)], span.rank, **options)[0]


def solve_hat(eta_raw: torch.Tensor, damping: float, ket: torch.Tensor,
              bra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(Pi = bra^T (eta_raw + damping I)^{-1} ket [N, N], undamped eigenvalues [r])` for float64
    coordinates ket, bra `[r, N]` (None: ket, Pi exactly symmetric PSD); NumericalError if singular."""
    damping = finite_float(damping, "damping", minimum=0.0)
    r, n = ket.shape
    if r == 0:
        return torch.zeros(n, n, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(eta_raw)
    evals, evecs = evals.flip(0), evecs.flip(1)
    damped = evals + damping
    floor = r * torch.finfo(torch.float64).eps * max(float(evals.abs().max()), 1e-300)
    if float(damped.min()) <= floor:
        raise NumericalError(f"damping={damping!r}: the restricted Gauss-Newton metric is singular "
                             f"(smallest eigenvalue {float(evals.min()):.3e} of {float(evals.max()):.3e}); "
                             "pass damping > 0")
    inv_sqrt = damped.rsqrt()[:, None]
    a = inv_sqrt * (evecs.T @ ket)
    if bra is None:
        pi = a.T @ a
        return 0.5 * (pi + pi.T), evals
    b = inv_sqrt * (evecs.T @ bra)
    return b.T @ a, evals


def adam_preconditioner(optimizer_state: dict, layout: _grad.ParameterLayout) -> torch.Tensor:
    """D `[P]` float64 of the part `-lr D g` of one more AdamW step linear in the gradient g:
    `(1 - beta1) / b1 / (sqrt(beta2 v / b2) + eps)`, b_i = 1 - beta_i^(t+1) (amsgrad: v the stored
    maximum), from the `AdamW.state_dict()` of an optimizer built from `model.parameters()`."""
    try:
        state, groups = optimizer_state["state"], optimizer_state["param_groups"]
    except (KeyError, TypeError):
        raise InputError("optimizer_state: expected an AdamW state_dict with 'state' and 'param_groups'") from None
    indices = [(i, g) for g in groups for i in g["params"]]
    if len(indices) != len(layout.names):
        raise InputError(f"optimizer_state: holds {len(indices)} parameters, the model {len(layout.names)} "
                         "trainable ones")
    parts = []
    for (index, group), name, shape in zip(indices, layout.names, layout.shapes):
        entry = state.get(index)
        if entry is None or "exp_avg_sq" not in entry:
            raise InputError(f"optimizer_state: no Adam moments for parameter {name!r} (index {index})")
        v = entry.get("max_exp_avg_sq") if group.get("amsgrad") else entry["exp_avg_sq"]
        if v.is_complex():  # Adam steps on (re, im) with one second moment each
            v = torch.view_as_real(v)
        if tuple(v.shape) != tuple(shape):
            raise InputError(f"optimizer_state: parameter {name!r} has moments of shape {tuple(v.shape)}, "
                             f"the model {tuple(shape)}")
        beta1, beta2 = group["betas"]
        step = float(entry["step"]) + 1.0
        b1, b2 = 1.0 - beta1**step, 1.0 - beta2**step
        second = (v.to(torch.float64) if group.get("amsgrad") else beta2 * v.to(torch.float64)) / b2
        parts.append(((1.0 - beta1) / b1 / (second.sqrt() + group["eps"])).reshape(-1))
    return torch.cat(parts)


class HatEngine:
    """One batch at one checkpoint; caches gradients, basis and metric across variants (the latest
    bra's). keep_ket_jvps: keep the ket JVPs J G^T `[N, N, C, H, W]` for joint bras: True (InputError
    if they cannot fit), False, None (when r > 3N/4 and they fit in a quarter of free memory)."""

    def __init__(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                 energy_tol: float = 0.0, grad_chunk: int | None = GRAD_CHUNK, jvp_chunk: int = JVP_CHUNK,
                 vmap_tangents: bool = True, progress: bool = False, keep_ket_jvps: bool | None = None):
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
        self.energy_tol, self.vmap_tangents, self.progress = float(energy_tol), vmap_tangents, progress
        self.keep_ket_jvps = keep_ket_jvps
        self.support = _grad.FuncSupport(type(model).__name__)
        self._grads = self._losses = self._span = self._eta_raw = self._ket_jvps = None
        self._bra = self._joint = None  # latest bra: (key, [N, P] gradients), (key, span, undamped eta)

    def _gradients(self, function, inputs, targets):
        return _grad.per_example_gradients(self.model, inputs, targets, function, chunk=self.grad_chunk,
                                           params=self.params, layout=self.layout, support=self.support)

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

    def _metric(self, blocks, rank):
        """Undamped metric of a basis whose first block holds the ket rows (kept when `_keep_ket_jvps`)."""
        eta, kept = metric_pass(self.model, self.inputs, blocks, rank, jvp_chunk=self.jvp_chunk,
                                vmap_tangents=self.vmap_tangents, progress=self.progress, params=self.params,
                                layout=self.layout, support=self.support, keep=(self._keep_ket_jvps(),))
        if kept and kept[0] is not None:
            self._ket_jvps = kept[0]
        return eta

    @property
    def eta_raw(self) -> torch.Tensor:
        """Undamped (JQ)^T (JQ) / M `[r, r]` float64 in the ket basis."""
        if self._eta_raw is None:
            span = self.span
            self._eta_raw = self._metric([(span.grads, span.coefficients()[0], self._ket_jvps)], span.rank)
        return self._eta_raw

    def response_gradients(self, response=None, transform: Callable | None = None,
                           target_transform: Callable | None = None) -> torch.Tensor | None:
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
        grads, _ = self._gradients(function, inputs, targets)
        _grad.check_finite(grads, f"response {getattr(function, '__name__', 'callable')!r}")
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
            span = gradient_span(self.span.grads, self.energy_tol, bra, self.span.gram)
            c_k, c_b = span.coefficients()
            eta = self._metric([(self.grads, c_k, self._ket_jvps), (bra, c_b, None)], span.rank)
            self._joint = (key, span, eta)
        return self._joint[1], self._joint[2]

    def pi(self, metric: str = "gauss-newton", *, damping: float = DEFAULT_DAMPING, response=None,
           response_transform: Callable | None = None, target_transform: Callable | None = None,
           optimizer_state: dict | None = None,
           bra_basis: str = "joint") -> tuple[torch.Tensor, torch.Tensor]:
        """`(Pi [N, N] float64, undamped eta eigenvalues [r])` (empty eigenvalues off Gauss-Newton);
        rows = response (bra) n, columns = perturbation (ket) m, in the basis `basis(...)`."""
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
        """DataArray (t_resp, c_resp, t_pert, c_pert) of a batch n = c * T + t, T = t_max - 1
        (None: N / len(classes), or N)."""
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

        merged = {"metric": self.metric, "damping": self.damping, "energy_tol": self.energy_tol,
                  "rank": self.rank, "response": self.response, "normalization": self.normalization or "none",
                  "pdeinf_version": version, **self.attrs, **(attrs or {})}
        coords = {"t_resp": np.arange(n_t), "c_resp": classes, "t_pert": np.arange(n_t), "c_pert": classes}
        return xr.DataArray(batch_to_labelled(self.pi.numpy(), n_c, n_t), dims=tuple(coords), coords=coords,
                            name="pi", attrs=merged)


def batch_to_labelled(pi: np.ndarray, n_classes: int, n_times: int) -> np.ndarray:
    """`[..., N, N]` with n = c * n_times + t -> `[..., t_resp, c_resp, t_pert, c_pert]`."""
    lead = pi.shape[:-2]
    arr = pi.reshape(*lead, n_classes, n_times, n_classes, n_times)
    k = len(lead)
    return arr.transpose(*range(k), k + 1, k, k + 3, k + 2)


def labelled_to_batch(labelled: np.ndarray) -> np.ndarray:
    """The inverse of `batch_to_labelled`: `[..., t_resp, c_resp, t_pert, c_pert]` -> `[..., N, N]`."""
    *lead, n_times, n_classes, _, _ = labelled.shape
    k = len(lead)
    arr = labelled.transpose(*range(k), k + 1, k, k + 3, k + 2)
    return np.ascontiguousarray(arr).reshape(*lead, n_classes * n_times, n_classes * n_times)


@keeps_model
def hat_matrix(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
               metric: str = "gauss-newton", damping: float | None = None, energy_tol: float = 0.0,
               optimizer_state: dict | None = None, response=None, response_transform: Callable | None = None,
               target_transform: Callable | None = None, bra_basis: str = "joint",
               estimator: str = "subspace", rtol: float | None = None, maxiter: int | None = None,
               reference_rtol: float | None = None, grad_chunk: int | None = GRAD_CHUNK,
               jvp_chunk: int = JVP_CHUNK, normalization: str | None = None, vmap_tangents: bool = True,
               progress: bool = False) -> HatResult:
    """Influence matrix Pi `[N, N]` (rows = response n, columns = perturbation m) of inputs,
    targets `[N, C, H, W]` (cast to the model's real dtype) for any eval-mode `nn.Module`
    `[B, C, H, W] -> [B, C, H, W]` (left exactly as found; see the module docstring).

    damping: None = DEFAULT_DAMPING or the full-space default. response: None/"smse", a name of
    `observables.OBSERVABLES` or a callable (input, target, prediction) -> scalar, evaluated at
    response_transform(x) / target_transform(y) (None: unchanged / the response_transform).
    estimator: "subspace" | "full-space" (`fullspace.full_space_hat_matrix`: rtol, maxiter,
    reference_rtol). grad_chunk / jvp_chunk: examples per vmapped call. normalization: a kind of
    `normalize` (None = raw).
    """
    one_of(estimator, ESTIMATORS, "estimator")
    one_of(metric, METRICS, "metric")
    one_of(bra_basis, BRA_BASES, "bra_basis")
    _grad.check_callable(response_transform, "response_transform")
    _grad.check_callable(target_transform, "target_transform")
    _obs.resolve(response)  # unknown names fail before any gradient is computed
    bra = {"response": response, "response_transform": response_transform,
           "target_transform": target_transform}
    solver = {"damping": damping, "rtol": rtol, "maxiter": maxiter, "reference_rtol": reference_rtol}
    if estimator == "full-space":
        if metric != "gauss-newton":
            raise InputError(f"metric={metric!r}: estimator='full-space' has only the Gauss-Newton metric")
        try:
            from pdeinf.influence.fullspace import full_space_hat_matrix
        except ImportError as err:
            if getattr(err, "name", None) not in ("pdeinf.influence.fullspace", None):
                raise
            raise InputError("estimator='full-space': "
                             "pdeinf.influence.fullspace.full_space_hat_matrix is not available "
                             "in this installation; use estimator='subspace'") from None
        options = {k: v for k, v in {**solver, **bra}.items() if v is not None}
        result = full_space_hat_matrix(model, inputs, targets, **options)
    else:
        for name in ("rtol", "maxiter", "reference_rtol"):
            if solver[name] is not None:
                raise InputError(f"{name}={solver[name]!r}: only used by estimator='full-space' (the "
                                 "subspace estimator is exact)")
        engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
                           jvp_chunk=jvp_chunk, vmap_tangents=vmap_tangents, progress=progress,
                           keep_ket_jvps=False)  # one matrix: no later bra would reuse them
        damping = DEFAULT_DAMPING if damping is None else damping
        pi, eigenvalues = engine.pi(metric, damping=damping, optimizer_state=optimizer_state,
                                    bra_basis=bra_basis, **bra)
        basis = engine.basis(metric, bra_basis=bra_basis, **bra)
        # what the basis left out: directions with a nonzero singular value and their energy share
        s = basis.all_singular_values
        total, kept = float(s.pow(2).sum()), float(basis.singular_values.pow(2).sum())
        cut = {"cut_directions": max(int((s > 0).sum()) - basis.rank, 0),
               "cut_energy": max(total - kept, 0.0) / total if total > 0 else 0.0}
        name = response if isinstance(response, str) else getattr(response, "__name__", "smse")
        attrs = {"estimator": "subspace", "bra_basis": "ket" if basis.bra_grads is None else "joint",
                 "ket_rank": engine.span.rank, **cut}
        result = HatResult(pi, basis.rank, eigenvalues, engine.losses.to(torch.float64),
                           engine.span.all_singular_values, metric, float(damping), float(energy_tol),
                           response=name or "smse", attrs=attrs)
    if normalization is not None:
        result.pi = normalize(result.pi, normalization, losses=result.losses)
        result.normalization = normalization
    return result
