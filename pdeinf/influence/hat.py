"""The influence ("hat") matrix of one batch at one checkpoint (method.md section 4).

Steps, for N examples and P trainable parameters (`HatEngine` caches each so that several
variants of one batch share the expensive parts):

1. Per-example SMSE gradients `G` (`[N, P]`, rows g_n) with torch.func `vmap(grad)`, chunked.
2. Basis of the gradient span from the N x N Gram matrix `K = G G^T = V S^2 V^T` (float64
   eigh) instead of an SVD of the P x N matrix: P >> N (1e4..1e7 against 48), so the Gram is
   one BLAS-3 product (N^2 P flops, no P x N copy or QR of a tall matrix) and its eigh is
   48 x 48. The price is accuracy for singular values below sqrt(eps) s_1; the energy cut keeps
   only modes with s_r^2 / s_1^2 >~ energy_tol / N^2, far above eps(float64), so nothing is
   lost at the default tolerance. Rank r: smallest with sum_{i<=r} s_i^2 / sum s_i^2 >= 1 - tol.
   The basis Q = G^T V_r S_r^{-1} (P x r) is never stored; the gradients in the basis are
   `Gp = S_r V_r^T`.
3. `JQ = (J G^T) V_r S_r^{-1}`: forward-mode JVPs of the raw model outputs along the N stored
   gradient rows (vmapped over them), `jvp_chunk` examples per call; each example block's
   rows of JQ are formed in float64 and accumulated into the Gram `(JQ)^T (JQ)`.
4. `eta = (JQ)^T (JQ) / M + damping I` with M = N*C*H*W: the Gauss-Newton matrix of a plain
   mean squared error of the raw outputs (not of SMSE, whose per-channel scales would weight
   the outputs), exactly method.md step 4.
5. `Pi = Gp^T eta^{-1} Gp` via the eigendecomposition of the r x r metric (eta^{-1/2} applied
   to Gp, then a product A^T A): symmetric positive semi-definite by construction.

Variants: metric "euclidean" (`Pi = G G^T`, no truncation) and "adam" (`Pi = R D G^T` with the
Adam preconditioner D of the checkpoint's optimizer state, see `adam_preconditioner`). A
response observable O (rows R = grad O_n, at optionally transformed inputs) replaces the bra:
Gauss-Newton `Pi[n, m] = grad O_n^T Q eta^{-1} Q^T g_m`, the response gradient projected on the
span of the SMSE gradients (the only directions in which the metric is known).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.errors import InputError
from pdeinf.influence import gradients as _grad
from pdeinf.influence import observables as _obs

METRICS: tuple[str, ...] = ("gauss-newton", "euclidean", "adam")
#: Parameters per block when forming float64 products of [N, P] rows: 16384 columns keep each
#: float64 copy at N * 128 KiB (6 MiB for N = 48); the Gram of the quick UNet's gradients
#: (N = 48, P = 1.6e5) takes about 0.03 s either way.
_COLUMN_BLOCK = 1 << 14
#: Examples per vmapped jvp call, each call pushing all N gradient directions (memory grows
#: linearly with it: jvp_chunk x N (example, direction) pairs, as many as jvp_chunk directions
#: over the whole batch). Each example's primal forward runs once in the whole JVP stage
#: (instead of once per chunk of directions). When the rank r is well below N this pushes N
#: directions where r would do. Quick UNet, N = 48, one thread: 2.1-2.7 batched forwards per
#: basis vector for 2, 4 and 8 alike (benchmarks/bench_influence.py); 4 keeps one call small.
JVP_CHUNK = 4
#: Examples per vmapped gradient call. 8 rather than 16: the gradient stage's activations
#: (linear in it) stay in the allocator's heap under the JVP stage; on the quick UNet (N = 48,
#: one thread) 8 lowered the peak RSS of hat_matrix by 20-35 MiB (of about 380) and cost
#: 0.2 s in the gradient stage (0.74 s against 0.53 s), 3 % of the whole call.
GRAD_CHUNK = 8


def _positive_int(value, name: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name}={value!r}: expected a positive integer")
    return int(value)


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
    """Orthonormal basis of span{g_n} in factored form: Q = G^T V diag(1/s) (never stored)."""

    grads: torch.Tensor  # [N, P], model dtype
    gram: torch.Tensor  # [N, N] float64, G G^T
    singular_values: torch.Tensor  # [r] float64, descending
    right_vectors: torch.Tensor  # [N, r] float64 (V_r)
    all_singular_values: torch.Tensor  # [N] float64, descending, clamped at 0

    @property
    def rank(self) -> int:
        return int(self.singular_values.numel())

    def basis_rows(self, columns: slice) -> torch.Tensor:
        """Rows q_a^T of Q^T for the basis indices in `columns`: `[k, P]` in the model dtype."""
        coeff = self.right_vectors[:, columns] / self.singular_values[columns]  # [N, k]
        return (coeff.T.to(self.grads.dtype)) @ self.grads

    def coordinates(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Q^T rows^T `[r, N]` (float64). None: the span's own gradients, Gp = S V^T."""
        if rows is None:
            return self.singular_values[:, None] * self.right_vectors.T
        cross = cross_gram(self.grads, rows)  # [N, Nr] = G R^T
        return (self.right_vectors.T @ cross) / self.singular_values[:, None]


def gradient_span(grads: torch.Tensor, energy_tol: float = 1e-4) -> GradientSpan:
    """Energy-truncated basis of the row span of `grads` `[N, P]` (see the module docstring)."""
    if not (0.0 <= energy_tol < 1.0):
        raise InputError(f"energy_tol={energy_tol!r}: expected 0 <= energy_tol < 1")
    gram = cross_gram(grads, grads)
    gram = 0.5 * (gram + gram.T)
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(evals.sum())
    n = grads.shape[0]
    if total <= 0.0 or not math.isfinite(total):
        rank = 0
    else:
        energy = torch.cumsum(evals, 0) / total
        rank = int((energy < 1.0 - energy_tol).sum()) + 1
        # Modes at rounding level of the Gram are not directions of the span (duplicates).
        numerical = int((evals > n * torch.finfo(torch.float64).eps * evals[0]).sum())
        rank = max(1, min(rank, numerical, n))
    s = evals.sqrt()
    return GradientSpan(
        grads=grads,
        gram=gram,
        singular_values=s[:rank].clone(),
        right_vectors=evecs[:, :rank].clone(),
        all_singular_values=s,
    )


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
) -> torch.Tensor:
    """Undamped restricted Gauss-Newton metric (JQ)^T (JQ) / M, `[r, r]` float64.

    J is the Jacobian of all raw outputs of the batch (M = N*C*H*W) with respect to the
    parameters. Since Q = G^T V_r S_r^{-1}, JQ = (J G^T) V_r S_r^{-1}: the JVPs push the
    stored gradient rows themselves (no P-sized basis copy), `jvp_chunk` examples at a time
    with all N directions vmapped in one call; each block's rows of JQ are formed in float64
    and accumulated into (JQ)^T (JQ) (J is block-diagonal over examples), so no r x M store.
    Peak extra memory: one call's N x jvp_chunk forward-mode evaluations.
    """
    r = span.rank
    if r == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    n = inputs.shape[0]
    n_dir = span.grads.shape[0]  # the N gradient rows (== n unless a subset of inputs is timed)
    m_outputs = inputs.numel()  # outputs have the inputs' shape [N, C, H, W]
    coeff = span.right_vectors / span.singular_values  # [N, r] float64: Q = G^T coeff
    eta = torch.zeros(r, r, dtype=torch.float64)
    bar = tqdm(total=n, desc="JVPs", unit="ex", disable=not progress, leave=False)
    for start in range(0, n, jvp_chunk):
        rows = slice(start, min(start + jvp_chunk, n))
        out = _grad.output_jvps(
            model, inputs[rows], span.grads, params=params, layout=layout,
            vmap_tangents=vmap_tangents,
        )  # [N, b, C, H, W]: J(x_b) g_m for every gradient row m
        if out[0].numel() != inputs[rows].numel():
            raise InputError(
                f"model: outputs have {out[0].numel() // (rows.stop - rows.start)} values per "
                f"example, inputs {m_outputs // n}; expected [B, C, H, W] -> [B, C, H, W]"
            )
        # Combine into (JQ) rows before squaring: error ~ eps s_1 / s_r, as for a basis
        # formed in parameter space (squaring (J G^T) first would square that factor).
        jq = coeff.T @ out.reshape(n_dir, -1).to(torch.float64)  # [r, b*C*H*W]
        del out  # not alive during the next chunk
        eta += jq @ jq.T
        del jq
        bar.update(rows.stop - rows.start)
    bar.close()
    eta = eta / m_outputs
    return 0.5 * (eta + eta.T)


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
        raise InputError(
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


def _check_batch(inputs, targets, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(t).__name__}")
        if t.ndim != 4 or t.shape[0] == 0:
            raise InputError(f"{name}: expected shape [N, C, H, W] with N >= 1, got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise InputError(f"{name}: contains NaN or Inf")
    if inputs.shape != targets.shape:
        raise InputError(f"targets: shape {tuple(targets.shape)} differs from inputs {tuple(inputs.shape)}")
    return inputs.detach().to(dtype), targets.detach().to(dtype)


class HatEngine:
    """One batch at one checkpoint; caches gradients, basis and metric across variants."""

    def __init__(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        energy_tol: float = 1e-4,
        grad_chunk: int | None = GRAD_CHUNK,
        jvp_chunk: int = JVP_CHUNK,
        vmap_tangents: bool = True,
        progress: bool = False,
    ):
        _grad.check_model_mode(model)
        self.model = model
        self.params, self.layout = _grad.trainable_parameters(model)
        dtype = next(iter(self.params.values())).dtype
        self.inputs, self.targets = _check_batch(inputs, targets, dtype)
        self.grad_chunk = _positive_int(grad_chunk, "grad_chunk", allow_none=True)
        self.jvp_chunk = _positive_int(jvp_chunk, "jvp_chunk")
        if not (0.0 <= energy_tol < 1.0):
            raise InputError(f"energy_tol={energy_tol!r}: expected 0 <= energy_tol < 1")
        self.energy_tol = float(energy_tol)
        self.vmap_tangents = vmap_tangents
        self.progress = progress
        self._grads = None
        self._losses = None
        self._span = None
        self._eta_raw = None
        self._responses: dict = {}

    def _gradients(self, function, inputs, targets):
        return _grad.per_example_gradients(
            self.model, inputs, targets, function,
            chunk=self.grad_chunk, params=self.params, layout=self.layout,
        )

    @property
    def grads(self) -> torch.Tensor:
        """SMSE gradients `[N, P]`."""
        if self._grads is None:
            self._grads, self._losses = self._gradients(_obs.smse, self.inputs, self.targets)
            if not torch.isfinite(self._grads).all():
                raise InputError("model: per-example gradients contain NaN or Inf")
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

    @property
    def eta_raw(self) -> torch.Tensor:
        """Undamped (JQ)^T (JQ) / M `[r, r]` float64."""
        if self._eta_raw is None:
            self._eta_raw = restricted_gauss_newton(
                self.model, self.inputs, self.span, jvp_chunk=self.jvp_chunk,
                vmap_tangents=self.vmap_tangents, progress=self.progress,
                params=self.params, layout=self.layout,
            )
        return self._eta_raw

    def response_gradients(self, response=None, transform: Callable | None = None) -> torch.Tensor | None:
        """Bra gradients `[N, P]`; None when they are the SMSE gradients themselves."""
        function = _obs.resolve(response)
        if function is _obs.smse and transform is None:
            return None
        key = (function, transform)
        if key not in self._responses:
            inputs, targets = self.inputs, self.targets
            if transform is not None:
                inputs, targets = transform(inputs), transform(targets)
                inputs, targets = _check_batch(inputs, targets, self.inputs.dtype)
            grads, _ = self._gradients(function, inputs, targets)
            if not torch.isfinite(grads).all():
                raise InputError("response: its per-example gradients contain NaN or Inf")
            self._responses[key] = grads
        return self._responses[key]

    def pi(
        self,
        metric: str = "gauss-newton",
        *,
        damping: float = 1e-6,
        response=None,
        response_transform: Callable | None = None,
        optimizer_state: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(Pi [N, N] float64, undamped eta eigenvalues [r])` (empty eigenvalues off Gauss-Newton)."""
        if metric not in METRICS:
            raise InputError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
        if metric == "adam" and optimizer_state is None:
            raise InputError("optimizer_state: required for metric='adam' (checkpoint['optimizer_state'])")
        bra = self.response_gradients(response, response_transform)
        none = torch.zeros(0, dtype=torch.float64)
        if metric == "euclidean":
            return (self.span.gram.clone() if bra is None else cross_gram(bra, self.grads)), none
        if metric == "adam":
            weight = adam_preconditioner(optimizer_state, self.layout)
            return cross_gram(self.grads if bra is None else bra, self.grads, weight), none
        ket = self.span.coordinates()
        bra_coords = None if bra is None else self.span.coordinates(bra)
        return solve_hat(self.eta_raw, damping, ket, bra_coords)


@dataclass
class HatResult:
    """Influence matrix of one batch: rows = response n, columns = perturbation m."""

    pi: torch.Tensor  # [N, N] float64 (normalised when `normalization` is set)
    rank: int
    eta_eigenvalues: torch.Tensor  # [r] float64, undamped, descending (empty off Gauss-Newton)
    losses: torch.Tensor  # [N] SMSE of each example
    singular_values: torch.Tensor  # [N] singular values of G, descending
    metric: str
    damping: float
    energy_tol: float
    normalization: str | None = None
    response: str = "smse"
    attrs: dict = field(default_factory=dict)

    def to_xarray(self, *, t_max: int = 17, classes=None, attrs: dict | None = None):
        """DataArray with dims (t_resp, c_resp, t_pert, c_pert) for an influence batch.

        The batch must be ordered n = c * (t_max - 1) + t (pdeinf.data.datasets.influence_batch).
        """
        import xarray as xr

        n = self.pi.shape[0]
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


def hat_matrix(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    metric: str = "gauss-newton",
    damping: float = 1e-6,
    energy_tol: float = 1e-4,
    optimizer_state: dict | None = None,
    response=None,
    response_transform: Callable | None = None,
    grad_chunk: int | None = GRAD_CHUNK,
    jvp_chunk: int = JVP_CHUNK,
    normalization: str | None = None,
    vmap_tangents: bool = True,
    progress: bool = False,
) -> HatResult:
    """Influence matrix Pi `[N, N]` of a batch (inputs, targets `[N, C, H, W]`) at the model's
    current parameters; see the module docstring for the mathematics and the variants.

    metric: "gauss-newton" | "euclidean" | "adam" (needs `optimizer_state`, an AdamW
    state_dict). response: None/"smse" | "mass_drift" | "energy_drift" | callable
    (input, target, prediction) -> scalar; response_transform: callable on `[N, C, H, W]`
    applied to the response inputs and targets. grad_chunk: examples per vmapped gradient call
    (None = all); jvp_chunk: examples per vmapped jvp call (all N gradient directions at once;
    memory grows with it). normalization: a kind of `pdeinf.influence.normalize` applied to Pi
    (None = raw). Inputs are cast to the model dtype.
    """
    from pdeinf.influence.normalize import normalize

    if metric not in METRICS:
        raise InputError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
    engine = HatEngine(
        model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
        jvp_chunk=jvp_chunk, vmap_tangents=vmap_tangents, progress=progress,
    )
    _obs.resolve(response)  # unknown names fail before any gradient is computed
    pi, eigenvalues = engine.pi(
        metric, damping=damping, response=response, response_transform=response_transform,
        optimizer_state=optimizer_state,
    )
    losses = engine.losses.to(torch.float64)
    if normalization is not None:
        pi = normalize(pi, normalization, losses=losses)
    response_name = response if isinstance(response, str) else getattr(response, "__name__", "smse")
    return HatResult(
        pi=pi,
        rank=engine.span.rank,
        eta_eigenvalues=eigenvalues,
        losses=losses,
        singular_values=engine.span.all_singular_values,
        metric=metric,
        damping=float(damping),
        energy_tol=float(energy_tol),
        normalization=normalization,
        response=response_name or "smse",
    )
