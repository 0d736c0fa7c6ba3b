"""Set-up for cross-checking the Gauss-Newton hat matrix with pyDVL (optional `peers` extra).

pyDVL's influence models compute `Pi_pydvl[n, m] = grad l_n^T (H + lambda I)^{-1} grad l_m`
("up-weighting" mode, no minus sign) with H the Hessian of the batch-mean training loss,
averaged over the batches of the fit loader, and ONE loss callable `loss(outputs, targets)`
for both the Hessian and the per-sample gradients. Two reductions make that our quantity
`Pi = Gp^T (eta_raw + lambda I)^{-1} Gp` (hat.py) exactly, not approximately:

1. Subspace ("alpha") model: theta = theta_0 + Q alpha with alpha in R^r at 0, Q the
   engine's basis of the gradient span. Then d f / d alpha = J Q, the per-example gradients
   in alpha are the coordinates Gp, and the curvature in alpha is the restricted one.
2. Weighted squared error with the weights carried in the targets,
   `loss = mean_{b,c,x,y} w (f - y)^2` with targets `[y, w]` stacked on the channel axis:
   - fitted on zero-residual targets y = f(x) with w = 1/2, its Hessian is exactly the
     Gauss-Newton matrix (JQ)^T (JQ) / M of the plain MSE (the residual term vanishes),
     which is eta_raw (M = N*C*H*W when the fit batches have equal sizes);
   - evaluated on the real targets with w = 1 / s_c, the per-example value is SMSE, so the
     per-sample gradients are the SMSE gradients.
pyDVL's own `SecondOrderMode.GAUSS_NEWTON` is NOT used: it is the empirical Fisher (mean of
gradient outer products), with a normalisation defect (influence-peers.md section 7).
"""
from __future__ import annotations

import torch
from torch import nn

from pdeinf.errors import InputError
from pdeinf.influence.gradients import math_attention, trainable_parameters
from pdeinf.influence.hat import GradientSpan

PYDVL_METHODS: tuple[str, ...] = ("cg", "cg-block", "direct")


class SubspaceModel(nn.Module):
    """`x -> f(x; theta_0 + Q alpha)` with one trainable parameter `alpha` `[r]` (at 0).

    basis_rows: Q^T `[r, P]` (rows q_a, in the order of the base model's trainable
    parameters). The base model is kept outside the module tree, so libraries that walk
    `named_parameters()` see only `alpha`.
    """

    def __init__(self, base: nn.Module, basis_rows: torch.Tensor):
        super().__init__()
        params, layout = trainable_parameters(base)
        if basis_rows.ndim != 2 or basis_rows.shape[1] != layout.size:
            raise InputError(
                f"basis_rows: expected shape [r, {layout.size}], got {tuple(basis_rows.shape)}"
            )
        self.__dict__["_base"] = base  # not registered as a submodule
        self._layout = layout
        self._theta0 = layout.flatten(params)
        self._rows = basis_rows.detach()
        self._base_buffers = dict(base.named_buffers())
        self.alpha = nn.Parameter(torch.zeros(basis_rows.shape[0], dtype=basis_rows.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self._theta0 + self.alpha @ self._rows
        weights = self._layout.unflatten(theta)
        return torch.func.functional_call(self._base, (weights, self._base_buffers), (x,))


def weighted_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`mean_{b,c,x,y} w (f - y)^2` for outputs `[B, C, H, W]`, targets `[B, 2C, H, W]` = [y, w]."""
    c = outputs.shape[1]
    return (targets[:, c:] * (outputs - targets[:, :c]).pow(2)).mean()


def smse_targets(targets: torch.Tensor) -> torch.Tensor:
    """`[y, 1/s_c]` `[N, 2C, H, W]`: weighted_squared_error per example is then SMSE."""
    from pdeinf.training.loss import channel_scale

    weight = (1.0 / channel_scale(targets))[:, :, None, None].expand_as(targets)
    return torch.cat([targets, weight], dim=1)


def pydvl_hat_matrix(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    span: GradientSpan,
    *,
    damping: float,
    method: str = "cg-block",
    fit_batch: int | None = None,
    rtol: float = 1e-7,
    maxiter: int | None = None,
) -> torch.Tensor:
    """pyDVL's influence matrix `[N, N]` (float64) of the batch on the subspace model.

    Equal to `hat_matrix(model, inputs, targets, damping=damping).pi` up to the solver's
    tolerance when `span` is the engine's span of the same batch. method: "cg" (one CG solve
    per right-hand side), "cg-block" (pyDVL's block CG, all N right-hand sides at once),
    "direct" (dense r x r Hessian, torch.linalg.solve). fit_batch: examples per Hessian
    batch; must divide N (equal batches keep the batch average equal to the mean over M).
    CG runs with atol = 0, relative tolerance `rtol` and at most `maxiter` (default 10 r)
    iterations. Raises ImportError when pyDVL's torch influence cannot be imported.
    """
    from pydvl.influence.torch import CgInfluence, DirectInfluence
    from torch.utils.data import DataLoader, TensorDataset

    if method not in PYDVL_METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(PYDVL_METHODS)}")
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
        influence = CgInfluence(
            alpha_model, weighted_squared_error, regularization=damping, rtol=rtol, atol=0.0,
            maxiter=maxiter or 10 * r, solve_simultaneously=(method == "cg-block"),
        )
    labelled = smse_targets(targets)
    with math_attention():  # the fused CPU attention kernels have no double backward either
        influence = influence.fit(loader)
        pi = influence.influences(inputs, labelled, inputs, labelled)
    return pi.detach().to(torch.float64)
