"""Normalisations of influence matrices (docs/method.md section 5).

Rows index the response example n, columns the perturbing example m, any leading batch dims.
Kinds: none; standard (each row by its std over m, ddof=1 as the authors' Julia `std`); cosine
(Pi[n, m] / sqrt(Pi[n, n] Pi[m, m])); row (/ Pi[m, m]); column (/ Pi[n, n]); trace (/ the mean
diagonal); loss (each row by the response's loss). A zero denominator gives inf/nan (IEEE).
"""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.errors import InputError

_KINDS = {  # (pi [..., N, N], its diagonal [..., N], losses [..., N]) -> normalised pi
    "none": lambda pi, diag, losses: pi.copy(),
    "standard": lambda pi, diag, losses: pi / np.std(pi, axis=-1, ddof=1, keepdims=True),
    "cosine": lambda pi, diag, losses: pi / np.sqrt(diag[..., :, None] * diag[..., None, :]),
    "row": lambda pi, diag, losses: pi / diag[..., None, :],
    "column": lambda pi, diag, losses: pi / diag[..., :, None],
    "trace": lambda pi, diag, losses: pi / (diag.mean(axis=-1)[..., None, None]),
    "loss": lambda pi, diag, losses: pi / losses[..., :, None],
}
NORMALIZATIONS: tuple[str, ...] = tuple(_KINDS)


def normalize(pi, kind: str, *, losses=None):
    """Normalise `pi` `[..., N, N]` (numpy array or torch tensor; same type and shape back);
    `losses` `[..., N]` is required for kind="loss"."""
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
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _KINDS[kind](arr, np.diagonal(arr, axis1=-2, axis2=-1), loss_arr)
    if is_torch:
        return torch.as_tensor(out, dtype=pi.dtype if pi.is_floating_point() else torch.float64).to(pi.device)
    return out
