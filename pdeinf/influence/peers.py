"""Set-up for cross-checking the Gauss-Newton hat matrix with pyDVL (optional `peers` extra).

pyDVL's `grad l_n^T (H + lambda I)^{-1} grad l_m` equals our Pi exactly on (1) the subspace
model theta_0 + Q alpha (gradients Gp, restricted curvature) with (2) the loss `mean w (f - y)^2`,
targets `[y, w]`: fitted on y = f(x), w = 1/2 its Hessian is eta_raw; on the real targets with
w = 1 / s_c it is SMSE. (pyDVL's GAUSS_NEWTON mode is the empirical Fisher, influence-peers.md.)
"""
from __future__ import annotations

import torch
from torch import nn

from pdeinf.checks import one_of
from pdeinf.errors import InputError
from pdeinf.influence.gradients import math_attention, trainable_parameters
from pdeinf.influence.hat import GradientSpan
from pdeinf.training.loss import channel_scale

PYDVL_METHODS: tuple[str, ...] = ("cg", "cg-block", "direct")


class SubspaceModel(nn.Module):
    """`x -> f(x; theta_0 + Q alpha)` with one trainable parameter `alpha` `[r]` (at 0), basis_rows
    Q^T `[r, P]`; the base model stays outside the module tree (`named_parameters()`: alpha)."""

    def __init__(self, base: nn.Module, basis_rows: torch.Tensor):
        super().__init__()
        params, layout = trainable_parameters(base)
        if basis_rows.ndim != 2 or basis_rows.shape[1] != layout.size:
            raise InputError(f"basis_rows: expected shape [r, {layout.size}], got {tuple(basis_rows.shape)}")
        self.__dict__["_base"] = base  # not registered as a submodule
        self._layout, self._theta0, self._rows = layout, layout.flatten(params), basis_rows.detach()
        self._base_buffers = dict(base.named_buffers())
        self.alpha = nn.Parameter(torch.zeros(basis_rows.shape[0], dtype=basis_rows.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self._layout.unflatten(self._theta0 + self.alpha @ self._rows)
        return torch.func.functional_call(self._base, (weights, self._base_buffers), (x,))


def weighted_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`mean_{b,c,x,y} w (f - y)^2` for outputs `[B, C, H, W]`, targets `[B, 2C, H, W]` = [y, w]."""
    c = outputs.shape[1]
    return (targets[:, c:] * (outputs - targets[:, :c]).pow(2)).mean()


def smse_targets(targets: torch.Tensor) -> torch.Tensor:
    """`[y, 1/s_c]` `[N, 2C, H, W]`: weighted_squared_error per example is then SMSE."""
    weight = (1.0 / channel_scale(targets))[:, :, None, None].expand_as(targets)
    return torch.cat([targets, weight], dim=1)


def pydvl_hat_matrix(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, span: GradientSpan, *,
                     damping: float, method: str = "cg-block", fit_batch: int | None = None,
                     rtol: float = 1e-7, maxiter: int | None = None) -> torch.Tensor:
    """pyDVL's influence matrix `[N, N]` float64 on the subspace model of the engine's `span` (then
    `hat_matrix(..., damping=damping).pi` to its tolerance). method: "cg", "cg-block" (all N at
    once) or "direct" (dense r x r). fit_batch: a divisor of N. CG: atol 0, `rtol`, at most
    `maxiter` (default 10 r) iterations. ImportError without pyDVL."""
    from pydvl.influence.torch import CgInfluence, DirectInfluence
    from torch.utils.data import DataLoader, TensorDataset

    one_of(method, PYDVL_METHODS, "method")
    n = inputs.shape[0]
    fit_batch = n if fit_batch is None else int(fit_batch)
    if fit_batch <= 0 or n % fit_batch:
        raise InputError(f"fit_batch={fit_batch!r}: must be a positive divisor of N = {n}")
    r = span.rank
    alpha_model = SubspaceModel(model, span.basis_rows(slice(0, r)))
    with torch.no_grad():
        outputs = model(inputs)
    fit_targets = torch.cat([outputs, torch.full_like(outputs, 0.5)], dim=1)
    loader = DataLoader(TensorDataset(inputs, fit_targets), batch_size=fit_batch)
    if method == "direct":
        influence = DirectInfluence(alpha_model, weighted_squared_error, regularization=damping)
    else:
        influence = CgInfluence(alpha_model, weighted_squared_error, regularization=damping, rtol=rtol,
                                atol=0.0, maxiter=maxiter or 10 * r,
                                solve_simultaneously=(method == "cg-block"))
    labelled = smse_targets(targets)
    with math_attention():  # the fused CPU attention kernels have no double backward either
        influence = influence.fit(loader)
        pi = influence.influences(inputs, labelled, inputs, labelled)
    return pi.detach().to(torch.float64)
