"""Initial-condition samplers: structure, physics of the fields, determinism, ranges, bad input."""

import math

import numpy as np
import pytest
import torch

from pdeinf.errors import InputError
from pdeinf.solvers import initial_conditions as ic
from pdeinf.solvers import navier_stokes as ns

CE = ("CE-RP", "CE-CRP", "CE-RPUI")
NS = ("NS-BB", "NS-Gauss", "NS-Sines")
GAMMA = 1.4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def primitives(u):
    """(rho, vx, vy, p) from conserved [..., 4, H, W], computed independently of the module."""
    rho = u[..., 0, :, :]
    vx, vy = u[..., 1, :, :] / rho, u[..., 2, :, :] / rho
    p = (GAMMA - 1) * (u[..., 3, :, :] - 0.5 * rho * (vx**2 + vy**2))
    return rho, vx, vy, p


def states(u):
    """Distinct (rho, vx, vy, p) tuples of one sample [4, H, W]."""
    return {tuple(np.round(c.numpy(), 12)) for c in u.reshape(4, -1).T}


@pytest.mark.parametrize("dataset", CE + NS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_finiteness(dataset, dtype):
    out = ic.sample(dataset, 2, 16, seed=0, dtype=dtype)
    assert out.shape == (2, 4 if dataset in CE else 2, 16, 16)
    assert out.dtype == dtype
    assert bool(torch.isfinite(out).all())
    assert float(out.std()) > 0


@pytest.mark.parametrize("dataset", CE + NS)
def test_deterministic_and_sample_index_stable(dataset):
    a = ic.sample(dataset, 4, 16, seed=7)
    b = ic.sample(dataset, 4, 16, seed=7)
    assert torch.equal(a, b)
    first = ic.sample(dataset, 2, 16, seed=7)
    rest = ic.sample(dataset, 2, 16, seed=7, start=2)
    torch.testing.assert_close(torch.cat((first, rest)), a, rtol=0, atol=1e-12)
    other = ic.sample(dataset, 4, 16, seed=8)
    assert float((other - a).abs().max()) > 1e-3
    assert float((a[0] - a[1]).abs().max()) > 1e-3  # samples are not copies of each other


@pytest.mark.parametrize("dataset", NS)
def test_ns_fields_are_divergence_free(dataset):
    v = ic.sample(dataset, 3, 32, seed=1)
    assert float(ns.divergence(v).abs().max()) < 1e-10 * max(1.0, float(v.abs().max()) * 32)
    # the raw NS-Sines formula is not divergence-free; the projection is what makes it so
    assert float(ns.kinetic_energy(v).min()) > 1e-4


@pytest.mark.parametrize("dataset", CE)
def test_ce_positive_and_within_ranges(dataset):
    u = ic.sample(dataset, 6, 32, seed=3)
    rho, vx, vy, p = primitives(u)
    r = ic.DEFAULT_RANGES[dataset]
    tol = 1e-12
    for field, key in ((rho, "rho"), (vx, "vx"), (vy, "vy"), (p, "pressure")):
        lo, hi = r[key]
        assert float(field.min()) >= lo - tol and float(field.max()) <= hi + tol, key
    assert float(rho.min()) > 0 and float(p.min()) > 0


def test_ce_overridden_ranges_are_respected():
    u = ic.sample("CE-RPUI", 4, 16, seed=0, **ic.PAPER_RANGES["CE-RPUI"])
    rho, vx, _vy, p = primitives(u)
    assert 1.0 <= float(rho.min()) and float(rho.max()) <= 3.0
    assert 5.0 - 1e-9 <= float(p.min()) and float(p.max()) <= 7.0 + 1e-9
    assert float(vx.abs().max()) <= 10.0 + 1e-12 and float(vx.abs().max()) > 1.0


def test_ce_rp_is_four_constant_quadrants_with_drawn_states():
    res = 16
    u = ic.sample("CE-RP", 3, res, seed=5)
    for k in range(3):
        prm = ic.sample_parameters("CE-RP", 5, k)
        assert len(states(torch.stack(primitives(u[k])))) == 4
        rho = primitives(u[k])[0]
        half = res // 2
        quadrants = [rho[:half, :half], rho[:half, half:], rho[half:, :half], rho[half:, half:]]
        # label = iy * 2 + ix: (y low, x low), (y low, x high), (y high, x low), (y high, x high)
        for q, expected in zip(quadrants, prm["rho"]):
            assert torch.allclose(q, torch.full_like(q, expected), rtol=1e-14, atol=0)


def test_ce_crp_has_at_most_nine_states_and_curved_interfaces():
    u = ic.sample("CE-CRP", 4, 64, seed=2)
    curved = 0
    for k in range(4):
        prim = torch.stack(primitives(u[k]))
        assert 2 <= len(states(prim)) <= 9
        # an interface that is not a grid line: some row has a state change at different x
        rho = prim[0]
        jumps = (rho != torch.roll(rho, 1, dims=1)).nonzero()[:, 1]
        curved += int(len(torch.unique(jumps)) > 3)
    assert curved > 0


def test_ce_rpui_interface_perturbation_is_small():
    res = 128
    amp = 0.01  # p = 1: one sine of amplitude |alpha| <= 0.01 per direction
    u = ic.sample("CE-RPUI", 4, res, seed=4)
    c = (torch.arange(res, dtype=torch.float64) + 0.5) / res
    near_x = torch.stack([(c - line).abs() for line in (0.0, 0.5, 1.0)]).amin(0) <= amp
    for k in range(4):
        prim = torch.stack(primitives(u[k]))
        assert len(states(prim)) <= 4
        prm = ic.sample_parameters("CE-RPUI", 4, k)
        straight = torch.as_tensor(prm["rho"])[
            (c[:, None] >= 0.5).long() * 2 + (c[None, :] >= 0.5).long()
        ]
        differs = prim[0] != straight
        # every cell that differs from the straight 2 x 2 layout is within amp of a straight line
        assert bool((near_x[None, :] | near_x[:, None])[differs].all())
        assert float(differs.double().mean()) < 4 * amp * 2  # a thin band only


def test_ns_gauss_velocity_matches_stream_function_of_gaussian_sum():
    res, seed = 64, 11
    kw = {"sigma": (0.05, 0.1), "n_gaussians": 7}  # resolved, so the spectral identity is exact
    v = ic.sample("NS-Gauss", 2, res, seed=seed, **kw)
    s = np.arange(res) / res
    y, x = np.meshgrid(s, s, indexing="ij")
    for k in range(2):
        prm = ic.sample_parameters("NS-Gauss", seed, k, **kw)
        w = np.zeros((res, res))
        for a, sig, xc, yc in zip(prm["alpha"], prm["sigma"], prm["xc"], prm["yc"]):
            for nx in range(-2, 3):  # brute-force periodic images
                for ny in range(-2, 3):
                    r2 = (x - xc + nx) ** 2 + (y - yc + ny) ** 2
                    w += a / sig * np.exp(-r2 / (2 * sig**2))
        w -= w.mean()
        got = ns.vorticity(v[k]).numpy()
        assert np.abs(got - w).max() < 1e-9 * np.abs(w).max()
        assert abs(float(v[k].mean(dim=(-2, -1)).abs().max())) < 1e-12  # zero-mean velocity


def test_ns_sines_is_projection_of_paper_formula():
    res, seed = 32, 3
    v = ic.sample("NS-Sines", 1, res, seed=seed)[0]
    prm = ic.sample_parameters("NS-Sines", seed, 0)
    s = np.arange(res) / res
    y, x = np.meshgrid(s, s, indexing="ij")
    u0 = np.zeros((res, res))
    v0 = np.zeros((res, res))
    for i in range(1, 11):
        for j in range(1, 11):
            c = prm["alpha"][i - 1, j - 1] / math.sqrt(2 * math.pi * (i + j))
            ax = 2 * math.pi * i * x + prm["beta"][i - 1, j - 1]
            ay = 2 * math.pi * j * y + prm["gamma"][i - 1, j - 1]
            u0 += c * np.sin(ax) * np.sin(ay)
            v0 += c * np.cos(ax) * np.cos(ay)
    raw = torch.as_tensor(np.stack((u0, v0)))
    assert float(ns.divergence(raw).abs().max()) > 0.1  # the formula itself is not solenoidal
    torch.testing.assert_close(v, ns.project(raw), rtol=0, atol=1e-12)
    assert 0.1 < float(v.std()) < 1.0


def test_ns_bb_is_the_pre_evolved_brownian_field():
    res, seed = 16, 9
    raw = ic.sample("NS-BB", 2, res, seed=seed, evolve_time=0.0)
    evolved = ic.sample("NS-BB", 2, res, seed=seed)
    again = ns.solve(raw, [0.5], viscosity="spectral", progress=False)[:, 0]
    torch.testing.assert_close(evolved, again, rtol=0, atol=1e-12)
    assert float((evolved - raw).abs().max()) > 1e-3
    # rough field: spectrum decays like |k|^-(H+1) = |k|^-1.5 in amplitude, so the
    # high half of the spectrum carries a noticeable share of the energy
    vh = torch.fft.rfft2(raw, norm="forward").abs() ** 2
    m = (
        torch.fft.fftfreq(res, d=1 / res)
        .abs()[:, None]
        .maximum(torch.fft.rfftfreq(res, d=1 / res)[None])
    )
    assert float(vh[..., m >= res // 4].sum() / vh.sum()) > 0.02


def test_worst_star_pressure_flags_vacuum():
    p_star, p_min = ic.worst_star_pressure("CE-RP")
    assert p_star >= 0.01 * p_min  # the raised default lower bound keeps clear of vacuum
    p_star_low, p_min_low = ic.worst_star_pressure("CE-RP", pressure=(0.02, 0.4))
    assert p_star_low < 1e-4 * p_min_low
    assert ic.worst_star_pressure("CE-RPUI", **ic.PAPER_RANGES["CE-RPUI"])[0] == 0.0


def test_default_and_paper_ranges_cover_all_datasets():
    assert set(ic.DEFAULT_RANGES) == set(CE + NS) == set(ic.PAPER_RANGES)
    for name in CE + NS:
        assert set(ic.DEFAULT_RANGES[name]) == set(ic.PAPER_RANGES[name])


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("CE-XX", 2, 16), {"seed": 0}, "dataset"),
        (("CE-RP", 0, 16), {"seed": 0}, "n"),
        (("CE-RP", 2, 0), {"seed": 0}, "resolution"),
        (("CE-RP", 2, -4), {"seed": 0}, "resolution"),
        (("CE-RP", 2, 16), {"seed": -1}, "seed"),
        (("CE-RP", 2, 16), {"seed": 0, "dtype": torch.int32}, "dtype"),
        (("CE-RP", 2, 16), {"seed": 0, "colour": (0, 1)}, "colour"),
        (("CE-RP", 2, 16), {"seed": 0, "rho": (1.0, 0.5)}, "rho"),
        (("CE-RP", 2, 16), {"seed": 0, "pressure": (0.0, 1.0)}, "pressure"),
        (("CE-RP", 2, 16), {"seed": 0, "vx": (float("nan"), 1.0)}, "vx"),
        (("NS-Gauss", 2, 16), {"seed": 0, "sigma": (0.0, 0.1)}, "sigma"),
        (("NS-Sines", 2, 16), {"seed": 0, "modes": 0}, "modes"),
        (("NS-BB", 2, 16), {"seed": 0, "viscosity": "magic"}, "viscosity"),
    ],
)
def test_bad_input_raises_input_error(args, kwargs, match):
    with pytest.raises(InputError, match=match):
        ic.sample(*args, **kwargs)
