"""Exact solution of the 1D ideal-gas Riemann problem (Toro, "Riemann Solvers and Numerical
Methods for Fluid Dynamics", ch. 4), the reference of the Euler solver's validation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdeinf.checks import finite_float
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
    """Star-region `(p_star, u_star)` of the Riemann problem of `left`, `right` = `(rho, u, p)`
    (Newton iteration on f_L(p) + f_R(p) + u_R - u_L = 0). InputError when the data generate
    vacuum (2 (c_L + c_R) / (gamma - 1) <= u_R - u_L)."""
    gamma = finite_float(gamma, "gamma", above=1.0)
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
    p = max(0.5 * (p_l + p_r) - 0.125 * du * (rho_l + rho_r) * (c_l + c_r), 1e-8 * min(p_l, p_r))
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
    """Exact self-similar solution `(rho, u, p)` (float64, shape of `x_over_t`) at `x/t` for the
    states `left`, `right` = `(rho, u, p)` either side of x = 0. Vacuum raises InputError."""
    p_star, u_star = star_state(left, right, gamma)
    s = np.asarray(x_over_t, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise InputError("x_over_t: contains NaN or Inf")
    rho_l, u_l, p_l = (float(v) for v in left)
    rho_r, u_r, p_r = (float(v) for v in right)
    g = float(gamma)
    left_wave = _left_wave(s, rho_l, u_l, p_l, p_star, u_star, g)
    # the right wave is the left wave of the mirrored problem (x -> -x, u -> -u), exactly
    rho, u, p = _left_wave(-s, rho_r, -u_r, p_r, p_star, -u_star, g)
    on_left = s <= u_star
    return (np.where(on_left, left_wave[0], rho), np.where(on_left, left_wave[1], -u),
            np.where(on_left, left_wave[2], p))


def _left_wave(s, rho_k, u_k, p_k, p_star, u_star, g):
    """`(rho, u, p)` at `x/t = s` of the left state, its wave (shock or rarefaction fan, Toro
    4.4) and the star state, as if nothing were beyond the contact."""
    c_k = np.sqrt(g * p_k / rho_k)
    ones = np.ones_like(s)
    state = (rho_k * ones, u_k * ones, p_k * ones)
    if p_star > p_k:  # shock
        ratio = p_star / p_k
        gm = (g - 1.0) / (g + 1.0)
        speed = u_k - c_k * np.sqrt((g + 1.0) / (2.0 * g) * ratio + (g - 1.0) / (2.0 * g))
        star = (rho_k * (ratio + gm) / (gm * ratio + 1.0), u_star, p_star)
        inside = s > speed
    else:  # rarefaction
        star = (rho_k * (p_star / p_k) ** (1.0 / g), u_star, p_star)
        c_star = c_k * (p_star / p_k) ** ((g - 1.0) / (2.0 * g))
        head, tail = u_k - c_k, u_star - c_star
        base = 2.0 / (g + 1.0) + (g - 1.0) / ((g + 1.0) * c_k) * (u_k - s)
        fan_state = (rho_k * np.abs(base) ** (2.0 / (g - 1.0)),
                     2.0 / (g + 1.0) * (c_k + 0.5 * (g - 1.0) * u_k + s),
                     p_k * np.abs(base) ** (2.0 * g / (g - 1.0)))
        fan, inside = s > head, s > tail
        state = tuple(np.where(fan, f, q) for f, q in zip(fan_state, state))
    return tuple(np.where(inside, r, q) for r, q in zip(star, state))
