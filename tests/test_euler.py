"""Validation of the 2D Euler solver (pdeinf.solvers.euler) and the exact Riemann solver.

Every check is against physics or mathematics: Toro's published star states, Rankine-Hugoniot
conditions, the exact Sod solution, conservation, exact advection, grid convergence and
rotation symmetry.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdeinf.errors import InputError, NumericalError
from pdeinf.solvers.euler import (
    SolverError,
    conserved_to_primitive,
    primitive_to_conserved,
    solve,
)
from pdeinf.solvers.riemann import exact_riemann, star_state

GAMMA = 1.4
SOD_LEFT, SOD_RIGHT = (1.0, 0.0, 1.0), (0.125, 0.0, 0.1)
# Lax & Liu (1998) configuration 3, quadrants NE, NW, SW, SE as (rho, vx, vy, p).
QUADRANTS = (
    (1.5, 0.0, 0.0, 1.5),
    (0.5323, 1.206, 0.0, 0.3),
    (0.138, 1.206, 1.206, 0.029),
    (0.5323, 0.0, 1.206, 0.3),
)


def cell_centres(n: int, length: float = 1.0) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) * (length / n)


def four_quadrant(h: int, w: int, domain=(1.0, 1.0), corner=(0.5, 0.5), dtype=torch.float64):
    """Conserved `[1, 4, h, w]` four-quadrant Riemann state (periodic: also jumps at x = 0, y = 0)."""
    y = cell_centres(h, domain[1])[:, None].expand(h, w)
    x = cell_centres(w, domain[0])[None, :].expand(h, w)
    north, east = y >= corner[1], x >= corner[0]
    fields = []
    for i in range(4):
        ne, nw, sw, se = (q[i] for q in QUADRANTS)
        fields.append(torch.where(north, torch.where(east, ne, nw), torch.where(east, se, sw)))
    return primitive_to_conserved(*fields, gamma=GAMMA)[None].to(dtype)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- exact Riemann


@pytest.mark.parametrize(
    "left, right, p_star, u_star",
    [  # Toro, Riemann Solvers and Numerical Methods for Fluid Dynamics, Table 4.3
        ((1.0, 0.0, 1.0), (0.125, 0.0, 0.1), 0.30313, 0.92745),
        ((1.0, -2.0, 0.4), (1.0, 2.0, 0.4), 0.00189, 0.0),
        ((1.0, 0.0, 1000.0), (1.0, 0.0, 0.01), 460.894, 19.5975),
        ((5.99924, 19.5975, 460.894), (5.99242, -6.19633, 46.0950), 1691.64, 8.68975),
    ],
)
def test_star_state_matches_toro_table(left, right, p_star, u_star):
    p, u = star_state(left, right, GAMMA)
    assert p == pytest.approx(p_star, rel=2e-4, abs=1e-5)
    assert u == pytest.approx(u_star, rel=2e-4, abs=1e-5)


def test_exact_sod_star_densities_and_shock_jump_conditions():
    p_star, u_star = star_state(SOD_LEFT, SOD_RIGHT, GAMMA)
    rho, u, p = exact_riemann(SOD_LEFT, SOD_RIGHT, np.array([u_star - 1e-6, u_star + 1e-6]), GAMMA)
    # Toro Table 4.3 (test 1): rho*_L = 0.42632, rho*_R = 0.26557.
    assert rho == pytest.approx([0.42632, 0.26557], rel=1e-4)
    assert u == pytest.approx([u_star, u_star]) and p == pytest.approx([p_star, p_star])
    # Rankine-Hugoniot across the right shock, in the lab frame with shock speed s.
    s_grid = np.linspace(u_star + 1e-3, 3.0, 200001)
    r, _, _ = exact_riemann(SOD_LEFT, SOD_RIGHT, s_grid, GAMMA)
    s = s_grid[np.argmax(r < 0.2)]  # first point in the undisturbed right state
    rr, ur, pr = SOD_RIGHT
    rs, us, ps = 0.26557, u_star, p_star
    assert rs * (us - s) == pytest.approx(rr * (ur - s), rel=1e-3)  # mass
    assert rs * (us - s) ** 2 + ps == pytest.approx(rr * (ur - s) ** 2 + pr, rel=1e-3)  # momentum


def test_exact_rarefaction_is_isentropic_with_constant_riemann_invariant():
    p_star, u_star = star_state(SOD_LEFT, SOD_RIGHT, GAMMA)
    c_l = math.sqrt(GAMMA)
    tail = u_star - c_l * p_star ** ((GAMMA - 1) / (2 * GAMMA))  # u* - c*_L
    s = np.linspace(-c_l + 1e-9, tail - 1e-9, 50)  # inside the left fan
    rho, u, p = exact_riemann(SOD_LEFT, SOD_RIGHT, s, GAMMA)
    assert np.allclose(p / rho**GAMMA, 1.0, rtol=1e-12)
    c = np.sqrt(GAMMA * p / rho)
    assert np.allclose(u + 2 * c / (GAMMA - 1), 2 * c_l / (GAMMA - 1), rtol=1e-12)
    assert np.allclose(u - c, s, atol=1e-12)  # characteristic through the origin


def test_exact_riemann_refuses_vacuum_and_bad_states():
    with pytest.raises(InputError, match="vacuum"):
        exact_riemann((1.0, -4.0, 0.4), (1.0, 4.0, 0.4), np.zeros(3))
    with pytest.raises(InputError, match="left"):
        exact_riemann((-1.0, 0.0, 1.0), SOD_RIGHT, np.zeros(3))
    with pytest.raises(InputError, match="right"):
        exact_riemann(SOD_LEFT, (1.0, 0.0, float("nan")), np.zeros(3))
    with pytest.raises(InputError, match="gamma"):
        exact_riemann(SOD_LEFT, SOD_RIGHT, np.zeros(3), gamma=1.0)


# ----------------------------------------------------------------------------- conversions


def test_primitive_conserved_round_trip():
    gen = torch.Generator().manual_seed(0)
    rho, p, vx, vy = (torch.rand(2, 5, 6, generator=gen, dtype=torch.float64) for _ in range(4))
    rho, p, vx, vy = 0.5 + rho, 0.1 + p, vx - 0.5, vy - 0.5
    u = primitive_to_conserved(rho, vx, vy, p, gamma=5 / 3)
    assert u.shape == (2, 4, 5, 6)
    assert torch.allclose(u[:, 3], p / (2 / 3) + 0.5 * rho * (vx**2 + vy**2))
    for a, b in zip(conserved_to_primitive(u, gamma=5 / 3), (rho, vx, vy, p)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # scalars broadcast against fields; fields need at least [H, W]
    assert torch.equal(primitive_to_conserved(rho, 0.0, vy, 1.0, gamma=5 / 3)[:, 1], torch.zeros_like(rho))
    with pytest.raises(InputError, match="H, W"):
        primitive_to_conserved(torch.ones(5), 0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- Sod tube


def _sod_initial(n: int) -> torch.Tensor:
    """Sod data on [0, 1) periodic, high state in [0.25, 0.75), constant across 4 cells in the other direction."""
    x = cell_centres(n)
    high = ((x >= 0.25) & (x < 0.75))[None, :].expand(4, n)  # [4 (y), n (x)]
    rho = torch.where(high, 1.0, 0.125)
    p = torch.where(high, 1.0, 0.1)
    zero = torch.zeros_like(rho)
    u0 = primitive_to_conserved(rho, zero, zero, p)  # [4, 4, n]
    return u0[None]


def _sod_tube(n: int, axis: str, t_end: float):
    u0 = _sod_initial(n)[0]
    if axis == "y":
        u0 = u0.transpose(-1, -2)[[0, 2, 1, 3]]  # profile along y, momenta swapped
    out = solve(u0[None].contiguous(), [0.0, t_end], progress=False)[0, -1]
    rho_num, vx, vy, _ = conserved_to_primitive(out)
    if axis == "y":
        rho_num, vx, vy = rho_num.T, vy.T, vx.T  # back to "profile along the last axis"
    # Constant along the transverse direction, no transverse velocity.
    assert torch.allclose(rho_num, rho_num[:1].expand_as(rho_num), rtol=0, atol=1e-13)
    assert vy.abs().max() < 1e-13
    return rho_num[0].numpy(), vx[0].numpy()


def _sod_exact_cell_averages(n: int, t: float, sub: int = 16):
    xs = (np.arange(n * sub) + 0.5) / (n * sub)
    # right half: standard Sod interface at 0.75; left half: its mirror image about x = 0.5
    s = np.where(xs >= 0.5, (xs - 0.75) / t, (0.25 - xs) / t)
    rho, u, _ = exact_riemann(SOD_LEFT, SOD_RIGHT, s, GAMMA)
    u = np.where(xs >= 0.5, u, -u)
    return rho.reshape(n, sub).mean(1), u.reshape(n, sub).mean(1)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_sod_shock_tube_converges_to_exact_solution(axis):
    # t = 0.1: the two mirrored tubes' fastest waves (shock 1.75, fan head -1.18) stay apart.
    t_end = 0.1
    errors = []
    for n in (100, 200, 400):
        rho, vx = _sod_exact_cell_averages(n, t_end)
        rho_num, vx_num = _sod_tube(n, axis, t_end)
        errors.append(np.abs(rho_num - rho).mean())  # L1 over the unit domain
        assert np.abs(vx_num - vx).mean() < 40.0 / n  # velocity right sign/direction too
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # Bound: the contact (jump 0.16) and shock (0.14) of both tubes smear over ~3 cells each:
    # 2 * (0.16 + 0.14) * 3 / 400 = 4.5e-3.
    assert errors[-1] < 4.5e-3, errors
    assert np.all(orders > 0.6), (errors, orders)


@pytest.mark.parametrize("limiter", ["minmod", "vanleer"])
def test_other_limiters_converge_on_sod(limiter):
    errors = []
    for n in (100, 200):
        rho, _ = _sod_exact_cell_averages(n, 0.1)
        u0 = _sod_initial(n)
        out = solve(u0, [0.0, 0.1], limiter=limiter, progress=False)[0, -1, 0, 0].numpy()
        errors.append(np.abs(out - rho).mean())
    # The n = 400 smearing bound above, scaled to n = 200 (x 2), and x 2 for these more diffusive limiters.
    assert errors[1] < 4.5e-3 * 2 * 2, errors
    assert np.log2(errors[0] / errors[1]) > 0.6, errors


# ----------------------------------------------------------------------------- invariants


def test_conservation_to_round_off_on_rectangle():
    u0 = four_quadrant(24, 40, domain=(1.3, 0.9), corner=(0.6, 0.4))
    gen = torch.Generator().manual_seed(1)
    u0 = u0 * (1 + 0.05 * torch.rand(u0.shape, generator=gen, dtype=torch.float64))
    u0 = torch.cat([u0, u0.flip(-1)])
    out = solve(u0, [0.0, 0.05, 0.12], domain=(1.3, 0.9), progress=False)
    totals = out.sum(dim=(-1, -2))  # [B, T, 4]; the cell area is constant
    scale = u0.abs().sum(dim=(-1, -2))[:, None, :]
    assert torch.all((totals - totals[:, :1]).abs() <= 1e-12 * scale)
    assert not torch.allclose(out[:, -1], out[:, 0])  # something did happen


def test_constant_state_stays_constant():
    rho, vx, vy, p = (torch.full((6, 10), v, dtype=torch.float64) for v in (1.3, 0.7, -0.4, 2.1))
    u0 = primitive_to_conserved(rho, vx, vy, p)[None]
    out = solve(u0, [0.0, 0.1, 0.3], domain=(2.0, 0.7), progress=False)
    assert torch.allclose(out, u0[:, None].expand_as(out), rtol=1e-13, atol=0)


def test_rotation_by_90_degrees_commutes_with_solve():
    # (x, y) -> (y, -x): torch.rot90 on (H, W); momenta (mx, my) -> (my, -mx); domain (Ly, Lx).
    u0 = four_quadrant(20, 40, domain=(1.6, 1.0), corner=(0.7, 0.35))  # dx = 0.04, dy = 0.05
    x = cell_centres(40, 1.6)[None, :]
    y = cell_centres(20, 1.0)[:, None]
    u0 = u0 * (1 + 0.1 * torch.sin(2 * math.pi * x / 1.6) * torch.cos(4 * math.pi * y))
    t_out = [0.0, 0.08]

    def rotate(u):
        r = torch.rot90(u, 1, dims=(-2, -1))
        return torch.stack([r[..., 0, :, :], r[..., 2, :, :], -r[..., 1, :, :], r[..., 3, :, :]], dim=-3)

    plain = solve(u0, t_out, domain=(1.6, 1.0), progress=False)
    rotated = solve(rotate(u0), t_out, domain=(1.0, 1.6), progress=False)
    assert rotated.shape == (1, 2, 4, 40, 20)
    assert torch.allclose(rotated, rotate(plain), rtol=0, atol=1e-11)
    assert not torch.allclose(plain[:, 1], plain[:, 0], atol=1e-3)


def test_galilean_boost_moves_the_solution_by_v_t():
    # Adding (vx, vy) = (1, 0.25) on a 1 x 0.5 periodic box with 32 x 32 cells (dx = 2 dy): after
    # t = 0.25, u(x, y) = u_rest(x - 0.25, y - 0.0625), a shift by (8, 4) cells. The discrete scheme
    # is not exactly Galilean invariant, so compare to a tolerance that the x/y-swapped shift exceeds by far.
    n, t, domain = 32, 0.25, (1.0, 0.5)
    u_rest = four_quadrant(n, n, domain=domain, corner=(0.5, 0.25))
    rho, vx, vy, p = conserved_to_primitive(u_rest)
    u_boost = primitive_to_conserved(rho, vx + 1.0, vy + 0.25, p)
    rest = solve(u_rest, [0.0, t], domain=domain, progress=False)[0, -1]
    moving = solve(u_boost, [0.0, t], domain=domain, progress=False)[0, -1]
    expected = torch.roll(rest[0], shifts=(4, 8), dims=(0, 1))
    wrong = torch.roll(rest[0], shifts=(8, 4), dims=(0, 1))
    err = (moving[0] - expected).abs().mean()
    assert err < 0.03
    assert err < 0.5 * (moving[0] - wrong).abs().mean()


# ----------------------------------------------------------------------------- convergence


def test_four_quadrant_converges_under_refinement():
    t_end, n_ref = 0.1, 128
    ref = solve(four_quadrant(n_ref, n_ref), [0.0, t_end], progress=False)[0, -1]
    errors = []
    for n in (16, 32, 64):
        coarse = solve(four_quadrant(n, n), [0.0, t_end], progress=False)[0, -1]
        k = n_ref // n
        ref_avg = torch.nn.functional.avg_pool2d(ref[None], k)[0]  # cell averages on the coarse grid
        errors.append(float((coarse - ref_avg).abs().mean()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] / errors[2] > 2.0, errors


# ----------------------------------------------------------------------------- output times, dtypes


def test_output_times_are_hit_exactly_smooth_advection():
    # rho = 1 + 0.2 sin(2 pi (x - vx t)), vx = 1, p = 1 is an exact solution (pure advection).
    n = 256
    x = cell_centres(n)[None, :].expand(4, n)

    def exact(t):
        # cell averages of the sine over [x - dx/2, x + dx/2]
        dx = 1.0 / n
        avg = torch.sin(2 * math.pi * (x - t)) * math.sin(math.pi * dx) / (math.pi * dx)
        return 1.0 + 0.2 * avg

    rho0 = exact(0.0)
    u0 = primitive_to_conserved(rho0, torch.ones_like(rho0), torch.zeros_like(rho0), torch.ones_like(rho0))
    t_out = [0.0, 0.0123, 0.05, 0.2]
    out = solve(u0[None], t_out, progress=False)
    dt_cfl = 0.4 / ((1.0 + math.sqrt(1.4 / 0.8)) * n)  # the CFL step (c is largest where rho = 0.8)
    for k, t in enumerate(t_out[1:], start=1):
        rho = out[0, k, 0]
        err = (rho - exact(t)).abs().mean()
        assert err < 1e-3
        for off in (-0.5 * dt_cfl, 0.5 * dt_cfl):  # a time off by half a step is visibly worse
            assert err < 0.5 * (rho - exact(t + off)).abs().mean()


def test_float32_matches_float64():
    u64 = four_quadrant(32, 24)
    out64 = solve(u64, [0.0, 0.1], progress=False)
    out32 = solve(u64.float(), [0.0, 0.1], progress=False)
    assert out32.dtype == torch.float32
    assert (out32.double() - out64).abs().mean() < 1e-4


# ----------------------------------------------------------------------------- failures


def test_negative_pressure_raises_solver_error_naming_member_and_time():
    n = 64
    x = cell_centres(n)
    vx = torch.where(x < 0.5, -5.0, 5.0)[None, :].expand(4, n)  # strong double rarefaction -> vacuum
    ones = torch.ones(4, n, dtype=torch.float64)
    bad = primitive_to_conserved(ones, vx, 0 * ones, 0.01 * ones)[None]
    good = primitive_to_conserved(ones, 0 * ones, 0 * ones, ones)[None]
    with pytest.raises(SolverError, match=r"t = [0-9.e-]+ in batch member\(s\) \[1\]"):
        solve(torch.cat([good, bad]), [0.0, 0.1], progress=False)
    assert issubclass(SolverError, NumericalError)


def _good_u0():
    return four_quadrant(8, 8)


@pytest.mark.parametrize(
    "u0, t_out, kwargs, match",
    [
        (_good_u0()[0], [0.0, 0.1], {}, "u0"),  # rank 3
        (_good_u0()[:, :3], [0.0, 0.1], {}, "u0"),  # 3 channels
        (_good_u0().to(torch.int64), [0.0, 0.1], {}, "u0"),
        (_good_u0().index_put((torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1])), torch.tensor(float("nan"), dtype=torch.float64)), [0.0, 0.1], {}, "u0"),
        (_good_u0().index_put((torch.tensor([0]), torch.tensor([3]), torch.tensor([1]), torch.tensor([1])), torch.tensor(float("inf"), dtype=torch.float64)), [0.0, 0.1], {}, "u0"),
        (_good_u0() * torch.tensor([-1.0, 1, 1, 1], dtype=torch.float64)[:, None, None], [0.0, 0.1], {}, "u0"),
        (_good_u0() * torch.tensor([1.0, 1, 1, 0.01], dtype=torch.float64)[:, None, None], [0.0, 0.1], {}, "u0"),
        (_good_u0(), [0.1, 0.2], {}, "t_out"),
        (_good_u0(), [0.0, 0.2, 0.2], {}, "t_out"),
        (_good_u0(), [0.0, 0.2, 0.1], {}, "t_out"),
        (_good_u0(), [[0.0, 0.1]], {}, "t_out"),
        (_good_u0(), [0.0, float("nan")], {}, "t_out"),
        (_good_u0(), [], {}, "t_out"),
        (_good_u0(), [0.0, 0.1], {"domain": (1.0, 0.0)}, "domain"),
        (_good_u0(), [0.0, 0.1], {"domain": (-1.0, 1.0)}, "domain"),
        (_good_u0(), [0.0, 0.1], {"domain": (1.0,)}, "domain"),
        (_good_u0(), [0.0, 0.1], {"gamma": 1.0}, "gamma"),
        (_good_u0(), [0.0, 0.1], {"gamma": float("nan")}, "gamma"),
        (_good_u0(), [0.0, 0.1], {"cfl": 0.0}, "cfl"),
        (_good_u0(), [0.0, 0.1], {"cfl": 1.5}, "cfl"),
        (_good_u0(), [0.0, 0.1], {"limiter": "superbee!"}, "limiter"),
    ],
)
def test_bad_input_raises_input_error(u0, t_out, kwargs, match):
    with pytest.raises(InputError, match=match):
        solve(u0, t_out, progress=False, **kwargs)
