"""Exact solution of the 1D Riemann problem for the ideal-gas Euler equations.

Follows Toro, "Riemann Solvers and Numerical Methods for Fluid Dynamics", ch. 4: a Newton
iteration for the star-region pressure p* (root of f_L(p) + f_R(p) + u_R - u_L = 0), then
sampling of the self-similar solution at x/t. Used as the reference for solver validation.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdeinf.errors import InputError, NumericalError


def _check_state(state: Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        rho, u, p = (float(v) for v in state)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected three numbers (rho, u, p), got {state!r}") from None
    if not all(np.isfinite([rho, u, p])):
        raise InputError(f"{name}: state (rho, u, p) = {state!r} is not finite")
    if rho <= 0.0 or p <= 0.0:
        raise InputError(f"{name}: density and pressure must be positive, got rho={rho}, p={p}")
    return rho, u, p


def _f_and_slope(p: float, rho_k: float, p_k: float, c_k: float, gamma: float) -> tuple[float, float]:
    """Toro's f_K(p) (velocity jump across the K wave) and its derivative df_K/dp."""
    if p > p_k:  # shock
        a_k = 2.0 / ((gamma + 1.0) * rho_k)
        b_k = (gamma - 1.0) / (gamma + 1.0) * p_k
        root = np.sqrt(a_k / (p + b_k))
        return (p - p_k) * root, root * (1.0 - 0.5 * (p - p_k) / (b_k + p))
    ratio = p / p_k  # rarefaction
    f = 2.0 * c_k / (gamma - 1.0) * (ratio ** ((gamma - 1.0) / (2.0 * gamma)) - 1.0)
    return f, ratio ** (-(gamma + 1.0) / (2.0 * gamma)) / (rho_k * c_k)


def star_state(left, right, gamma: float = 1.4, *, tol: float = 1e-14, max_iter: int = 100):
    """Star-region pressure and velocity `(p_star, u_star)` of the Riemann problem.

    `left`, `right` are `(rho, u, p)`. Raises InputError when the data generate vacuum
    (pressure positivity condition 2 (c_L + c_R) / (gamma - 1) <= u_R - u_L).
    """
    gamma = float(gamma)
    if not np.isfinite(gamma) or gamma <= 1.0:
        raise InputError(f"gamma: must be a finite number > 1, got {gamma}")
    rho_l, u_l, p_l = _check_state(left, "left")
    rho_r, u_r, p_r = _check_state(right, "right")
    c_l = np.sqrt(gamma * p_l / rho_l)
    c_r = np.sqrt(gamma * p_r / rho_r)
    if 2.0 * (c_l + c_r) / (gamma - 1.0) <= u_r - u_l:
        raise InputError(
            "left/right: these states generate vacuum (2 (c_L + c_R) / (gamma - 1) <= u_R - u_L); "
            "the vacuum Riemann problem is not supported"
        )
    du = u_r - u_l
    # Primitive-variable (linearised) guess, kept positive (Toro eq. 4.47).
    p = max(
        0.5 * (p_l + p_r) - 0.125 * du * (rho_l + rho_r) * (c_l + c_r),
        1e-8 * min(p_l, p_r),
    )
    for _ in range(max_iter):
        f_l, df_l = _f_and_slope(p, rho_l, p_l, c_l, gamma)
        f_r, df_r = _f_and_slope(p, rho_r, p_r, c_r, gamma)
        p_new = p - (f_l + f_r + du) / (df_l + df_r)
        if p_new <= 0.0:
            p_new = 0.5 * p  # Newton overshoot into p < 0: halve instead
        change = 2.0 * abs(p_new - p) / (p_new + p)
        p = p_new
        if change < tol:
            break
    else:
        raise NumericalError(f"star pressure Newton iteration did not converge in {max_iter} steps")
    f_l, _ = _f_and_slope(p, rho_l, p_l, c_l, gamma)
    f_r, _ = _f_and_slope(p, rho_r, p_r, c_r, gamma)
    return p, 0.5 * (u_l + u_r) + 0.5 * (f_r - f_l)


def exact_riemann(left, right, x_over_t, gamma: float = 1.4):
    """Exact self-similar solution of the Riemann problem at similarity coordinates `x/t`.

    `left`, `right`: `(rho, u, p)` on either side of the initial discontinuity at x = 0.
    `x_over_t`: array of any shape (units of velocity). Returns `(rho, u, p)` as float64
    arrays of the same shape. Vacuum-generating data raise InputError.
    """
    p_star, u_star = star_state(left, right, gamma)
    g = float(gamma)
    rho_l, u_l, p_l = (float(v) for v in left)
    rho_r, u_r, p_r = (float(v) for v in right)
    c_l = np.sqrt(g * p_l / rho_l)
    c_r = np.sqrt(g * p_r / rho_r)
    s = np.asarray(x_over_t, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise InputError("x_over_t: contains NaN or Inf")
    gm = (g - 1.0) / (g + 1.0)
    rho = np.empty_like(s)
    u = np.empty_like(s)
    p = np.empty_like(s)

    def assign(mask, r, v, q):
        rho[mask] = r if np.ndim(r) == 0 else r[mask]
        u[mask] = v if np.ndim(v) == 0 else v[mask]
        p[mask] = q if np.ndim(q) == 0 else q[mask]

    left_side = s <= u_star
    # ---- left wave
    if p_star > p_l:  # left shock
        ratio = p_star / p_l
        speed = u_l - c_l * np.sqrt((g + 1.0) / (2.0 * g) * ratio + (g - 1.0) / (2.0 * g))
        rho_star = rho_l * (ratio + gm) / (gm * ratio + 1.0)
        assign(left_side & (s <= speed), rho_l, u_l, p_l)
        assign(left_side & (s > speed), rho_star, u_star, p_star)
    else:  # left rarefaction
        rho_star = rho_l * (p_star / p_l) ** (1.0 / g)
        c_star = c_l * (p_star / p_l) ** ((g - 1.0) / (2.0 * g))
        head, tail = u_l - c_l, u_star - c_star
        base = 2.0 / (g + 1.0) + (g - 1.0) / ((g + 1.0) * c_l) * (u_l - s)
        fan_rho = rho_l * np.abs(base) ** (2.0 / (g - 1.0))
        fan_u = 2.0 / (g + 1.0) * (c_l + 0.5 * (g - 1.0) * u_l + s)
        fan_p = p_l * np.abs(base) ** (2.0 * g / (g - 1.0))
        assign(left_side & (s <= head), rho_l, u_l, p_l)
        assign(left_side & (s > head) & (s <= tail), fan_rho, fan_u, fan_p)
        assign(left_side & (s > tail), rho_star, u_star, p_star)
    # ---- right wave
    right_side = ~left_side
    if p_star > p_r:  # right shock
        ratio = p_star / p_r
        speed = u_r + c_r * np.sqrt((g + 1.0) / (2.0 * g) * ratio + (g - 1.0) / (2.0 * g))
        rho_star = rho_r * (ratio + gm) / (gm * ratio + 1.0)
        assign(right_side & (s >= speed), rho_r, u_r, p_r)
        assign(right_side & (s < speed), rho_star, u_star, p_star)
    else:  # right rarefaction
        rho_star = rho_r * (p_star / p_r) ** (1.0 / g)
        c_star = c_r * (p_star / p_r) ** ((g - 1.0) / (2.0 * g))
        head, tail = u_r + c_r, u_star + c_star
        base = 2.0 / (g + 1.0) - (g - 1.0) / ((g + 1.0) * c_r) * (u_r - s)
        fan_rho = rho_r * np.abs(base) ** (2.0 / (g - 1.0))
        fan_u = 2.0 / (g + 1.0) * (-c_r + 0.5 * (g - 1.0) * u_r + s)
        fan_p = p_r * np.abs(base) ** (2.0 * g / (g - 1.0))
        assign(right_side & (s >= head), rho_r, u_r, p_r)
        assign(right_side & (s < head) & (s >= tail), fan_rho, fan_u, fan_p)
        assign(right_side & (s < tail), rho_star, u_star, p_star)
    return rho, u, p
