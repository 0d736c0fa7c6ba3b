"""Per-example losses and reporting metrics. All take `pred`, `target` of shape `[B, C, H, W]`
(any number of trailing spatial dims >= 1) and return `[B]` (or `[B, C]` per channel).

SMSE (docs/method.md section 2), the training loss and the influence cost:
    s_c  = sqrt(mean_{x,y} target_c^2) + 1e-6          (channel RMS of the target)
    SMSE = mean_{c,x,y} (pred - target)^2 / s_c
The squared error is divided by the channel RMS, not by the mean square (the authors' choice,
kept as the default: SMSE therefore has the units of the field, not dimensionless).
"""
from __future__ import annotations

import torch

SMSE_EPS = 1e-6


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() < 3:
        raise ValueError(f"expected [B, C, *spatial], got shape {tuple(x.shape)}")
    return tuple(range(2, x.dim()))


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")


def channel_scale(target: torch.Tensor, eps: float = SMSE_EPS) -> torch.Tensor:
    """`s_c = sqrt(mean_space target_c^2) + eps`, shape `[B, C]`."""
    return target.pow(2).mean(dim=_spatial_dims(target)).sqrt() + eps


def smse(pred: torch.Tensor, target: torch.Tensor, eps: float = SMSE_EPS) -> torch.Tensor:
    """Scaled MSE per example, `[B]` (see module docstring)."""
    _check(pred, target)
    dims = _spatial_dims(target)
    per_channel = (pred - target).pow(2).mean(dim=dims) / channel_scale(target, eps)
    return per_channel.mean(dim=1)


def relative_l1(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """`sum |pred - target| / (sum |target| + eps)` over channels and space, per example `[B]`."""
    _check(pred, target)
    dims = tuple(range(1, target.dim()))
    return (pred - target).abs().sum(dim=dims) / (target.abs().sum(dim=dims) + eps)


def vrmse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7, *,
          per_channel: bool = False) -> torch.Tensor:
    """The Well's VRMSE: `sqrt(mean_space (pred-target)^2 / (std_space(target)^2 + eps))`.

    std is the unbiased (N-1) estimator, as in the_well. Per example and channel `[B, C]`
    (`per_channel=True`), else averaged over channels, `[B]`.
    """
    _check(pred, target)
    dims = _spatial_dims(target)
    mse = (pred - target).pow(2).mean(dim=dims)
    var = target.flatten(2).var(dim=2, unbiased=True)
    out = (mse / (var + eps)).sqrt()
    return out if per_channel else out.mean(dim=1)
