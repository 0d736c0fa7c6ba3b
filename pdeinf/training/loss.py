"""Per-example losses and metrics of `pred`, `target` `[B, C, *spatial]` -> `[B]` (or `[B, C]`).

SMSE (docs/method.md section 2), the training loss and the influence cost:
    s_c  = sqrt(mean_{x,y} target_c^2) + 1e-6          (channel RMS of the target)
    SMSE = mean_{c,x,y} (pred - target)^2 / s_c
divided by the channel RMS, not the mean square (the authors' choice: SMSE has the units of the
field).
"""
from __future__ import annotations

import torch

SMSE_EPS = 1e-6


def _spatial_dims(x: torch.Tensor, pred: torch.Tensor | None = None) -> tuple[int, ...]:
    """The spatial dims of `x` `[B, C, *spatial]`; ValueError unless `pred` (given) has its shape."""
    if pred is not None and pred.shape != x.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(x.shape)} differ in shape")
    if x.dim() < 3:
        raise ValueError(f"expected [B, C, *spatial], got shape {tuple(x.shape)}")
    return tuple(range(2, x.dim()))


def channel_scale(target: torch.Tensor, eps: float = SMSE_EPS) -> torch.Tensor:
    """`s_c = sqrt(mean_space target_c^2) + eps`, shape `[B, C]`."""
    return target.pow(2).mean(dim=_spatial_dims(target)).sqrt() + eps


def smse(pred: torch.Tensor, target: torch.Tensor, eps: float = SMSE_EPS) -> torch.Tensor:
    """Scaled MSE per example, `[B]` (see module docstring)."""
    dims = _spatial_dims(target, pred)
    per_channel = (pred - target).pow(2).mean(dim=dims) / channel_scale(target, eps)
    return per_channel.mean(dim=1)


def relative_l1(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """`sum |pred - target| / (sum |target| + eps)` over channels and space, per example `[B]`."""
    if pred.shape != target.shape:
        _spatial_dims(target, pred)  # raises the shape error
    dims = tuple(range(1, target.dim()))
    return (pred - target).abs().sum(dim=dims) / (target.abs().sum(dim=dims) + eps)


def vrmse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7, *,
          per_channel: bool = False) -> torch.Tensor:
    """The Well's VRMSE: `sqrt(mean_space (pred-target)^2 / (std_space(target)^2 + eps))`, std
    unbiased (N-1) as in the_well; `[B, C]` with `per_channel=True`, else averaged, `[B]`."""
    dims = _spatial_dims(target, pred)
    mse = (pred - target).pow(2).mean(dim=dims)
    var = target.flatten(2).var(dim=2, unbiased=True)
    out = (mse / (var + eps)).sqrt()
    return out if per_channel else out.mean(dim=1)
