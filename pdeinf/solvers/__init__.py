"""Batched PDE solvers (compressible Euler, incompressible Navier-Stokes), the exact Riemann
solution, the initial-condition samplers of the data sets, the solvers' checks and error."""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.checks import finite_float
from pdeinf.errors import InputError, NumericalError


class SolverError(NumericalError):
    """A solution left the physical state space (non-finite, or Euler's rho or p not positive)
    or needed more steps than allowed."""


def check_times(t_out, t0: float = 0.0, *, from_t0: bool = False) -> np.ndarray:
    """`t_out` as a float64 array: non-empty, 1-D, finite, strictly increasing and >= `t0`
    (starting exactly at `t0` when `from_t0`)."""
    try:
        times = np.asarray(t_out.detach().cpu() if isinstance(t_out, torch.Tensor) else t_out,
                           dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"t_out: expected a 1-D sequence of times, got {t_out!r}") from None
    if times.ndim != 1 or times.size == 0:
        raise InputError(f"t_out: expected a non-empty 1-D sequence, got shape {times.shape}")
    if not np.isfinite(times).all():
        raise InputError("t_out: contains NaN or Inf")
    if times[0] < t0 or (from_t0 and times[0] != t0):
        raise InputError(f"t_out: must start at {'' if from_t0 else 'or after '}t0={t0}, "
                         f"starts at {times[0]}")
    if np.any(np.diff(times) <= 0):
        raise InputError("t_out: times must be strictly increasing")
    return times


def check_domain(domain) -> tuple[float, float]:
    """`(Lx, Ly)`: two positive finite box lengths."""
    try:
        lx, ly = domain
    except (TypeError, ValueError):
        raise InputError(f"domain: expected (Lx, Ly), got {domain!r}") from None
    return (finite_float(lx, "domain[0] (Lx)", positive=True),
            finite_float(ly, "domain[1] (Ly)", positive=True))
