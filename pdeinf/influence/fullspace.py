"""The seed paper's full-space influence estimator (docs/method.md section 4).

J `[M, P]`: Jacobian of all M = N*C*H*W raw outputs (J_n: example n's rows). Ket r^C_n =
(f(x_n) - y_n) / (rms_xy(y_n^c) + 1e-6) per channel, g_m = J_m^T r^C_m, chi_m = (J^T J +
lambda I)^{-1} g_m, H_A(n, m) = (J_n^T r^A_n) . chi_m / (C H W) (`bra_and_ket.jl`). Bras r^A:
r^C; the relative drift (M[f(x_n)] - M[x_n]) / (M[x_n] + 1e-6) of M[z] = sum_xy z on the density
/ energy channel; C H W dO_n/df(x_n) for a callable O. A response transform moves the bra and
J_n, not chi. The matrix-free solve (`GaussNewtonOperator`) shares one block Krylov space
(`block_krylov`) or runs N CG recurrences (`krylov`) to ||g_m - A chi_m|| <= rtol ||g_m||.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.func import jvp, vjp, vmap

from pdeinf.atomic import atomic_write
from pdeinf.checks import finite_float, one_of
from pdeinf.config import PDE_SPECS, pde_spec
from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import gradients as _grad
from pdeinf.influence import observables as _obs
from pdeinf.influence.block_krylov import block_galerkin
from pdeinf.influence.hat import HatResult, cross_gram
from pdeinf.influence.krylov import batched_cg, check_rtol_maxiter
from pdeinf.influence.untouched import keeps_model
from pdeinf.training.loss import channel_scale

RESIDUALS: tuple[str, ...] = ("smse", "mse")
PAIR_BUDGET = 192  # (example, direction) pairs per vmapped operator call
CHECKPOINT_EVERY = 5  # sweeps between two saves of the iterate state
STOPPING_RULES = ("per-column", "authors")
SOLVERS = ("block", "cg")
DEFAULT_MAXITER = 1000  # per right-hand side (quick UNet: ~200 at rtol 1.5e-2)


def smse_residual(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paper r^C `[N, C, H, W]`: (pred - target) / (rms_xy(target) + 1e-6), per channel."""
    return (pred - target) / channel_scale(target)[:, :, None, None]


def _conserved_channel(kind: str, channels: int, pde: str | None) -> int:
    """Density or energy channel from the PDESpec (given, or the unique match by channel count)."""
    attr = "density_channel" if kind == "mass_drift" else "energy_channel"
    if pde is not None:
        spec = pde_spec(pde)
    else:
        found = [s for s in PDE_SPECS.values() if getattr(s, attr) is not None and s.channels == channels]
        if len(found) != 1:
            raise InputError(f"response={kind!r}: pass pde=; no unique PDE with {channels} channels has a {attr}")
        spec = found[0]
    channel = getattr(spec, attr)
    if channel is None or spec.channels != channels:
        raise InputError(f"response={kind!r}: PDE {spec.name} has no {attr} for a {channels}-channel model")
    return channel


def bra_residual(response, inputs, targets, pred, *, pde: str | None = None) -> torch.Tensor:
    """Per-pixel bra r^A `[N, C, H, W]` for a response name or callable (module docstring)."""
    function = _obs.resolve(response)
    if function is _obs.smse:
        return smse_residual(pred, targets)
    for kind in ("mass_drift", "energy_drift"):  # r^M / r^E: the relative drift on its channel
        if function is _obs.OBSERVABLES[kind]:
            channel = _conserved_channel(kind, pred.shape[1], pde)
            out = torch.zeros_like(pred)
            out[:, channel] = _obs.relative_drift(inputs, pred, channel)[:, None, None]
            return out
    return pred[0].numel() * vmap(torch.func.grad(function, argnums=2))(inputs, targets, pred)


def offdiagonal_mass(pi) -> float:
    """mean_{n != m} |H^(n, m)| / mean_n |H^(n, n)| of `pi` `[N, N]`, H^ row-standardized (by the
    std over m, ddof 1, no centring): 0 when diagonal, 1 when off-diagonal entries are as large."""
    a = torch.as_tensor(np.asarray(pi), dtype=torch.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise InputError(f"pi: expected a square [N, N] matrix with N >= 2, got shape {tuple(a.shape)}")
    std = a.std(dim=1, correction=1, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))  # an all-zero row contributes zeros
    h = (a / std).abs()
    diag = h.diagonal()
    off = (h.sum() - diag.sum()) / (a.shape[0] * (a.shape[0] - 1))
    return float(off / diag.mean())


class GaussNewtonOperator:
    """V `[k, P]` -> J^T J V + damping V `[k, P]` over the batch, matrix-free: J^T J = sum_n
    J_n^T J_n over chunks of max(1, pair_budget // k) examples (one vmapped JVP and VJP each)."""

    def __init__(self, model, inputs, params, layout, damping: float, pair_budget: int = PAIR_BUDGET,
                 support: _grad.FuncSupport | None = None):
        self.model, self.apply = model, _grad._model_function(model)
        self.inputs, self.params, self.layout = inputs, params, layout
        self.damping, self.pair_budget = float(damping), int(pair_budget)
        self.support = support if support is not None else _grad.FuncSupport(type(model).__name__)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        k, n = v.shape[0], self.inputs.shape[0]
        chunk = max(1, self.pair_budget // k)
        out = self.damping * v
        with _grad.math_attention():
            for start in range(0, n, chunk):
                out += self._gauss_newton(self.inputs[start:start + chunk], v)
        return out

    def _gauss_newton(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`J_x^T J_x V` `[k, P]` for examples x `[b, C, H, W]` (exact fallbacks where untraceable)."""
        def f(p):
            return self.apply(p, x)

        _, pullback = vjp(f, self.params)
        if self.support.vmap_jvp and self.support.forward_mode:
            try:
                pushed = vmap(lambda t: jvp(f, (self.params,), (t,))[1])(self.layout.unflatten(v))
                return self.layout.flatten(vmap(pullback)(pushed)[0], lead_dims=1)
            except _grad.TRACE_ERRORS as err:
                self.support.vmap_jvp = False
                self.support.fall_back("vmap(jvp)", err)
        pushed = _grad.output_jvps(self.model, x, v, params=self.params, layout=self.layout,
                                   support=self.support)  # [k, b, C, H, W]
        return torch.stack([self.layout.flatten(pullback(p)[0]) for p in pushed])


@dataclass
class FullSpaceResult(HatResult):
    """`HatResult` of the full-space estimator plus the solver's record (per right-hand side m)."""

    iterations: torch.Tensor | None = None  # [N] int64 CG iterations per column
    matvecs: int = 0  # operator applications per column, summed (incl. true-residual checks)
    sweeps: int = 0  # batched operator calls
    residual_norms: torch.Tensor | None = None  # [N] float64 final ||g - A chi|| / ||g||
    converged: torch.Tensor | None = None  # [N] bool, residual_norms <= the stated tolerance
    error_bound: torch.Tensor | None = None  # [N, N] float64, |H - H_exact| <= this, entrywise
    chi: torch.Tensor | None = field(default=None, repr=False)  # [N, P] solutions


def _predict(model, inputs, chunk: int = 16) -> torch.Tensor:
    with torch.no_grad(), _grad.math_attention():
        out = torch.cat([model(inputs[i:i + chunk]) for i in range(0, inputs.shape[0], chunk)])
    if out.shape != inputs.shape:
        raise InputError(f"model: outputs have shape {tuple(out.shape[1:])} per example, inputs {tuple(inputs.shape[1:])}")
    return out


def _residual_vjps(model, inputs, residuals, params, layout, support=None) -> torch.Tensor:
    """Rows J_n(x_n)^T r_n `[N, P]` (one VJP per example, vmapped)."""
    grads, _ = _grad.per_example_gradients(model, inputs, residuals, lambda x, r, pred: (pred * r).sum(),
                                           chunk=8, params=params, layout=layout, support=support)
    return grads


def _solve(operator: GaussNewtonOperator, kets, targets, *, damping, rtol, maxiter, residual, solver,
           stopping, state_path, checkpoint_every, progress, max_basis):
    """`CGResult` of (J^T J + damping I) chi_m = g_m for the kets `[N, P]`, resumed from and
    saved to `state_path` when given; warns when a column did not converge."""
    path = Path(state_path) if state_path is not None else None
    key, resume = "", None
    if path is not None:
        h = hashlib.sha256()
        for t in (operator.inputs, targets, *operator.params.values()):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        h.update(repr((float(damping), residual, solver)).encode())
        key = h.hexdigest()
    if path is not None and path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise InputError(f"state_path={str(path)!r}: not a readable full-space solver state "
                             f"({exc})") from None
        if saved.get("key") != key:
            raise InputError(f"state_path={str(path)!r}: holds the state of another solve (different "
                             "inputs, targets, parameters, damping, residual or solver); delete it or pass "
                             "another path")
        resume = saved["state"]
    column_tol = None
    if stopping == "authors":
        norms = kets.to(torch.float64).norm(dim=1)
        column_tol = float(rtol) * norms.norm() / norms.clamp_min(1e-300)
    save = lambda s: atomic_write(path, lambda tmp: torch.save({"key": key, "state": s}, tmp))
    common = {"rtol": float(rtol), "maxiter": maxiter, "resume": resume, "column_tol": column_tol,
              "checkpoint": save if path is not None else None, "checkpoint_every": checkpoint_every,
              "progress": progress}
    if solver == "block":
        solved = block_galerkin(operator, kets, lower_bound=float(damping), max_basis=max_basis, **common)
    else:
        solved = batched_cg(operator, kets, **common)
    if not bool(solved.converged.all()):
        bad = int((~solved.converged).sum())
        warnings.warn(f"full-space solve: {bad} of {kets.shape[0]} right-hand sides did not reach "
                      f"rtol={rtol} within maxiter={maxiter} (largest relative residual "
                      f"{float(solved.residual_norms.max()):.3e})", stacklevel=_grad.caller_level())
    return solved


@keeps_model
def full_space_hat_matrix(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                          damping: float = 1e-4, rtol: float = 1.5e-2, maxiter: int | None = None,
                          response=None, response_transform: Callable | None = None,
                          target_transform: Callable | None = None, residual: str = "smse",
                          progress: bool = False, state_path: str | Path | None = None,
                          pde: str | None = None, pair_budget: int = PAIR_BUDGET,
                          checkpoint_every: int = CHECKPOINT_EVERY,
                          stopping: str = "per-column", solver: str = "block", max_basis: int | None = None,
                          reference_rtol: float | None = None) -> FullSpaceResult:
    """Seed-paper influence matrix H `[N, N]` (rows = response n, columns = perturbation m) of
    inputs, targets `[N, C, H, W]` (cast to the model dtype); module docstring.

    damping: lambda > 0. rtol, maxiter: per column (maxiter None: DEFAULT_MAXITER). response,
    response_transform, target_transform: as `hat.hat_matrix`. residual: the ket, "smse" or
    "mse" (f - y). state_path: iterate state saved every `checkpoint_every` sweeps; a rerun
    with the same path and inputs resumes. pde: the PDESpec of the mass / energy channels.
    stopping: "per-column" or "authors" (one absolute threshold rtol ||[g_1 ... g_N]||_F).
    solver: "block" or "cg" (max_basis: the block basis size, None: from free memory).
    `.converged` flags unconverged columns (with a warning); `.error_bound` >= |H - H_exact|.
    reference_rtol: also solve to it; `.attrs["distance_to_reference"]` = max |H - H_ref| / max |H_ref|.
    """
    if reference_rtol is not None and not (isinstance(reference_rtol, (int, float))
                                           and 0.0 < reference_rtol < rtol):
        raise InputError(f"reference_rtol={reference_rtol!r}: expected a number in (0, rtol={rtol!r})")
    _grad.check_model_mode(model)
    params, layout = _grad.trainable_parameters(model)
    dtype = _grad.real_dtype(params, layout.complex_names)
    inputs, targets = _grad.check_batch(inputs, targets, dtype)
    damping = finite_float(damping, "damping", positive=True)
    one_of(residual, RESIDUALS, "residual")
    function = _obs.resolve(response)  # unknown names fail before any work
    if function in (_obs.mass_drift, _obs.energy_drift):
        _conserved_channel(function.__name__, inputs.shape[1], pde)
    maxiter = DEFAULT_MAXITER if maxiter is None else maxiter
    check_rtol_maxiter(rtol, maxiter)
    one_of(stopping, STOPPING_RULES, "stopping")
    one_of(solver, SOLVERS, "solver")
    n = inputs.shape[0]
    _grad.check_memory(3 * n, n, torch.float64, "N x N matrices (Gram, Pi, its error bound)", "inputs")
    _grad.check_memory(3 * n, layout.size, dtype, "kets, bras and solutions (3 N x P)")
    _grad.check_model_output(model, inputs)

    # kets g_m = J_m^T r_m of the chosen residual
    pred = _predict(model, inputs)
    ket_r = smse_residual(pred, targets) if residual == "smse" else pred - targets
    losses = (smse_residual(pred, targets) * (pred - targets)).mean(dim=(1, 2, 3)).to(torch.float64)
    support = _grad.FuncSupport(type(model).__name__)
    kets = _residual_vjps(model, inputs, ket_r, params, layout, support)  # [N, P] rows g_m
    if not torch.isfinite(kets).all():
        raise NumericalError("full-space solve: the ket gradients J^T r contain NaN or Inf")
    operator = GaussNewtonOperator(model, inputs, params, layout, damping, pair_budget, support)
    solved = _solve(operator, kets, targets, damping=damping, rtol=rtol, maxiter=maxiter,
                    residual=residual, solver=solver, stopping=stopping, state_path=state_path,
                    checkpoint_every=checkpoint_every, progress=progress, max_basis=max_basis)
    # bras J_n(x'_n)^T r^A_n at the (transformed) batch; the kets when the bra is the SMSE ket
    bra_inputs, bra_targets = inputs, targets
    if response_transform is not None or target_transform is not None:
        bra_inputs, bra_targets = _grad.transformed_batch(inputs, targets, response_transform,
                                                          target_transform)
        pred = _predict(model, bra_inputs)
    bras = kets
    if not (function is _obs.smse and bra_inputs is inputs and residual == "smse"):
        bra_r = bra_residual(function, bra_inputs, bra_targets, pred, pde=pde)
        bras = _residual_vjps(model, bra_inputs, bra_r, params, layout, support)
    per_example = inputs[0].numel()  # C H W
    pi = cross_gram(bras, solved.x) / per_example
    if not torch.isfinite(pi).all():
        raise NumericalError("full-space solve: the influence matrix contains NaN or Inf")
    residual_abs = solved.residual_norms * kets.to(torch.float64).norm(dim=1)
    bound = bras.to(torch.float64).norm(dim=1)[:, None] * residual_abs[None, :] / (damping * per_example)
    gram = cross_gram(kets, kets)
    singular = torch.linalg.eigvalsh(0.5 * (gram + gram.T)).flip(0).clamp_min(0).sqrt()
    numerical_rank = int((singular > singular[0] * len(singular) * 1e-8).sum()) if singular[0] > 0 else 0

    name = response if isinstance(response, str) else getattr(response, "__name__", "smse")
    result = FullSpaceResult(
        pi, numerical_rank, torch.zeros(0, dtype=torch.float64), losses, singular, "gauss-newton",
        float(damping), 0.0, response=name or "smse",
        attrs={"estimator": "full-space", "rtol": float(rtol), "residual": residual, "solver": solver},
        iterations=solved.iterations, matvecs=solved.matvecs, sweeps=solved.sweeps,
        residual_norms=solved.residual_norms, converged=solved.converged, chi=solved.x, error_bound=bound)
    if reference_rtol is not None:
        reference = full_space_hat_matrix.__wrapped__(
            model, inputs, targets, rtol=reference_rtol, damping=damping, maxiter=maxiter, response=response,
            response_transform=response_transform, target_transform=target_transform, residual=residual,
            pde=pde, pair_budget=pair_budget, stopping=stopping, solver=solver, max_basis=max_basis)
        scale = float(reference.pi.abs().max())
        distance = float((result.pi - reference.pi).abs().max()) / scale if scale > 0 else 0.0
        result.attrs.update({"reference_rtol": float(reference_rtol), "distance_to_reference": distance,
                             "reference_converged": bool(reference.converged.all())})
    return result


def lambda_sweep(model, inputs, targets, lambdas, rtol: float = 1.5e-2, **kwargs):
    """xr.Dataset over `lambda` (the dampings): pi (raw H), offdiagonal_mass, max_residual,
    iterations_max, matvecs; kwargs go to `full_space_hat_matrix` (not state_path)."""
    import xarray as xr

    values = [float(v) for v in np.atleast_1d(np.asarray(lambdas, dtype=float))]
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise InputError(f"lambdas={lambdas!r}: expected one or more finite numbers > 0")
    if "state_path" in kwargs:
        raise InputError("state_path: not supported by lambda_sweep (one state per damping)")
    results = [full_space_hat_matrix(model, inputs, targets, damping=v, rtol=rtol, **kwargs) for v in values]
    n = results[0].pi.shape[0]
    data = {"pi": (("lambda", "n_resp", "n_pert"), np.stack([r.pi.numpy() for r in results])),
            "offdiagonal_mass": ("lambda", np.array([offdiagonal_mass(r.pi) for r in results])),
            "max_residual": ("lambda", np.array([float(r.residual_norms.max()) for r in results])),
            "iterations_max": ("lambda", np.array([int(r.iterations.max()) for r in results])),
            "matvecs": ("lambda", np.array([r.matvecs for r in results]))}
    return xr.Dataset(data, coords={"lambda": values, "n_resp": np.arange(n), "n_pert": np.arange(n)},
                      attrs={"estimator": "full-space", "rtol": float(rtol),
                             "residual": kwargs.get("residual", "smse")})
