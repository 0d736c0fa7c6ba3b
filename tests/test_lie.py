"""Lie derivative (Gruver et al. 2023) of models under translations and rotations: exact zeros,
analytic values, finite differences of the group action, the discrete shift error, and the
layer-wise decomposition summing to the total."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.symmetry import act, lie_derivative
from pdeinf.symmetry.actions import vector_channels
from pdeinf.symmetry.lie import LieDecomposition, fourier_shift, rms, rotate, transform

pytestmark = pytest.mark.usefixtures("one_torch_thread", "float64_torch")


def _smooth(shape, seed=0, width=8.0):
    """Random band-limited fields (Gaussian spectrum, no Nyquist content to speak of)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*shape, generator=g, dtype=torch.float64)
    n_h, n_w = shape[-2:]
    ky = torch.fft.fftfreq(n_h, d=1.0 / n_h)[:, None]
    kx = torch.fft.rfftfreq(n_w, d=1.0 / n_w)[None, :]
    filt = torch.exp(-(kx**2 + ky**2) / width).double()
    return torch.fft.irfft2(torch.fft.rfft2(u) * filt, s=(n_h, n_w))


def _rough(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _circ(cin, cout, k=3, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="circular", bias=bias).double().eval()


class _PositionBias(nn.Module):
    """A linear circular convolution plus a fixed position-dependent bias field b(y, x)."""

    def __init__(self, c, n, seed=0):
        super().__init__()
        self.conv = _circ(c, c, seed=seed)
        self.register_buffer("b", _smooth((c, n, n), seed=seed + 1, width=2.0))

    def forward(self, x):
        return self.conv(x) + self.b


# ----------------------------------------------------------------------------- the actions


def _no_nyquist(u):
    """`u` without its Nyquist row and column (even grids)."""
    uh = torch.fft.rfft2(u)
    uh[..., u.shape[-2] // 2, :] = 0
    uh[..., -1] = 0
    return torch.fft.irfft2(uh, s=u.shape[-2:])


def test_fourier_shift_is_a_group_and_matches_roll():
    u = _no_nyquist(_rough((2, 3, 16, 16)))
    assert torch.allclose(fourier_shift(fourier_shift(u, 0.3, -1), 0.45, -1), fourier_shift(u, 0.75, -1),
                          atol=1e-13, rtol=0)
    for t, dim in ((1, -1), (3, -2), (-2, -1)):
        assert torch.allclose(fourier_shift(u, float(t), dim), torch.roll(u, t, dim), atol=1e-12, rtol=0)
    # a rough field differs from roll only in the (unmoved) Nyquist mode
    r = _rough((1, 1, 16, 16))
    diff = fourier_shift(r, 1.0, -1) - torch.roll(r, 1, -1)
    spec = torch.fft.rfft(diff, dim=-1)
    assert spec[..., :-1].abs().max() < 1e-12 and spec[..., -1].abs().max() > 1e-3


def test_rotation_by_shears_approximates_rot90_and_has_the_analytic_generator():
    n = 32
    c = (n - 1) / 2
    yy = (torch.arange(n, dtype=torch.float64) - c)[:, None]
    xx = (torch.arange(n, dtype=torch.float64) - c)[None, :]
    sx, sy = n / 12, n / 15
    bump = torch.exp(-xx**2 / (2 * sx**2) - yy**2 / (2 * sy**2))[None, None]  # [1, 1, n, n]
    rotated = rotate(bump, math.pi / 2)
    reference = torch.rot90(bump, 1, dims=(-2, -1))
    err = float((rotated - reference).abs().max() / reference.abs().max())
    assert err < 1e-6, err  # the number quoted in pdeinf/symmetry/lie.py
    # generator: d/dtheta (g_theta u) at 0 = X du/dY - Y du/dX
    theta = torch.zeros(())
    _, d = torch.func.jvp(lambda t: rotate(bump, t), (theta,), (torch.ones(()),))
    analytic = xx * yy * (1 / sx**2 - 1 / sy**2) * bump
    gen_err = float((d - analytic).abs().max() / analytic.abs().max())
    assert gen_err < 1e-7, gen_err
    # vector components turn with the grid: matches act(., "r") on a localized NS field
    v = torch.cat([bump * 0.5, -bump * yy / n], dim=1)
    spec = pde_spec("NS")
    pair = vector_channels(spec)
    assert torch.allclose(rotate(v, math.pi / 2, pair=pair), act(v, "r", pde="NS"), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- translations


@pytest.mark.parametrize("generator", ["x", "y"])
def test_linear_circular_convolution_has_zero_translation_lie_derivative(generator):
    model = _circ(4, 4, k=5)
    x = _rough((3, 4, 16, 16))  # rough inputs too: linear shift-invariant maps commute exactly
    lie = lie_derivative(model, x, generator, pde="CE")
    assert lie.shape == x.shape
    assert lie.abs().max() < 1e-10


@pytest.mark.parametrize("generator", ["x", "y"])
def test_nonlinear_conv_net_aliases(generator):
    model = nn.Sequential(_circ(2, 8, seed=1), nn.Tanh(), _circ(8, 2, seed=2)).eval()
    x = _rough((2, 2, 16, 16))
    lie = lie_derivative(model, x, generator, pde="NS")
    with torch.no_grad():
        scale = rms(model(x))
    assert (rms(lie) / scale).min() > 1e-3


def test_position_dependent_bias_gives_its_gradient():
    """g_{-t}(conv(g_t x) + b) = conv(x) + b(. + t): L = +d b / dx (per cell), exactly."""
    n = 16
    model = _PositionBias(2, n)
    x = _rough((2, 2, n, n))
    for generator, dim in (("x", -1), ("y", -2)):
        lie = lie_derivative(model, x, generator, pde="NS")
        b = model.b.expand_as(x)
        _, db = torch.func.jvp(lambda t, b=b, dim=dim: fourier_shift(b, -t, dim), (torch.zeros(()),),
                               (torch.ones(()),))
        assert torch.allclose(lie, db, atol=1e-12, rtol=0)
        assert rms(lie).min() > 1e-2


@pytest.mark.parametrize("generator", ["x", "y", "rotation"])
def test_lie_derivative_equals_central_finite_difference_of_the_group_action(generator):
    model = nn.Sequential(_circ(4, 6, seed=3), nn.Tanh(), _circ(6, 4, seed=4)).eval()
    x = _smooth((2, 4, 16, 16), seed=5)
    lie = lie_derivative(model, x, generator, pde="CE")
    spec = pde_spec("CE")
    pair = vector_channels(spec)

    def conj(t):
        with torch.no_grad():
            return transform(model(transform(x, t, generator, pair=pair)), -t, generator, pair=pair)

    h = 1e-4
    fd = (conj(h) - conj(-h)) / (2 * h)
    assert float((lie - fd).abs().max() / lie.abs().max()) < 1e-6
    assert float(lie.abs().max()) > 1e-4


def test_lie_derivative_is_consistent_with_the_discrete_shift_error():
    """For band-limited inputs and a smooth symmetry breaking (a low-mode bias), the error of
    a one-cell roll, g^-1 f(g x) - f(x), approaches the Lie derivative times the shift."""
    n = 64
    model = _PositionBias(2, n, seed=7)
    model.b = _smooth((2, n, n), seed=8, width=1.0)
    x = _smooth((1, 2, n, n), seed=9)
    lie = lie_derivative(model, x, "x", pde="NS")
    with torch.no_grad():
        base = model(x)
        for a in (1, 2):
            moved = act(model(act(x, ("shift", 0, a), pde="NS")), ("shift", 0, -a), pde="NS")
            err = moved - base
            rel = float((err - a * lie).norm() / (a * lie).norm())
            assert rel < 0.1 * a, (a, rel)


# ----------------------------------------------------------------------------- rotation


def test_rotation_lie_derivative_of_pointwise_maps():
    """A pointwise linear map that mixes scalars freely and scales the vector by c I commutes
    with rotations (zero); an anisotropic 2x2 map on the vector does not."""
    spec = pde_spec("CE")
    vec = sorted(spec.vector_axes)
    scal = [c for c in range(4) if c not in spec.vector_axes]
    w = torch.zeros(4, 4, 1, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for i in scal:
        for j in scal:
            w[i, j] = torch.randn((), generator=g, dtype=torch.float64)
    for i in vec:
        w[i, i] = 0.8
    iso = nn.Conv2d(4, 4, 1, bias=False).double().eval()
    iso.weight.data = w
    x = _smooth((2, 4, 16, 16), seed=1)
    assert lie_derivative(iso, x, "rotation", pde="CE").abs().max() < 1e-10
    w2 = w.clone()
    w2[vec[0], vec[1]] = 0.5  # m_a picks up m_b: not a rotation-commuting matrix
    aniso = nn.Conv2d(4, 4, 1, bias=False).double().eval()
    aniso.weight.data = w2
    assert rms(lie_derivative(aniso, x, "rotation", pde="CE")).min() > 1e-3


# ----------------------------------------------------------------------------- layer-wise


@pytest.mark.parametrize("generator", ["x", "y", "rotation"])
def test_layerwise_contributions_sum_to_the_total(generator):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, stride=2, padding=1, padding_mode="circular"), nn.Tanh(),
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(6, 2, 3, padding=1, padding_mode="circular"),
    ).double().eval()
    x = _smooth((2, 2, 16, 16), seed=2)
    out = lie_derivative(model, x, generator, pde="NS", layerwise=True)
    assert isinstance(out, LieDecomposition)
    assert list(out.contributions) == ["0", "1", "2", "3"]
    total = lie_derivative(model, x, generator, pde="NS")
    assert torch.allclose(out.total, total, atol=0, rtol=0)
    summed = sum(out.contributions.values())
    assert float((summed - out.total).abs().max() / out.total.abs().max()) < 1e-10
    assert float(out.remainder.abs().max() / out.total.abs().max()) < 1e-10
    norms = out.norms()
    assert set(norms) == {"total", "0", "1", "2", "3", "remainder"}
    if generator != "rotation":
        # the full-resolution circular convolution is exactly shift-equivariant
        assert float(out.contributions["3"].abs().max()) < 1e-10


def test_layerwise_reports_what_hooks_do_not_cover():
    """F.tanh called inside forward is outside every module: its share is the remainder."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _circ(2, 4, seed=1), _circ(4, 2, seed=2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    x = _rough((1, 2, 16, 16))
    out = lie_derivative(Net().eval(), x, "x", pde="NS", layerwise=True)
    assert list(out.contributions) == ["a", "b"]
    assert float(sum(out.contributions.values()).abs().max()) < 1e-10  # linear convs commute
    assert torch.allclose(out.remainder, out.total, atol=1e-10, rtol=0)
    assert rms(out.remainder).min() > 1e-3


def test_bad_arguments():
    model = _circ(2, 2)
    x = _rough((1, 2, 8, 8))
    with pytest.raises(InputError, match="generator"):
        lie_derivative(model, x, "scale", pde="NS")
    with pytest.raises(InputError, match="inputs"):
        lie_derivative(model, x, "x", pde="CE")
    with pytest.raises(InputError, match="square"):
        lie_derivative(model, _rough((1, 2, 8, 12)), "rotation", pde="NS")
    with pytest.raises(InputError, match="layers"):
        lie_derivative(nn.Sequential(model), x, "x", pde="NS", layerwise=True, layers=["nope"])
