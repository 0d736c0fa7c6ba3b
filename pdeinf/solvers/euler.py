"""Batched 2D compressible Euler solver on a periodic rectangle (pure torch, CPU or GPU).

Finite volume, unsplit: MUSCL reconstruction of the primitive variables (rho, vx, vy, p)
with a TVD slope limiter, HLLC numerical fluxes (Toro, ch. 10), SSP-RK3 in time, and a
CFL-adaptive step that lands exactly on every requested output time. Ideal gas:
E = p / (gamma - 1) + rho |v|^2 / 2.

Layout: conserved variables `[B, 4, H, W]` = (rho, rho*vx, rho*vy, E); x runs along W
(the last axis), y along H. The domain `(Lx, Ly)` is `[0, Lx) x [0, Ly)` with cell sizes
`dx = Lx / W`, `dy = Ly / H` and cell centres at `(i + 1/2) dx`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.errors import InputError

__all__ = ["SolverError", "solve", "primitive_to_conserved", "conserved_to_primitive", "LIMITERS"]

LIMITERS = ("mc", "minmod", "vanleer")
_X_DIM, _Y_DIM = -1, -2  # tensor axes of x and y in [B, H, W] fields


class SolverError(RuntimeError):
    """The solution left the physical state space (non-positive or non-finite rho or p)."""


def primitive_to_conserved(rho, vx, vy, p, gamma: float = 1.4) -> torch.Tensor:
    """Stack `(rho, rho*vx, rho*vy, E)` along a new channel axis: fields `[..., H, W]` -> `[..., 4, H, W]`."""
    rho, vx, vy, p = (torch.as_tensor(a) for a in (rho, vx, vy, p))
    energy = p / (gamma - 1.0) + 0.5 * rho * (vx * vx + vy * vy)
    return torch.stack([rho, rho * vx, rho * vy, energy], dim=-3)


def conserved_to_primitive(u: torch.Tensor, gamma: float = 1.4):
    """`[..., 4, H, W]` conserved -> `(rho, vx, vy, p)`, each `[..., H, W]`."""
    u = torch.as_tensor(u)
    rho, mx, my, energy = u.unbind(dim=-3)
    vx = mx / rho
    vy = my / rho
    p = (gamma - 1.0) * (energy - 0.5 * (mx * vx + my * vy))
    return rho, vx, vy, p


# ----------------------------------------------------------------------------- numerics


def _primitive_stack(u: torch.Tensor, gm1: float) -> torch.Tensor:
    """`[B, 4, H, W]` conserved -> `[B, 4, H, W]` primitive (rho, vx, vy, p)."""
    rho = u[:, 0]
    vx = u[:, 1] / rho
    vy = u[:, 2] / rho
    p = (u[:, 3] - 0.5 * (u[:, 1] * vx + u[:, 2] * vy)) * gm1
    return torch.stack([rho, vx, vy, p], dim=1)


def _limited_slope(w: torch.Tensor, dim: int, limiter: str) -> torch.Tensor:
    """Limited cell slope (per cell, undivided) of `w` along `dim`, periodic."""
    fwd = torch.roll(w, -1, dim) - w  # w[i+1] - w[i]
    bwd = torch.roll(fwd, 1, dim)  # w[i] - w[i-1]
    same_sign = (fwd * bwd) > 0
    if limiter == "minmod":
        mag = torch.minimum(fwd.abs(), bwd.abs())
    elif limiter == "mc":
        mag = torch.minimum(torch.minimum(fwd.abs(), bwd.abs()) * 2.0, (fwd + bwd).abs() * 0.5)
    else:  # van Leer: harmonic mean 2ab/(a+b) where ab > 0
        mag = 2.0 * (fwd * bwd).abs() / (fwd + bwd).abs().clamp_min(torch.finfo(w.dtype).tiny)
    return torch.where(same_sign, torch.copysign(mag, fwd), torch.zeros_like(mag))


def _hllc_flux(wl: torch.Tensor, wr: torch.Tensor, normal: int, gamma: float) -> torch.Tensor:
    """HLLC flux across faces with left/right primitive states `[B, 4, ...]`.

    `normal` is the channel of the face-normal velocity (1 for x faces, 2 for y faces).
    Returns the conserved-variable flux `[B, 4, ...]` in channel order (rho, mx, my, E).
    Wave speeds: Davis estimates S_L = min(un_L - c_L, un_R - c_R), S_R = max(un_L + c_L, un_R + c_R).
    """
    tangent = 3 - normal
    rho_l, un_l, ut_l, p_l = wl[:, 0], wl[:, normal], wl[:, tangent], wl[:, 3]
    rho_r, un_r, ut_r, p_r = wr[:, 0], wr[:, normal], wr[:, tangent], wr[:, 3]
    c_l = torch.sqrt(gamma * p_l / rho_l)
    c_r = torch.sqrt(gamma * p_r / rho_r)
    s_l = torch.minimum(un_l - c_l, un_r - c_r)
    s_r = torch.maximum(un_l + c_l, un_r + c_r)
    m_l = rho_l * (s_l - un_l)  # mass flux through the left wave, in its frame
    m_r = rho_r * (s_r - un_r)
    s_star = (p_r - p_l + un_l * m_l - un_r * m_r) / (m_l - m_r)

    # Only the side the contact moves away from contributes: F = F_K + S_K^- (U*_K - U_K)
    # with K = L and S^- = min(S_L, 0) when S* >= 0, else K = R and S^+ = max(S_R, 0).
    left = s_star >= 0
    rho = torch.where(left, rho_l, rho_r)
    un = torch.where(left, un_l, un_r)
    ut = torch.where(left, ut_l, ut_r)
    p = torch.where(left, p_l, p_r)
    s_k = torch.where(left, s_l, s_r)
    m_k = torch.where(left, m_l, m_r)
    s_weight = torch.where(left, s_l.clamp_max(0.0), s_r.clamp_min(0.0))

    kinetic = 0.5 * rho * (un * un + ut * ut)
    energy = p / (gamma - 1.0) + kinetic
    mass_flux = rho * un
    # U*_K - U_K, written so that S_K - S* never divides a difference of large numbers.
    ratio = m_k / (s_k - s_star)  # rho*_K
    d_rho = ratio - rho
    d_mn = ratio * s_star - mass_flux
    d_mt = d_rho * ut
    e_star = ratio * (energy / rho + (s_star - un) * (s_star + p / m_k))
    d_e = e_star - energy

    f_rho = mass_flux + s_weight * d_rho
    f_mn = mass_flux * un + p + s_weight * d_mn
    f_mt = mass_flux * ut + s_weight * d_mt
    f_e = un * (energy + p) + s_weight * d_e
    if normal == 1:
        return torch.stack([f_rho, f_mn, f_mt, f_e], dim=1)
    return torch.stack([f_rho, f_mt, f_mn, f_e], dim=1)


def _face_flux(w: torch.Tensor, dim: int, normal: int, gamma: float, limiter: str) -> torch.Tensor:
    """Flux through the face i+1/2 of every cell i along `dim`, `[B, 4, H, W]`."""
    half_slope = 0.5 * _limited_slope(w, dim, limiter)
    w_left = w + half_slope  # state just left of face i+1/2
    w_right = torch.roll(w - half_slope, -1, dim)  # state just right of face i+1/2
    return _hllc_flux(w_left, w_right, normal, gamma)


def _rhs(w: torch.Tensor, dx: float, dy: float, gamma: float, limiter: str) -> torch.Tensor:
    """d u / d t = -(F_{i+1/2} - F_{i-1/2}) / dx - (G_{j+1/2} - G_{j-1/2}) / dy for primitive `w`."""
    fx = _face_flux(w, _X_DIM, 1, gamma, limiter)
    gy = _face_flux(w, _Y_DIM, 2, gamma, limiter)
    out = (torch.roll(fx, 1, _X_DIM) - fx).mul_(1.0 / dx)
    out.add_(torch.roll(gy, 1, _Y_DIM) - gy, alpha=1.0 / dy)
    return out


def _bad_members(w: torch.Tensor) -> list[int]:
    ok = torch.isfinite(w).all(dim=1) & (w[:, 0] > 0) & (w[:, 3] > 0)
    return torch.nonzero(~ok.flatten(1).all(dim=1)).flatten().tolist()


# ----------------------------------------------------------------------------- validation


def _check_times(t_out) -> np.ndarray:
    try:
        times = np.asarray(
            t_out.detach().cpu().numpy() if isinstance(t_out, torch.Tensor) else t_out, dtype=np.float64
        )
    except (TypeError, ValueError):
        raise InputError(f"t_out: expected a 1D sequence of numbers, got {type(t_out).__name__}") from None
    if times.ndim != 1 or times.size == 0:
        raise InputError(f"t_out: expected a non-empty 1D sequence, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise InputError("t_out: contains NaN or Inf")
    if times[0] != 0.0:
        raise InputError(f"t_out: must start at 0, starts at {times[0]}")
    if np.any(np.diff(times) <= 0):
        raise InputError("t_out: times must be strictly increasing")
    return times


def _check_scalar(value, name: str, *, low: float, high: float = np.inf, low_inclusive=False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    ok = np.isfinite(v) and (v >= low if low_inclusive else v > low) and v <= high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + ("" if high == np.inf else f" and <= {high}")
        raise InputError(f"{name}: must be finite and {bound}, got {value!r}")
    return v


def _check_u0(u0, gamma: float) -> torch.Tensor:
    if not isinstance(u0, torch.Tensor):
        try:
            u0 = torch.as_tensor(np.asarray(u0))
        except (TypeError, ValueError):
            raise InputError(f"u0: expected a tensor [B, 4, H, W], got {type(u0).__name__}") from None
    if u0.ndim != 4 or u0.shape[1] != 4:
        raise InputError(f"u0: expected shape [B, 4, H, W] (conserved rho, rho*vx, rho*vy, E), got {list(u0.shape)}")
    if not u0.is_floating_point():
        raise InputError(f"u0: expected a floating-point tensor, got {u0.dtype}")
    b, _, h, w = u0.shape
    if b == 0 or h < 3 or w < 3:
        raise InputError(f"u0: need B >= 1 and H, W >= 3 cells, got shape {list(u0.shape)}")
    if not bool(torch.isfinite(u0).all()):
        raise InputError("u0: contains NaN or Inf")
    rho, _, _, p = conserved_to_primitive(u0, gamma)
    bad = torch.nonzero(~((rho > 0) & (p > 0)).flatten(1).all(dim=1)).flatten().tolist()
    if bad:
        raise InputError(f"u0: non-positive density or pressure at t = 0 in batch member(s) {bad[:10]}")
    return u0


# ----------------------------------------------------------------------------- driver


def solve(
    u0: torch.Tensor,
    t_out: Sequence[float],
    *,
    gamma: float = 1.4,
    domain: tuple[float, float] = (1.0, 1.0),
    cfl: float = 0.4,
    limiter: str = "mc",
    progress: bool = True,
) -> torch.Tensor:
    """Evolve `u0` `[B, 4, H, W]` (conserved; x along W, y along H) to the times `t_out`.

    `t_out`: strictly increasing times starting at 0 (same time units as `domain` / velocity).
    `domain = (Lx, Ly)`: periodic box lengths. `cfl`: Courant number of the unsplit scheme,
    dt * max(( |vx| + c) / dx + (|vy| + c) / dy) = cfl (<= 1; 0.4 is conservative for MUSCL + SSP-RK3).
    One time step is shared by the whole batch (the smallest CFL step of all members).
    Returns `[B, len(t_out), 4, H, W]` in the dtype and device of `u0`; index 0 is `u0`.
    Raises InputError for bad arguments, SolverError when rho or p turns non-positive/non-finite.
    """
    gamma = _check_scalar(gamma, "gamma", low=1.0)
    cfl = _check_scalar(cfl, "cfl", low=0.0, high=1.0)
    if limiter not in LIMITERS:
        raise InputError(f"limiter: unknown {limiter!r}; expected one of {', '.join(LIMITERS)}")
    try:
        lx, ly = domain
    except (TypeError, ValueError):
        raise InputError(f"domain: expected (Lx, Ly), got {domain!r}") from None
    lx = _check_scalar(lx, "domain[0] (Lx)", low=0.0)
    ly = _check_scalar(ly, "domain[1] (Ly)", low=0.0)
    times = _check_times(t_out)
    u = _check_u0(u0, gamma)

    b, _, h, w = u.shape
    dx, dy = lx / w, ly / h
    gm1 = gamma - 1.0
    out = torch.empty((b, len(times), 4, h, w), dtype=u.dtype, device=u.device)
    out[:, 0] = u
    u = u.clone()
    t = 0.0
    bar = tqdm(total=float(times[-1]), disable=not progress, unit="t", desc="euler", leave=False)
    try:
        for k in range(1, len(times)):
            target = float(times[k])
            while t < target:
                prim = _primitive_stack(u, gm1)
                dt_cfl = _cfl_step(prim, gamma, dx, dy, cfl, t)
                remaining = target - t
                if dt_cfl >= remaining:
                    dt, t_next = remaining, target
                elif 2.0 * dt_cfl >= remaining:  # two equal steps instead of a sliver at the end
                    dt, t_next = 0.5 * remaining, t + 0.5 * remaining
                else:
                    dt, t_next = dt_cfl, t + dt_cfl
                u = _ssp_rk3_step(u, prim, dt, dx, dy, gamma, gm1, limiter)
                bar.update(t_next - t)
                t = t_next
            out[:, k] = u
    finally:
        bar.close()
    _cfl_step(_primitive_stack(u, gm1), gamma, dx, dy, cfl, t)  # final state must be physical too
    return out


def _cfl_step(prim: torch.Tensor, gamma: float, dx: float, dy: float, cfl: float, t: float) -> float:
    """CFL time step for primitive state `prim`; raises SolverError if it is unphysical (one host sync)."""
    rho, vx, vy, p = prim.unbind(dim=1)
    c = torch.sqrt(gamma * p / rho)
    rate = (vx.abs() + c) * (1.0 / dx) + (vy.abs() + c) * (1.0 / dy)
    max_rate, min_rho, min_p = torch.stack([rate.amax(), rho.amin(), p.amin()]).tolist()
    if not (np.isfinite(max_rate) and min_rho > 0 and min_p > 0 and max_rate > 0):
        members = _bad_members(prim)
        raise SolverError(
            f"Euler solver: non-positive or non-finite density/pressure at t = {t:.6g} "
            f"in batch member(s) {members[:10]} (min rho = {min_rho:.3g}, min p = {min_p:.3g})"
        )
    return cfl / max_rate


def _ssp_rk3_step(u, prim, dt, dx, dy, gamma, gm1, limiter):
    """One Shu-Osher SSP-RK3 step; `prim` is the primitive form of `u` (already computed for the CFL step)."""
    u1 = torch.add(u, _rhs(prim, dx, dy, gamma, limiter), alpha=dt)
    u2 = u1.add_(_rhs(_primitive_stack(u1, gm1), dx, dy, gamma, limiter), alpha=dt)
    u2.mul_(0.25).add_(u, alpha=0.75)
    u3 = u2.add_(_rhs(_primitive_stack(u2, gm1), dx, dy, gamma, limiter), alpha=dt)
    return u3.mul_(2.0 / 3.0).add_(u, alpha=1.0 / 3.0)
