"""Batched 2D compressible Euler solver on a periodic rectangle (pure torch, CPU or GPU).

Unsplit finite volume: MUSCL reconstruction of the primitive variables with a TVD limiter,
HLLC fluxes (Toro, ch. 10), SSP-RK3, CFL-adaptive steps landing exactly on every output time.
Ideal gas E = p / (gamma - 1) + rho |v|^2 / 2. Layout: conserved `[B, 4, H, W]` = (rho,
rho*vx, rho*vy, E), x along W; domain `[0, Lx) x [0, Ly)`, cell centres `(i + 1/2) dx`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.checks import finite_float, one_of
from pdeinf.errors import InputError
from pdeinf.solvers import SolverError, check_domain, check_times

__all__ = ["LIMITERS", "SolverError", "conserved_to_primitive", "primitive_to_conserved", "solve"]

LIMITERS = ("mc", "minmod", "vanleer")
_X_DIM, _Y_DIM = -1, -2  # tensor axes of x and y in [B, H, W] fields


def primitive_to_conserved(rho, vx, vy, p, gamma: float = 1.4) -> torch.Tensor:
    """Stack `(rho, rho*vx, rho*vy, E)` along a new channel axis: fields `[..., H, W]` -> `[..., 4, H, W]`."""
    rho, vx, vy, p = torch.broadcast_tensors(*(torch.as_tensor(a) for a in (rho, vx, vy, p)))
    if rho.ndim < 2:
        raise InputError(f"rho, vx, vy, p: expected fields [..., H, W], got shape {list(rho.shape)}")
    energy = p / (gamma - 1.0) + 0.5 * rho * (vx * vx + vy * vy)
    return torch.stack([rho, rho * vx, rho * vy, energy], dim=-3)


def conserved_to_primitive(u: torch.Tensor, gamma: float = 1.4):
    """`[..., 4, H, W]` conserved -> `(rho, vx, vy, p)`, each `[..., H, W]`."""
    u = torch.as_tensor(u)
    rho, mx, my, energy = u.unbind(dim=-3)
    vx, vy = mx / rho, my / rho
    p = (gamma - 1.0) * (energy - 0.5 * (mx * vx + my * vy))
    return rho, vx, vy, p


def _primitive_stack(u: torch.Tensor, gamma: float) -> torch.Tensor:
    """`[B, 4, H, W]` conserved -> `[B, 4, H, W]` primitive (rho, vx, vy, p)."""
    return torch.stack(conserved_to_primitive(u, gamma), dim=1)


def _face_states(w: torch.Tensor, dim: int, limiter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MUSCL states `(left, right)` at the face i+1/2 of every cell i along `dim` (periodic)
    of primitive `w` `[B, 4, H, W]` (in-place arithmetic keeps fresh buffers few)."""
    fwd = torch.roll(w, -1, dim).sub_(w)  # w[i+1] - w[i]
    bwd = torch.roll(fwd, 1, dim)  # w[i] - w[i-1]
    if limiter == "vanleer":  # half slope = ab / (a + b) where ab > 0 (harmonic mean)
        prod = fwd * bwd
        half = torch.where(prod > 0, prod / fwd.add_(bwd), torch.zeros_like(prod))
    else:
        # minmod(a, b) = (sgn a + sgn b) / 2 * min(|a|, |b|);
        # MC = minmod(2a, 2b, (a + b) / 2) = (sgn a + sgn b) * min(|a|, |b|, |a + b| / 4).
        half = torch.sign(fwd).add_(torch.sign(bwd))  # 2, 0 or -2
        if limiter == "mc":
            quarter_sum = torch.add(fwd, bwd).abs_().mul_(0.25)
            mag = torch.minimum(fwd.abs_(), bwd.abs_())
            torch.minimum(mag, quarter_sum, out=mag)
            half.mul_(mag).mul_(0.5)
        else:  # minmod
            half.mul_(torch.minimum(fwd.abs_(), bwd.abs_())).mul_(0.25)
    return torch.add(w, half), torch.roll(w.sub(half), -1, dim)


def _hllc_flux(wl: torch.Tensor, wr: torch.Tensor, normal: int, gamma: float) -> torch.Tensor:
    """Conserved HLLC flux `[B, 4, ...]` across faces with left/right primitive states;
    `normal`: channel of the face-normal velocity (1 x, 2 y). Davis wave-speed estimates."""
    tangent = 3 - normal
    rho_l, un_l, p_l = wl[:, 0], wl[:, normal], wl[:, 3]
    rho_r, un_r, p_r = wr[:, 0], wr[:, normal], wr[:, 3]
    c_l = torch.div(p_l, rho_l).mul_(gamma).sqrt_()
    c_r = torch.div(p_r, rho_r).mul_(gamma).sqrt_()
    s_l = torch.minimum(un_l - c_l, un_r - c_r)
    s_r = torch.maximum(c_l.add_(un_l), c_r.add_(un_r))
    m_l = torch.sub(s_l, un_l).mul_(rho_l)  # mass flux through the left wave, in its frame
    m_r = torch.sub(s_r, un_r).mul_(rho_r)
    s_star = torch.sub(p_r, p_l).addcmul_(un_l, m_l).addcmul_(un_r, m_r, value=-1.0).div_(m_l - m_r)

    # Only the side the contact moves away from contributes: F = F_K + S_K^- (U*_K - U_K)
    # with K = L and S^- = min(S_L, 0) when S* >= 0, else K = R and S^+ = max(S_R, 0).
    left = s_star >= 0
    state = torch.where(left.unsqueeze(1), wl, wr)
    rho, un, ut, p = state[:, 0], state[:, normal], state[:, tangent], state[:, 3]
    s_k = torch.where(left, s_l, s_r)
    m_k = torch.where(left, m_l, m_r)
    s_weight = torch.where(left, s_l.clamp_max_(0.0), s_r.clamp_min_(0.0))

    energy = torch.mul(un, un).addcmul_(ut, ut).mul_(rho).mul_(0.5).add_(p, alpha=1.0 / (gamma - 1.0))
    mass_flux = rho * un
    star_rho = m_k / s_k.sub_(s_star)  # rho*_K = rho_K (S_K - u_K) / (S_K - S*)
    d_mn = torch.mul(star_rho, s_star).sub_(mass_flux)  # (rho u_n)* - rho u_n
    # E*_K = rho*_K (E_K / rho_K + (S* - u_K) (S* + p_K / m_K)), m_K = rho_K (S_K - u_K)
    d_e = torch.div(p, m_k).add_(s_star).mul_(s_star - un).add_(energy / rho).mul_(star_rho).sub_(energy)

    flux = torch.empty_like(state)
    f_rho = torch.addcmul(mass_flux, s_weight, star_rho.sub_(rho), out=flux[:, 0])
    torch.mul(f_rho, ut, out=flux[:, tangent])  # tangential momentum is advected with the mass
    torch.addcmul(p, mass_flux, un, out=flux[:, normal]).addcmul_(s_weight, d_mn)
    torch.add(energy, p, out=flux[:, 3]).mul_(un).addcmul_(s_weight, d_e)
    return flux


def _rhs(w: torch.Tensor, dx: float, dy: float, gamma: float, limiter: str) -> torch.Tensor:
    """d u / d t = -(F_{i+1/2} - F_{i-1/2}) / dx - (G_{j+1/2} - G_{j-1/2}) / dy for primitive `w`."""
    fx = _hllc_flux(*_face_states(w, _X_DIM, limiter), 1, gamma)
    gy = _hllc_flux(*_face_states(w, _Y_DIM, limiter), 2, gamma)
    out = torch.roll(fx, 1, _X_DIM).sub_(fx).mul_(1.0 / dx)
    out.add_(torch.roll(gy, 1, _Y_DIM).sub_(gy), alpha=1.0 / dy)
    return out


def solve(u0: torch.Tensor, t_out: Sequence[float], *, gamma: float = 1.4,
          domain: tuple[float, float] = (1.0, 1.0), cfl: float = 0.4, limiter: str = "mc",
          progress: bool = True) -> torch.Tensor:
    """Evolve `u0` `[B, 4, H, W]` (conserved; x along W, y along H) to the times `t_out`.

    `t_out`: strictly increasing times starting at 0. `domain = (Lx, Ly)`: periodic box
    lengths. `cfl`: Courant number per direction, dt = cfl * min over cells of
    (dx / (|vx| + c), dy / (|vy| + c)) (keep it <= 0.5 in 2D); one step for the whole batch.
    Returns `[B, len(t_out), 4, H, W]` in the dtype and device of `u0`; index 0 is `u0`.
    Raises InputError for bad arguments, SolverError when rho or p turns non-positive/non-finite.
    """
    gamma = finite_float(gamma, "gamma", above=1.0)
    cfl = finite_float(cfl, "cfl", positive=True, maximum=1.0)
    one_of(limiter, LIMITERS, "limiter")
    lx, ly = check_domain(domain)
    times = check_times(t_out, from_t0=True)
    if not isinstance(u0, torch.Tensor):
        try:
            u0 = torch.as_tensor(np.asarray(u0))
        except (TypeError, ValueError):
            raise InputError(f"u0: expected a tensor [B, 4, H, W], got {type(u0).__name__}") from None
    if u0.ndim != 4 or u0.shape[1] != 4:
        raise InputError(
            f"u0: expected shape [B, 4, H, W] (conserved rho, rho*vx, rho*vy, E), got {list(u0.shape)}")
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
    dx, dy = lx / w, ly / h
    out = torch.empty((b, len(times), 4, h, w), dtype=u0.dtype, device=u0.device)
    out[:, 0] = u0
    u = u0.clone()
    t = 0.0
    with tqdm(total=float(times[-1]), disable=not progress, unit="t", desc="euler", leave=False) as bar:
        for k in range(1, len(times)):
            target = float(times[k])
            while t < target:
                prim = _primitive_stack(u, gamma)
                dt_cfl = _cfl_step(prim, gamma, dx, dy, cfl, t)
                remaining = target - t
                if dt_cfl >= remaining:
                    dt, t_next = remaining, target
                else:  # two equal steps instead of a sliver at the end
                    dt = 0.5 * remaining if 2.0 * dt_cfl >= remaining else dt_cfl
                    t_next = t + dt
                u = _ssp_rk3_step(u, prim, dt, dx, dy, gamma, limiter)
                bar.update(t_next - t)
                t = t_next
            out[:, k] = u
    _cfl_step(_primitive_stack(u, gamma), gamma, dx, dy, cfl, t)  # final state must be physical too
    return out


def _cfl_step(prim: torch.Tensor, gamma: float, dx: float, dy: float, cfl: float, t: float) -> float:
    """CFL time step for primitive state `prim`; raises SolverError if it is unphysical (one host sync)."""
    rho, vx, vy, p = prim.unbind(dim=1)
    c = torch.sqrt(gamma * p / rho)
    rate = torch.maximum(vx.abs().add_(c).mul_(1.0 / dx), vy.abs().add_(c).mul_(1.0 / dy))
    max_rate, min_rho, min_p = torch.stack([rate.amax(), rho.amin(), p.amin()]).tolist()
    if not (np.isfinite(max_rate) and min_rho > 0 and min_p > 0 and max_rate > 0):
        ok = torch.isfinite(prim).all(dim=1) & (prim[:, 0] > 0) & (prim[:, 3] > 0)
        members = torch.nonzero(~ok.flatten(1).all(dim=1)).flatten().tolist()
        raise SolverError(
            f"Euler solver: non-positive or non-finite density/pressure at t = {t:.6g} "
            f"in batch member(s) {members[:10]} (min rho = {min_rho:.3g}, min p = {min_p:.3g})"
        )
    return cfl / max_rate


def _ssp_rk3_step(u, prim, dt, dx, dy, gamma, limiter):
    """One Shu-Osher SSP-RK3 step; `prim` is the primitive form of `u` (already computed for the CFL step)."""
    u1 = torch.add(u, _rhs(prim, dx, dy, gamma, limiter), alpha=dt)
    u2 = u1.add_(_rhs(_primitive_stack(u1, gamma), dx, dy, gamma, limiter), alpha=dt)
    u2.mul_(0.25).add_(u, alpha=0.75)
    u3 = u2.add_(_rhs(_primitive_stack(u2, gamma), dx, dy, gamma, limiter), alpha=dt)
    return u3.mul_(2.0 / 3.0).add_(u, alpha=1.0 / 3.0)
