"""Response observables ("bras"): per-example scalars `(input [C,H,W], target [C,H,W],
prediction [C,H,W]) -> scalar` (vmapped over the batch) whose gradients replace the SMSE rows
of Pi; the perturbation ("ket") is always the SMSE gradient (hat.py).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.training.loss import SMSE_EPS
from pdeinf.training.loss import smse as _batched_smse

#: The conserved channels the drift observables read (PDESpec of CE: rho, rho*vx, rho*vy, E).
CE_DENSITY, CE_ENERGY = pde_spec("CE").density_channel, pde_spec("CE").energy_channel


def smse(inputs: torch.Tensor, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The training loss of one example (`pdeinf.training.loss.smse`)."""
    return _batched_smse(pred.unsqueeze(0), target.unsqueeze(0)).squeeze(0)


def relative_drift(inputs: torch.Tensor, pred: torch.Tensor, channel: int) -> torch.Tensor:
    """`(M[pred] - M[x]) / (M[x] + 1e-6)` `[...]`, `M[z] = sum_xy z[..., channel, :, :]` (the
    input is the reference: the papers' r^M / r^E)."""
    before = inputs[..., channel, :, :].sum(dim=(-2, -1))
    after = pred[..., channel, :, :].sum(dim=(-2, -1))
    return (after - before) / (before + SMSE_EPS)


def _relative_drift(channel: int, name: str, squared: bool = False):
    """The observable `relative_drift` on `channel`, or `d^2 / 2` (gradient `d grad d`: the
    papers' squared-drift bra)."""

    def drift(inputs: torch.Tensor, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        if pred.shape[-3] <= channel:
            raise InputError(f"observable {name!r}: needs CE conserved channels (rho, rho_vx, rho_vy, E); "
                             f"got {pred.shape[-3]} channels")
        d = relative_drift(inputs, pred, channel)
        return 0.5 * d * d if squared else d

    drift.__name__ = name
    what = "half the squared relative drift" if squared else "relative drift"
    drift.__doc__ = f"{what} of sum_xy z[{channel}] from the input to the prediction (CE)."
    return drift


mass_drift = _relative_drift(CE_DENSITY, "mass_drift")
energy_drift = _relative_drift(CE_ENERGY, "energy_drift")
mass_drift_sq = _relative_drift(CE_DENSITY, "mass_drift_sq", squared=True)
energy_drift_sq = _relative_drift(CE_ENERGY, "energy_drift_sq", squared=True)

OBSERVABLES: dict[str, Callable] = {f.__name__: f for f in (smse, mass_drift, energy_drift, mass_drift_sq,
                                                             energy_drift_sq)}


def resolve(observable) -> Callable:
    """A name in OBSERVABLES or a callable -> the callable; InputError otherwise."""
    if observable is None:
        return smse
    if callable(observable):
        return observable
    try:
        return OBSERVABLES[observable]
    except (KeyError, TypeError):
        raise InputError(f"response={observable!r}: unknown observable; expected one of "
                         f"{', '.join(OBSERVABLES)} or a callable (input, target, prediction) -> "
                         "scalar") from None
