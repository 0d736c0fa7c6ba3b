"""Validation of the pseudo-spectral incompressible Navier-Stokes solver against exact solutions
(Taylor-Green, Galilean-translated Taylor-Green), invariants and convergence."""

import math

import pytest
import torch

from pdeinf.errors import InputError
from pdeinf.solvers import navier_stokes as ns

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grid(h, w, lx, ly, dtype=torch.float64):
    y = torch.arange(h, dtype=dtype) * ly / h
    x = torch.arange(w, dtype=dtype) * lx / w
    return torch.meshgrid(y, x, indexing="ij")


def taylor_green(
    h, w, domain, t, nu, *, modes=(1, 1), amp=0.1, mean=(0.0, 0.0), dtype=torch.float64
):
    """Exact NS solution: stream function amp sin(kx x) sin(ky y) decaying at nu |k|^2,
    advected by a uniform mean flow `mean` (Galilean invariance) -> [1, 2, H, W]."""
    lx, ly = domain
    yy, xx = _grid(h, w, lx, ly, dtype)
    kx, ky = 2 * math.pi * modes[0] / lx, 2 * math.pi * modes[1] / ly
    xs, ys = xx - mean[0] * t, yy - mean[1] * t
    decay = math.exp(-nu * (kx**2 + ky**2) * t)
    u = amp * ky * torch.sin(kx * xs) * torch.cos(ky * ys) * decay + mean[0]
    v = -amp * kx * torch.cos(kx * xs) * torch.sin(ky * ys) * decay + mean[1]
    return torch.stack((u, v))[None]


def smooth_random(b, h, w, seed, dtype=torch.float64, width=3.0):
    """Random band-limited, divergence-free field of unit std."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, 2, h, w, generator=g, dtype=dtype)
    my = torch.fft.fftfreq(h, d=1.0 / h, dtype=dtype)[:, None]
    mx = torch.fft.rfftfreq(w, d=1.0 / w, dtype=dtype)[None, :]
    vh = torch.fft.rfft2(v) * torch.exp(-(mx**2 + my**2) / (2 * width**2))
    v = ns.project(torch.fft.irfft2(vh, s=(h, w)))
    return v / v.std()


@pytest.mark.parametrize("shape,domain", [((32, 32), (1.0, 1.0)), ((40, 24), (1.0, 1.5))])
def test_taylor_green_exponential_decay(shape, domain):
    h, w = shape
    nu = 0.02
    v0 = taylor_green(h, w, domain, 0.0, nu, modes=(1, 2))
    out = ns.solve(v0, [0.0, 0.1, 0.3], nu=nu, domain=domain, progress=False)
    for k, t in enumerate([0.0, 0.1, 0.3]):
        exact = taylor_green(h, w, domain, t, nu, modes=(1, 2))
        err = (out[0, k] - exact[0]).abs().max() / exact.abs().max()
        assert err < 1e-10, (t, float(err))


def test_taylor_green_float32():
    v0 = taylor_green(32, 32, (1.0, 1.0), 0.0, 0.01, dtype=torch.float32)
    out = ns.solve(v0, [0.0, 0.2], nu=0.01, progress=False)
    assert out.dtype == torch.float32
    exact = taylor_green(32, 32, (1.0, 1.0), 0.2, 0.01, dtype=torch.float64)
    assert float((out[0, 1].double() - exact[0]).abs().max() / exact.abs().max()) < 1e-5


def test_translated_taylor_green_exercises_advection():
    # The mean flow advects the vortex through the nonlinear term: u = U + TG(x - U t, t);
    # the remaining error is the RK3 phase error, third order in the step.
    domain, nu, mean = (1.0, 1.5), 0.01, (0.7, -0.4)
    v0 = taylor_green(24, 16, domain, 0.0, nu, mean=mean)
    exact = torch.cat([taylor_green(24, 16, domain, t, nu, mean=mean) for t in (0.25, 0.5)])
    errs = []
    for cfl in (0.2, 0.1):
        out = ns.solve(v0, [0.25, 0.5], nu=nu, domain=domain, cfl=cfl, progress=False)[0]
        errs.append(float((out - exact).abs().max() / exact.abs().max()))
    assert errs[1] < 1e-6 and errs[0] / errs[1] > 6.0, errs


def test_divergence_free_and_energy_decays_with_viscosity():
    v0 = smooth_random(2, 32, 32, seed=1)
    times = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
    out = ns.solve(v0, times, nu=2e-3, progress=False)
    assert float(ns.divergence(out).abs().max()) < 1e-11
    energy = ns.kinetic_energy(out)  # [B, T]
    assert bool((energy[:, 1:] < energy[:, :-1]).all())
    assert float(energy[:, -1].min()) > 0.5 * float(
        energy[:, 0].max()
    )  # decays but is not wiped out


@pytest.mark.parametrize("shape", [(32, 32), (15, 21)])
def test_inviscid_energy_and_enstrophy_conserved_to_time_accuracy(shape):
    v0 = smooth_random(1, *shape, seed=2)
    drifts, zdrifts = [], []
    for cfl in (0.4, 0.2):
        out = ns.solve(v0, [0.0, 0.25], nu=0.0, cfl=cfl, progress=False)
        e = ns.kinetic_energy(out)[0]
        z = ns.enstrophy(out)[0]
        drifts.append(abs(float(e[1] / e[0] - 1)))
        zdrifts.append(abs(float(z[1] / z[0] - 1)))
    # the 3/2-rule Galerkin truncation conserves both exactly; what is left is the RK3 error
    assert drifts[0] < 1e-3 and zdrifts[0] < 3e-2
    assert drifts[1] < drifts[0] / 4 and zdrifts[1] < zdrifts[0] / 4, (drifts, zdrifts)


def test_time_step_refinement_converges_at_third_order():
    v0 = smooth_random(1, 24, 24, seed=3)
    runs = {
        cfl: ns.solve(v0, [0.3], nu=1e-3, cfl=cfl, progress=False)[:, 0]
        for cfl in (0.4, 0.2, 0.1, 0.025)
    }
    errs = [float((runs[c] - runs[0.025]).abs().max()) for c in (0.4, 0.2, 0.1)]
    assert errs[0] < 5e-2
    assert errs[0] / errs[1] > 6.0 and errs[1] / errs[2] > 6.0, errs  # 3rd order: 8


def _single_mode(n, m, amp):
    # one Fourier shell: a steady Euler solution, so only viscosity changes it
    return taylor_green(n, n, (1.0, 1.0), 0.0, 0.0, modes=m, amp=amp)


def test_spectral_viscosity_spares_low_modes_and_damps_high_ones():
    n, t = 64, 0.2
    eps = 0.05 / n
    low = _single_mode(n, (1, 3), 0.05)  # |m| = 3.2 < sqrt(N)/2 = 4
    out = ns.solve(low, [t], viscosity="spectral", progress=False)
    # inviscid to 1e-7 (a Laplacian with the same eps would remove 6 % of it)
    assert float((out[0, 0] - low[0]).abs().max() / low.abs().max()) < 1e-7
    for m in ((6, 8), (14, 14)):
        high = _single_mode(n, m, 0.002)
        mnorm = math.hypot(*m)
        rate = eps * (2 * math.pi * mnorm) ** 2 * (1 - math.exp(-((mnorm / math.sqrt(n)) ** 18)))
        out = ns.solve(high, [t], viscosity="spectral", progress=False)
        ratio = out[0, 0] / high[0]
        mask = high[0].abs() > 1e-3 * high.abs().max()
        assert torch.allclose(
            ratio[mask], torch.full_like(ratio[mask], math.exp(-rate * t)), rtol=1e-10
        )
    assert rate * t > 1.0  # the highest mode is strongly damped


def test_batch_members_evolve_independently_and_output_at_t0_is_projected():
    v = smooth_random(2, 16, 16, seed=4)
    v[1] *= 3.0  # faster member: smaller CFL steps
    both = ns.solve(v, [0.0, 0.2], nu=1e-3, progress=False)
    for b in range(2):
        alone = ns.solve(v[b : b + 1], [0.0, 0.2], nu=1e-3, progress=False)
        torch.testing.assert_close(both[b], alone[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(both[:, 0], ns.project(v), rtol=0, atol=1e-14)


def test_project_removes_gradient_and_initial_divergence():
    yy, xx = _grid(32, 32, 1.0, 1.0)
    phi_x = 2 * math.pi * torch.cos(2 * math.pi * xx) * torch.sin(4 * math.pi * yy)
    phi_y = 4 * math.pi * torch.sin(2 * math.pi * xx) * torch.cos(4 * math.pi * yy)
    grad = torch.stack((phi_x, phi_y))[None]
    tg = taylor_green(32, 32, (1.0, 1.0), 0.0, 0.0)
    assert float(ns.project(grad).abs().max()) < 1e-12
    torch.testing.assert_close(ns.project(tg + grad), tg, rtol=0, atol=1e-12)
    assert float(ns.divergence(grad).abs().max()) > 1.0


def test_vorticity_and_stream_function_roundtrip():
    domain = (1.0, 1.5)
    tg = taylor_green(24, 16, domain, 0.0, 0.0, modes=(2, 1), amp=0.3)
    kx, ky = 2 * math.pi * 2 / 1.0, 2 * math.pi * 1 / 1.5
    yy, xx = _grid(24, 16, *domain)
    exact_w = 0.3 * (kx**2 + ky**2) * torch.sin(kx * xx) * torch.sin(ky * yy)  # -Lap psi
    w = ns.vorticity(tg, domain)[0]
    torch.testing.assert_close(w, exact_w, rtol=0, atol=1e-11)
    torch.testing.assert_close(ns.velocity_from_vorticity(w, domain), tg[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"v0": torch.zeros(1, 3, 8, 8)}, "v0"),
        ({"v0": torch.zeros(2, 8, 8)}, "v0"),
        ({"v0": torch.full((1, 2, 8, 8), float("nan"))}, "v0"),
        ({"v0": torch.zeros(1, 2, 8, 8, dtype=torch.int64)}, "v0"),
        ({"t_out": [0.0, 0.2, 0.1]}, "t_out"),
        ({"t_out": []}, "t_out"),
        ({"t_out": [float("inf")]}, "t_out"),
        ({"nu": -1e-3}, "nu"),
        ({"viscosity": "hyper"}, "viscosity"),
        ({"cfl": 0.0}, "cfl"),
        ({"domain": (1.0, -1.0)}, "domain"),
        ({"domain": "unit"}, "domain"),
    ],
)
def test_bad_input_raises_input_error(kwargs, match):
    args = {"v0": torch.zeros(1, 2, 8, 8, dtype=torch.float64), "t_out": [0.0, 0.1]}
    args.update(kwargs)
    v0, t_out = args.pop("v0"), args.pop("t_out")
    with pytest.raises(InputError, match=match):
        ns.solve(v0, t_out, progress=False, **args)


def test_non_finite_solution_raises_solver_error():
    v = smooth_random(1, 16, 16, seed=5) * 1e200  # finite input whose square overflows
    with pytest.raises(ns.SolverError, match="batch member 0"):
        ns.solve(v, [0.0, 1.0], nu=0.0, progress=False)
