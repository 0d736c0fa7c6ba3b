"""Normalisations of influence matrices (docs/method.md section 5).

Rows index the response example n, columns the perturbing example m; any leading batch dims.
- none:     Pi unchanged;
- standard: each row divided by its standard deviation over the perturbing examples (ddof=1,
            the corrected estimator, as Julia's `std` that the authors used);
- cosine:   Pi[n, m] / sqrt(Pi[n, n] Pi[m, m]);
- row:      Pi[n, m] / Pi[m, m] (the perturbing example's diagonal entry);
- column:   Pi[n, m] / Pi[n, n] (the response example's diagonal entry);
- trace:    Pi / (trace(Pi) / N);
- loss:     each row divided by the response example's loss, `losses[..., n]`.
A zero denominator gives inf/nan (IEEE), never an exception: it marks a degenerate example.
"""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.errors import InputError

NORMALIZATIONS: tuple[str, ...] = ("none", "standard", "cosine", "row", "column", "trace", "loss")


def _normalize_numpy(pi: np.ndarray, kind: str, losses: np.ndarray | None) -> np.ndarray:
    diag = np.diagonal(pi, axis1=-2, axis2=-1)  # [..., N]
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "none":
            return pi.copy()
        if kind == "standard":
            return pi / np.std(pi, axis=-1, ddof=1, keepdims=True)
        if kind == "cosine":
            return pi / np.sqrt(diag[..., :, None] * diag[..., None, :])
        if kind == "row":
            return pi / diag[..., None, :]
        if kind == "column":
            return pi / diag[..., :, None]
        if kind == "trace":
            return pi / (diag.mean(axis=-1)[..., None, None])
        if kind == "loss":
            return pi / losses[..., :, None]
    raise AssertionError(kind)


def normalize(pi, kind: str, *, losses=None):
    """Normalise `pi` `[..., N, N]` (numpy array or torch tensor); returns the same type/shape.

    `losses` `[..., N]` (same type family accepted) is required for kind="loss".
    """
    if kind not in NORMALIZATIONS:
        raise InputError(f"kind={kind!r}: unknown normalisation; expected one of {', '.join(NORMALIZATIONS)}")
    is_torch = isinstance(pi, torch.Tensor)
    arr = pi.detach().cpu().numpy() if is_torch else np.asarray(pi)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise InputError(f"pi: expected shape [..., N, N], got {tuple(arr.shape)}")
    loss_arr = None
    if kind == "loss":
        if losses is None:
            raise InputError("losses: required for kind='loss'")
        loss_arr = losses.detach().cpu().numpy() if isinstance(losses, torch.Tensor) else np.asarray(losses)
        if loss_arr.shape != arr.shape[:-1]:
            raise InputError(f"losses: expected shape {tuple(arr.shape[:-1])}, got {tuple(loss_arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    out = _normalize_numpy(arr, kind, loss_arr)
    if is_torch:
        return torch.as_tensor(out, dtype=pi.dtype if pi.is_floating_point() else torch.float64).to(pi.device)
    return out
