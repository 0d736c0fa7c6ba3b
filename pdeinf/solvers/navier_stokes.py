"""Batched 2D incompressible Navier-Stokes on a periodic rectangle (pure torch, CPU or GPU).

    u_t + (u . grad) u + grad p = D u,    div u = 0,

with D the Laplacian `nu * Lap` or PDEGym/azeban's smooth-cutoff spectral viscosity.
Fourier pseudo-spectral: the state is `torch.fft.rfft2(v, norm="forward")`; the advection
`div(u u^T)` is dealiased by the 3/2 rule and Leray-projected, so the velocity stays
divergence-free to round-off. Integrating-factor SSP-RK3 (L exact), with a CFL-adaptive step
`dt * max(|u| / dx + |v| / dy) = cfl` per batch member (a sample's trajectory does not depend
on its batch), cut to land exactly on every output time.

Layout: velocity `[B, 2, H, W]` = (u, v), x along W, y along H; domain `[0, Lx) x [0, Ly)`,
grid points `(i dx, j dy)`. The initial field is projected (Nyquist modes removed, mean kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from pdeinf.checks import finite_float, one_of
from pdeinf.errors import InputError
from pdeinf.solvers import SolverError, check_domain, check_times

__all__ = ["VISCOSITIES", "SolverError", "divergence", "enstrophy", "kinetic_energy", "linear_operator",
           "project", "solve", "velocity_from_vorticity", "vorticity"]

VISCOSITIES = ("laplacian", "spectral")
#: azeban's smooth cutoff: Q_k = 1 - exp(-(|m| / sqrt(N))^18), amplitude eps_N = 0.05 / N.
SPECTRAL_CUTOFF_POWER = 18.0
SPECTRAL_EPS_FACTOR = 0.05
# The integrating factor multiplies one stage by exp(+|L| dt / 2); keep that exponent bounded
# so float32 cannot overflow however large the viscosity (only binds for extreme nu).
_MAX_IF_EXPONENT = 40.0


class _Grid:
    """Wavenumbers, masks and padding bookkeeping of an H x W periodic grid (rfft layout)."""

    def __init__(self, h: int, w: int, domain: tuple[float, float], dtype: torch.dtype, device):
        lx, ly = domain
        self.h, self.w, self.lx, self.ly = h, w, lx, ly
        self.wr = w // 2 + 1
        my = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64, device=device)  # integers
        mx = torch.fft.rfftfreq(w, d=1.0 / w, dtype=torch.float64, device=device)
        self.my, self.mx = my[:, None].expand(h, self.wr), mx[None, :].expand(h, self.wr)
        self.ky = (2.0 * math.pi / ly * self.my).to(dtype)  # [H, Wr]
        self.kx = (2.0 * math.pi / lx * self.mx).to(dtype)
        self.k2 = k2 = self.kx**2 + self.ky**2
        self.inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        self.keep = ((self.my.abs() != h / 2) & (self.mx != w / 2)).to(dtype)  # 0 on Nyquist modes
        # retained modes for the 3/2 rule: rows 0..n_pos-1 and the last n_neg rows, cols 0..n_col-1
        self.n_pos, self.n_neg, self.n_col = (h + 1) // 2, (h - 1) // 2, (w + 1) // 2
        self.ph, self.pw = -(-3 * h // 2), -(-3 * w // 2)  # ceil(3N/2) > 3 * max retained |m|

    def _modes(self, f: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """The retained modes of `f` in a zero `[..., rows, cols]` array."""
        out = f.new_zeros(f.shape[:-2] + (rows, cols))
        out[..., : self.n_pos, : self.n_col] = f[..., : self.n_pos, : self.n_col]
        if self.n_neg:
            out[..., -self.n_neg :, : self.n_col] = f[..., -self.n_neg :, : self.n_col]
        return out

    def pad(self, fh: torch.Tensor) -> torch.Tensor:
        """`[..., H, Wr]` coefficients -> `[..., ph, pw//2+1]` zero-padded (Nyquist dropped)."""
        return self._modes(fh, self.ph, self.pw // 2 + 1)

    def truncate(self, fp: torch.Tensor) -> torch.Tensor:
        """Inverse of `pad`: keep the modes of the H x W grid (Nyquist set to zero)."""
        return self._modes(fp, self.h, self.wr)

    def project(self, vh: torch.Tensor) -> torch.Tensor:
        """Leray projection of `[..., 2, H, Wr]` coefficients (mean mode kept, Nyquist zeroed)."""
        div = self.kx * vh[..., 0, :, :] + self.ky * vh[..., 1, :, :]
        q = div * self.inv_k2
        out = torch.stack((vh[..., 0, :, :] - self.kx * q, vh[..., 1, :, :] - self.ky * q), dim=-3)
        return out * self.keep

    def to_physical(self, vh: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(vh, s=(self.h, self.w), norm="forward")


def _check_field(v, name: str, channels: int | None) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(v).__name__}")
    if v.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{name}: dtype must be float32 or float64, got {v.dtype}")
    if channels is not None and (v.ndim < 3 or v.shape[-3] != channels):
        raise InputError(f"{name}: expected shape [..., {channels}, H, W], got {tuple(v.shape)}")
    if v.ndim < 2 or v.shape[-1] < 2 or v.shape[-2] < 2:
        raise InputError(f"{name}: grid must be at least 2 x 2, got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise InputError(f"{name}: contains NaN or Inf")
    return v


def _spectrum(v: torch.Tensor, domain, name: str = "v", channels: int | None = 2):
    """`(grid, rfft2 coefficients)` of a checked field."""
    v = _check_field(v, name, channels)
    grid = _Grid(v.shape[-2], v.shape[-1], check_domain(domain), v.dtype, v.device)
    return grid, torch.fft.rfft2(v, norm="forward")


def project(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Divergence-free (Leray) projection of `v` `[..., 2, H, W]`; keeps the mean flow and
    removes Nyquist modes."""
    g, vh = _spectrum(v, domain)
    return g.to_physical(g.project(vh))


def divergence(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Spectral `du/dx + dv/dy` of `v` `[..., 2, H, W]` -> `[..., H, W]` (1/length units)."""
    g, vh = _spectrum(v, domain)
    vh = vh * g.keep
    return g.to_physical(1j * (g.kx * vh[..., 0, :, :] + g.ky * vh[..., 1, :, :]))


def vorticity(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Spectral `dv/dx - du/dy` of `v` `[..., 2, H, W]` -> `[..., H, W]`."""
    g, vh = _spectrum(v, domain)
    vh = vh * g.keep
    return g.to_physical(1j * (g.kx * vh[..., 1, :, :] - g.ky * vh[..., 0, :, :]))


def velocity_from_vorticity(w: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Zero-mean divergence-free velocity `[..., 2, H, W]` whose vorticity is `w` `[..., H, W]`
    minus its mean (`-Lap psi = w`, `u = dpsi/dy`, `v = -dpsi/dx`; Nyquist modes dropped)."""
    g, wh = _spectrum(w, domain, "w", None)
    psi = wh * g.inv_k2 * g.keep
    return g.to_physical(torch.stack((1j * g.ky * psi, -1j * g.kx * psi), dim=-3))


def kinetic_energy(v: torch.Tensor) -> torch.Tensor:
    """Mean kinetic energy per unit area `0.5 <u^2 + v^2>` of `[..., 2, H, W]` -> `[...]`."""
    return 0.5 * (v**2).sum(dim=-3).mean(dim=(-2, -1))


def enstrophy(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Mean enstrophy `0.5 <omega^2>` of `[..., 2, H, W]` -> `[...]`."""
    return 0.5 * (vorticity(v, domain) ** 2).mean(dim=(-2, -1))


def linear_operator(h: int, w: int, *, domain=(1.0, 1.0), nu: float = 4e-4,
                    viscosity: str = "laplacian", spectral_eps: float | None = None,
                    dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Real diagonal viscous operator L `[H, W//2+1]` (rfft layout): `u_hat' = L u_hat`.

    "laplacian": `L = -nu |k|^2`. "spectral" (azeban "Smooth Cutoff", s = 1):
    `L = -eps |k|^2 [1 - exp(-(|m| / sqrt(N))^18)]` with `|m|` the integer wavenumber norm,
    `N = max(H, W)` and `eps = spectral_eps` or `0.05 / N` (nu is not used).
    """
    one_of(viscosity, VISCOSITIES, "viscosity")
    g = _Grid(h, w, check_domain(domain), dtype, device)
    if viscosity == "laplacian":
        return -finite_float(nu, "nu", minimum=0.0) * g.k2
    n = max(h, w)
    eps = SPECTRAL_EPS_FACTOR / n if spectral_eps is None else spectral_eps
    eps = finite_float(eps, "spectral_eps", minimum=0.0)
    m = torch.sqrt(g.mx**2 + g.my**2)
    cutoff = -torch.expm1(-((m / math.sqrt(n)) ** SPECTRAL_CUTOFF_POWER))
    return (-eps * g.k2 * cutoff.to(dtype)).to(dtype)


def _advection(g: _Grid, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`-P div(u u^T)` `[B, 2, H, Wr]`, dealiased by 3/2 padding, and the CFL rate
    `max(|u| / dx + |v| / dy)` `[B]` (float64) read off the padded grid."""
    up = torch.fft.irfft2(g.pad(vh), s=(g.ph, g.pw), norm="forward")  # [B, 2, ph, pw]
    u, v = up[:, 0], up[:, 1]
    prod = torch.stack((u * u, u * v, v * v), dim=1)
    ph = g.truncate(torch.fft.rfft2(prod, norm="forward"))  # [B, 3, H, Wr]
    nx = 1j * (g.kx * ph[:, 0] + g.ky * ph[:, 1])
    ny = 1j * (g.kx * ph[:, 1] + g.ky * ph[:, 2])
    rhs = -g.project(torch.stack((nx, ny), dim=1))
    rate = (u.abs() / (g.lx / g.w) + v.abs() / (g.ly / g.h)).amax(dim=(-2, -1))
    return rhs, rate.to(torch.float64)


def solve(v0: torch.Tensor, t_out: Sequence[float], *, nu: float = 4e-4,
          domain: tuple[float, float] = (1.0, 1.0), viscosity: str = "laplacian", cfl: float = 0.5,
          t0: float = 0.0, spectral_eps: float | None = None, max_dt: float | None = None,
          max_steps: int = 10_000_000, progress: bool = True) -> torch.Tensor:
    """Evolve the velocity `v0` `[B, 2, H, W]` (x along W, y along H) from time `t0` to `t_out`.

    `nu`: kinematic viscosity of the Laplacian (`viscosity="laplacian"`; 0 is Euler).
    `viscosity="spectral"`: azeban's smooth-cutoff viscosity (`linear_operator`; `nu` unused,
    `spectral_eps` overrides eps_N = 0.05 / N). `domain = (Lx, Ly)`: periodic box lengths.
    `cfl`: Courant number `dt * max(|u| / dx + |v| / dy)` per member; `max_dt` caps the step.
    `t_out`: strictly increasing times `>= t0`; an output at `t0` is the projected `v0`.

    Returns `[B, len(t_out), 2, H, W]` in the dtype/device of `v0`. Raises InputError on bad
    arguments and SolverError if the solution turns non-finite.
    """
    v0 = _check_field(v0, "v0", 2)
    if v0.ndim != 4:
        raise InputError(f"v0: expected shape [B, 2, H, W], got {tuple(v0.shape)}")
    if v0.shape[0] == 0:
        raise InputError("v0: batch is empty")
    domain = check_domain(domain)
    t0 = finite_float(t0, "t0")
    times = check_times(t_out, t0)
    cfl = finite_float(cfl, "cfl", positive=True)
    if max_dt is not None:
        max_dt = finite_float(max_dt, "max_dt", positive=True)
    nu = finite_float(nu, "nu", minimum=0.0)
    lin = linear_operator(v0.shape[-2], v0.shape[-1], domain=domain, nu=nu, viscosity=viscosity,
                          spectral_eps=spectral_eps, dtype=v0.dtype, device=v0.device)
    b, _, h, w = v0.shape
    g = _Grid(h, w, domain, v0.dtype, v0.device)
    vh = g.project(torch.fft.rfft2(v0, norm="forward"))
    stiff = float(lin.abs().max())
    dt_cap = min(max_dt or math.inf, 2.0 * _MAX_IF_EXPONENT / stiff if stiff > 0 else math.inf)
    out = torch.empty((b, len(times), 2, h, w), dtype=v0.dtype, device=v0.device)
    t = torch.full((b,), t0, dtype=torch.float64, device=v0.device)  # per member
    steps, shown = 0, t0
    with tqdm(total=float(times[-1] - t0), disable=not progress, unit="t", desc="navier-stokes",
              leave=False) as bar:
        for k, target in enumerate(times.tolist()):
            while bool((t < target).any()):
                rhs0, rate = _advection(g, vh)
                if not bool(torch.isfinite(rate).all()):
                    member = int(torch.nonzero(~torch.isfinite(rate))[0])
                    raise SolverError(f"navier_stokes.solve: non-finite velocity near "
                                      f"t={float(t[member]):.6g} in batch member {member}")
                remaining = target - t
                dt_cfl = torch.where(rate > 0, cfl / rate.clamp_min(1e-300), math.inf).clamp_max(dt_cap)
                last = dt_cfl >= remaining
                # two equal steps instead of a sliver at the end of an output interval
                halve = ~last & (2.0 * dt_cfl >= remaining)
                dt = torch.where(last, remaining, torch.where(halve, 0.5 * remaining, dt_cfl))
                dt = torch.where(remaining > 0, dt, torch.zeros_like(dt))
                vh = _if_ssprk3_step(g, vh, rhs0, lin, dt)
                t = torch.where(last, torch.full_like(t, target), t + dt)
                steps += 1
                if steps > max_steps:
                    raise SolverError(f"navier_stokes.solve: more than max_steps={max_steps} steps "
                                      f"by t={float(t.min()):.6g}")
                bar.update(float(t.min()) - shown)
                shown = float(t.min())
            out[:, k] = g.to_physical(vh)
            bad = ~torch.isfinite(out[:, k]).flatten(1).all(dim=1)
            if bool(bad.any()):
                raise SolverError(f"navier_stokes.solve: non-finite velocity at t={target:.6g} "
                                  f"in batch member {int(torch.nonzero(bad)[0])}")
    return out


def _if_ssprk3_step(g: _Grid, vh, rhs0, lin, dt):
    """One integrating-factor SSP-RK3 step (Shu-Osher, stages at t, t+dt, t+dt/2); `dt` `[B]`."""
    dtc = dt.to(lin.dtype)[:, None, None, None]
    e_full = torch.exp(lin * dtc)  # [B, 1, H, Wr] broadcast over the two components
    e_half = torch.exp(0.5 * lin * dtc)
    e_back = torch.exp(-0.5 * lin * dtc)
    v1 = e_full * (vh + dtc * rhs0)
    rhs1, _ = _advection(g, v1)
    v2 = 0.75 * e_half * vh + 0.25 * e_back * (v1 + dtc * rhs1)
    rhs2, _ = _advection(g, v2)
    return (1.0 / 3.0) * e_full * vh + (2.0 / 3.0) * e_half * (v2 + dtc * rhs2)
