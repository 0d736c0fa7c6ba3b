"""Spectral summaries of the restricted Gauss-Newton metric eta (the NTK on the gradient span)."""
from __future__ import annotations

import numpy as np
import torch


def _finite(values, absolute: bool = True) -> np.ndarray:
    """The finite values (absolute values) of a tensor or array, float64."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    ev = np.asarray(values, dtype=np.float64)
    ev = np.abs(ev) if absolute else ev
    return ev[np.isfinite(ev)]


def condition_number(eigenvalues, damping: float = 0.0) -> float:
    """(max + damping) / (min + damping) over the finite eigenvalues; inf if the min is <= 0."""
    ev = _finite(eigenvalues, absolute=False) + damping
    if ev.size == 0:
        return float("nan")
    lo = ev.min()
    return float(ev.max() / lo) if lo > 0 else float("inf")


def effective_rank(eigenvalues) -> float:
    """Entropy effective rank exp(H(p)), p_i = |l_i| / sum |l| (Roy & Vetterli 2007): k for k
    equal non-zero eigenvalues, 1 for a single dominant mode."""
    ev = _finite(eigenvalues)
    ev = ev[ev > 0]
    if ev.size == 0:
        return 0.0
    p = ev / ev.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(eigenvalues) -> float:
    """(sum l)^2 / sum l^2, another effective dimension (k for k equal modes)."""
    ev = _finite(eigenvalues)
    s2 = (ev**2).sum()
    return float(ev.sum() ** 2 / s2) if s2 > 0 else 0.0
