"""Batched 2D incompressible Navier-Stokes on a periodic rectangle (pure torch, CPU or GPU).

    u_t + (u . grad) u + grad p = D u,    div u = 0,

with D either the Laplacian `nu * Lap` or PDEGym/azeban's smooth-cutoff spectral viscosity.

Method: Fourier pseudo-spectral. The state is the real-FFT coefficient array of the velocity,
`torch.fft.rfft2(v, norm="forward")` (so coefficients do not depend on the grid size). The
advection term is evaluated in divergence form `div(u u^T)` with exact 3/2-rule dealiasing
(zero padding to a grid of ceil(3N/2) points per axis), then Leray-projected, so the velocity
stays divergence-free to round-off. Time stepping: SSP-RK3 (Shu-Osher) applied to the
integrating-factor variable `exp(-L t) u_hat`, which treats the (diagonal) viscous operator L
exactly. The step is CFL-adaptive, `dt * max(|u| / dx + |v| / dy) = cfl`, chosen separately
for every batch member (so a sample's trajectory does not depend on what it is batched with),
and cut to land exactly on every output time.

Layout: velocity `[B, 2, H, W]` = (u, v) = (x-, y-component); x runs along W (the last axis),
y along H. The domain `(Lx, Ly)` is `[0, Lx) x [0, Ly)`, grid points at `(i dx, j dy)` with
`dx = Lx / W`, `dy = Ly / H`. Physical wavenumbers `k = 2 pi m / L` with integer mode numbers m.

The initial field is projected onto divergence-free fields with no Nyquist modes (for even
H or W the Nyquist row/column carries no well-defined derivative); the mean flow is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from pdeinf.checks import finite_float, one_of
from pdeinf.errors import InputError, NumericalError
from pdeinf.solvers import check_domain, check_times

__all__ = ["VISCOSITIES", "SolverError", "divergence", "enstrophy", "kinetic_energy", "linear_operator",
           "project", "solve", "velocity_from_vorticity", "vorticity"]

VISCOSITIES = ("laplacian", "spectral")
#: azeban's smooth cutoff: Q_k = 1 - exp(-(|m| / sqrt(N))^18), amplitude eps_N = 0.05 / N.
SPECTRAL_CUTOFF_POWER = 18.0
SPECTRAL_EPS_FACTOR = 0.05
# The integrating factor multiplies one stage by exp(+|L| dt / 2); keep that exponent bounded
# so float32 cannot overflow however large the viscosity (only binds for extreme nu).
_MAX_IF_EXPONENT = 40.0


class SolverError(NumericalError):
    """The solution became non-finite (blow-up) or needed more steps than allowed."""


# ----------------------------------------------------------------------------- spectral grid


class _Grid:
    """Wavenumbers, masks and padding bookkeeping of an H x W periodic grid (rfft layout)."""

    def __init__(self, h: int, w: int, domain: tuple[float, float], dtype: torch.dtype, device):
        lx, ly = domain
        self.h, self.w, self.lx, self.ly = h, w, lx, ly
        self.wr = w // 2 + 1
        my = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64, device=device)  # integers
        mx = torch.fft.rfftfreq(w, d=1.0 / w, dtype=torch.float64, device=device)
        self.my = my[:, None].expand(h, self.wr)
        self.mx = mx[None, :].expand(h, self.wr)
        self.ky = (2.0 * math.pi / ly * self.my).to(dtype)  # [H, Wr]
        self.kx = (2.0 * math.pi / lx * self.mx).to(dtype)
        k2 = self.kx**2 + self.ky**2
        self.k2 = k2
        self.inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        keep = torch.ones(h, self.wr, dtype=dtype, device=device)
        if h % 2 == 0:
            keep[h // 2, :] = 0.0
        if w % 2 == 0:
            keep[:, w // 2] = 0.0
        self.keep = keep  # 0 on Nyquist modes
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


def _grid_for(v: torch.Tensor, domain) -> _Grid:
    return _Grid(v.shape[-2], v.shape[-1], domain, v.dtype, v.device)


# ----------------------------------------------------------------------------- validation


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


# ----------------------------------------------------------------------------- diagnostics


def project(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Divergence-free (Leray) projection of `v` `[..., 2, H, W]`; keeps the mean flow and
    removes Nyquist modes. Same shape and dtype."""
    v = _check_field(v, "v", 2)
    g = _grid_for(v, check_domain(domain))
    return g.to_physical(g.project(torch.fft.rfft2(v, norm="forward")))


def divergence(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Spectral `du/dx + dv/dy` of `v` `[..., 2, H, W]` -> `[..., H, W]` (1/length units)."""
    v = _check_field(v, "v", 2)
    g = _grid_for(v, check_domain(domain))
    vh = torch.fft.rfft2(v, norm="forward") * g.keep
    return g.to_physical(1j * (g.kx * vh[..., 0, :, :] + g.ky * vh[..., 1, :, :]))


def vorticity(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Spectral `dv/dx - du/dy` of `v` `[..., 2, H, W]` -> `[..., H, W]`."""
    v = _check_field(v, "v", 2)
    g = _grid_for(v, check_domain(domain))
    vh = torch.fft.rfft2(v, norm="forward") * g.keep
    return g.to_physical(1j * (g.kx * vh[..., 1, :, :] - g.ky * vh[..., 0, :, :]))


def velocity_from_vorticity(w: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Zero-mean divergence-free velocity `[..., 2, H, W]` whose vorticity is `w` `[..., H, W]`
    minus its mean: solve `-Lap psi = w` (mean mode removed), `u = dpsi/dy`, `v = -dpsi/dx`.
    Nyquist modes of `w` are dropped."""
    w = _check_field(w, "w", None)
    g = _Grid(w.shape[-2], w.shape[-1], check_domain(domain), w.dtype, w.device)
    psi = torch.fft.rfft2(w, norm="forward") * g.inv_k2 * g.keep
    vh = torch.stack((1j * g.ky * psi, -1j * g.kx * psi), dim=-3)
    return g.to_physical(vh)


def kinetic_energy(v: torch.Tensor) -> torch.Tensor:
    """Mean kinetic energy per unit area `0.5 <u^2 + v^2>` of `[..., 2, H, W]` -> `[...]`."""
    return 0.5 * (v**2).sum(dim=-3).mean(dim=(-2, -1))


def enstrophy(v: torch.Tensor, domain=(1.0, 1.0)) -> torch.Tensor:
    """Mean enstrophy `0.5 <omega^2>` of `[..., 2, H, W]` -> `[...]`."""
    return 0.5 * (vorticity(v, domain) ** 2).mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- operators


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


# ----------------------------------------------------------------------------- driver


def solve(v0: torch.Tensor, t_out: Sequence[float], *, nu: float = 4e-4,
          domain: tuple[float, float] = (1.0, 1.0), viscosity: str = "laplacian", cfl: float = 0.5,
          t0: float = 0.0, spectral_eps: float | None = None, max_dt: float | None = None,
          max_steps: int = 10_000_000, progress: bool = True) -> torch.Tensor:
    """Evolve the velocity `v0` `[B, 2, H, W]` (x along W, y along H) from time `t0` to `t_out`.

    `nu`: kinematic viscosity of the plain Laplacian (`viscosity="laplacian"`, nu = 0 is the
    Euler equations). `viscosity="spectral"`: azeban's smooth-cutoff spectral viscosity (see
    `linear_operator`; `nu` is then ignored, `spectral_eps` overrides eps_N = 0.05 / N).
    `domain = (Lx, Ly)`: periodic box lengths. `cfl`: Courant number
    `dt * max(|u| / dx + |v| / dy)`, per batch member. `max_dt` optionally caps the step.
    `t_out`: strictly increasing times `>= t0` (time units of `domain` / velocity).
    `v0` is first projected to be divergence-free (Nyquist modes removed, mean flow kept);
    an output at `t0` is that projected field.

    Returns `[B, len(t_out), 2, H, W]` in the dtype/device of `v0`. Raises InputError on bad
    arguments and SolverError if the solution turns non-finite.
    """
    v0, domain, t0, times, cfl, max_dt, nu = _check_solve_arguments(v0, t_out, domain, t0, cfl,
                                                                     max_dt, nu)
    lin = linear_operator(v0.shape[-2], v0.shape[-1], domain=domain, nu=nu, viscosity=viscosity,
                          spectral_eps=spectral_eps, dtype=v0.dtype, device=v0.device)
    b, _, h, w = v0.shape
    g = _grid_for(v0, domain)
    vh = g.project(torch.fft.rfft2(v0, norm="forward"))
    stiff = float(lin.abs().max())
    dt_cap = min(max_dt or math.inf, 2.0 * _MAX_IF_EXPONENT / stiff if stiff > 0 else math.inf)
    out = torch.empty((b, len(times), 2, h, w), dtype=v0.dtype, device=v0.device)
    clock = _Clock(torch.full((b,), t0, dtype=torch.float64, device=v0.device), max_steps,
                   tqdm(total=float(times[-1] - t0), disable=not progress, unit="t",
                        desc="navier-stokes", leave=False), t0)
    try:
        for k, target in enumerate(times):
            vh = _advance_to(g, vh, lin, float(target), clock, cfl=cfl, dt_cap=dt_cap)
            out[:, k] = _finite_field(g, vh, float(target))
    finally:
        clock.bar.close()
    return out


def _check_solve_arguments(v0, t_out, domain, t0, cfl, max_dt, nu):
    """The checked `(v0, domain, t0, times, cfl, max_dt, nu)` of `solve` (InputError otherwise)."""
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
    return v0, domain, t0, times, cfl, max_dt, nu


class _Clock:
    """Per-member times `t` `[B]`, the step count against `max_steps`, and the progress bar."""

    def __init__(self, t, max_steps: int, bar, shown: float):
        self.t, self.max_steps, self.bar, self.shown, self.steps = t, max_steps, bar, shown, 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise SolverError(f"navier_stokes.solve: more than max_steps={self.max_steps} steps "
                              f"by t={float(self.t.min()):.6g}")
        t_min = float(self.t.min())
        self.bar.update(t_min - self.shown)
        self.shown = t_min


def _advance_to(g: _Grid, vh, lin, target: float, clock: _Clock, *, cfl: float, dt_cap: float):
    """CFL-adaptive IF-SSPRK3 steps until every member reaches `target` exactly."""
    while bool((clock.t < target).any()):
        rhs0, rate = _advection(g, vh)
        if not bool(torch.isfinite(rate).all()):
            member = int(torch.nonzero(~torch.isfinite(rate))[0])
            raise SolverError(f"navier_stokes.solve: non-finite velocity near "
                              f"t={float(clock.t[member]):.6g} in batch member {member}")
        remaining = target - clock.t
        dt_cfl = torch.where(rate > 0, cfl / rate.clamp_min(1e-300), math.inf).clamp_max(dt_cap)
        last = dt_cfl >= remaining
        # two equal steps instead of a sliver at the end of an output interval
        halve = ~last & (2.0 * dt_cfl >= remaining)
        dt = torch.where(last, remaining, torch.where(halve, 0.5 * remaining, dt_cfl))
        dt = torch.where(remaining > 0, dt, torch.zeros_like(dt))
        vh = _if_ssprk3_step(g, vh, rhs0, lin, dt)
        clock.t = torch.where(last, torch.full_like(clock.t, target), clock.t + dt)
        clock.tick()
    return vh


def _finite_field(g: _Grid, vh, target: float) -> torch.Tensor:
    """The physical velocity at an output time; SolverError naming a non-finite member."""
    field = g.to_physical(vh)
    bad = ~torch.isfinite(field).flatten(1).all(dim=1)
    if bool(bad.any()):
        member = int(torch.nonzero(bad)[0])
        raise SolverError(f"navier_stokes.solve: non-finite velocity at t={target:.6g} "
                          f"in batch member {member}")
    return field


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
