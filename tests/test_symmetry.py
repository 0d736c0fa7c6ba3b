"""Group actions (D4, circular shifts) on scalar and vector fields: group laws, the stored
axis assignment (NS divergence, CE continuity), solver equivariance, and the forward
equivariance error."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pdeinf.config import PDESpec, pde_spec
from pdeinf.errors import InputError
from pdeinf.symmetry import (
    ELEMENTS,
    act,
    aggregate_equivariance,
    axis_assignment_check,
    compose,
    equivariance_error,
    inverse,
)
from pdeinf.symmetry.actions import vector_channels, vector_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHIFTS = [("shift", 3, 0), ("shift", 0, 5), ("shift", -2, 7)]


def _field(pde: str, n: int = 8, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, pde_spec(pde).channels, n, n, generator=g, dtype=torch.float64)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


# ----------------------------------------------------------------------------- group laws


@pytest.mark.parametrize("pde", ["CE", "NS"])
@pytest.mark.parametrize("convention", ["ours", "authors"])
def test_group_laws_on_vector_fields(pde, convention):
    u = _field(pde)
    a = lambda v, g: act(v, g, pde=pde, convention=convention)
    r4 = u
    for _ in range(4):
        r4 = a(r4, "r")
    assert _equal(r4, u)
    assert _equal(a(a(u, "s"), "s"), u)
    # s r s = r^-1 = r3
    assert _equal(a(a(a(u, "s"), "r"), "s"), a(u, "r3"))
    # sr^k = s o r^k, r^k = r applied k times
    for k in range(1, 4):
        rk = u
        for _ in range(k):
            rk = a(rk, "r")
        assert _equal(a(u, f"r{k}" if k > 1 else "r"), rk)
        assert _equal(a(u, f"sr{k}" if k > 1 else "sr"), a(rk, "s"))
    # a non-trivial action: r moves points and mixes vector components
    assert not torch.allclose(a(u, "r"), u)


@pytest.mark.parametrize("pde", ["CE", "NS"])
def test_composition_table_closure_and_inverse(pde):
    u = _field(pde, n=8)
    table = set()
    for g, h in itertools.product(ELEMENTS, ELEMENTS):
        gh = compose(g, h)
        assert gh in ELEMENTS
        table.add((g, h, gh))
        assert _equal(act(act(u, h, pde=pde), g, pde=pde), act(u, gh, pde=pde))
    # a Latin square: each row and column of the Cayley table is a permutation
    for g in ELEMENTS:
        assert sorted(compose(g, h) for h in ELEMENTS) == sorted(ELEMENTS)
        assert sorted(compose(h, g) for h in ELEMENTS) == sorted(ELEMENTS)
        assert compose(g, inverse(g)) == "e" == compose(inverse(g), g)
    assert compose("s", "s") == "e" and compose("r", "r3") == "e"
    assert inverse("r") == "r3" and inverse("sr") == "sr"


@pytest.mark.parametrize("pde", ["CE", "NS"])
def test_shifts_and_mixed_products(pde):
    u = _field(pde, n=8)
    elements = list(ELEMENTS) + SHIFTS + [("affine", "sr", 1, -3)]
    for g, h in itertools.product(elements, elements):
        assert torch.allclose(act(act(u, h, pde=pde), g, pde=pde), act(u, compose(g, h), pde=pde),
                              rtol=0, atol=0)
    for g in elements:
        assert _equal(act(act(u, g, pde=pde), inverse(g), pde=pde), u)
    # a shift moves every channel alike; scalars and components keep their values
    shifted = act(u, ("shift", 2, 3), pde=pde)
    assert _equal(shifted, torch.roll(u, (2, 3), dims=(-2, -1)))
    assert compose(("shift", 1, 2), ("shift", 3, -1)) == ("shift", 4, 1)


def test_vector_rule_matches_the_method_text():
    """r: (v_H, v_W) -> (-r(v_W), r(v_H)); s: v_H -> -s(v_H); scalars only move (CE)."""
    u = _field("CE")
    spec = pde_spec("CE")
    h, w = vector_channels(spec)
    rot = lambda f: torch.rot90(f, 1, dims=(-2, -1))
    ru = act(u, "r", pde="CE")
    assert _equal(ru[:, h], -rot(u[:, w])) and _equal(ru[:, w], rot(u[:, h]))
    for c in (spec.density_channel, spec.energy_channel):
        assert _equal(ru[:, c], rot(u[:, c]))
    su = act(u, "s", pde="CE")
    assert _equal(su[:, h], -torch.flip(u[:, h], dims=(-2,)))
    assert _equal(su[:, w], torch.flip(u[:, w], dims=(-2,)))
    assert vector_matrix("r") == ((0, -1), (1, 0))


def test_vector_components_transform_like_displacements():
    """A uniform flow along +x (W) rotated by r points along the image of +x under r: the
    grid map (y, x) -> (n-1-x, y) sends +x to -y (decreasing row index)."""
    n = 8
    u = torch.zeros(1, 2, n, n, dtype=torch.float64)
    _, w_ch = vector_channels("NS")
    u[:, w_ch] = 1.0
    ru = act(u, "r", pde="NS")
    h_ch = 1 - w_ch
    assert torch.all(ru[:, h_ch] == -1.0) and torch.all(ru[:, w_ch] == 0.0)
    # a blob transported along its velocity: shifting then rotating equals rotating then
    # shifting by the rotated displacement (r shift(a, b) = shift(-b, a) r)
    v = _field("NS", n=n)
    lhs = act(act(v, ("shift", 0, 1), pde="NS"), "r", pde="NS")
    rhs = act(act(v, "r", pde="NS"), ("shift", -1, 0), pde="NS")
    assert _equal(lhs, rhs)


def test_authors_convention_equals_ours_times_minus_v_on_r_r3_s_sr2():
    """With the assignment swapped, the authors' r and s are the true action composed with
    v -> -v; that sign survives in r, r3, s, sr2 and cancels in e, r2, sr, sr3."""
    for pde in ("CE", "NS"):
        u = _field(pde)
        vec = list(pde_spec(pde).vector_axes)
        flip = torch.ones(pde_spec(pde).channels, 1, 1, dtype=u.dtype)
        flip[vec] = -1
        for g in ELEMENTS:
            ours, theirs = act(u, g, pde=pde), act(u, g, pde=pde, convention="authors")
            if g in ("r", "r3", "s", "sr2"):
                assert _equal(theirs, ours * flip), g
            else:
                assert _equal(theirs, ours), g


def test_bad_input():
    u = _field("NS")
    with pytest.raises(InputError, match="element"):
        act(u, "r5", pde="NS")
    with pytest.raises(InputError, match="element"):
        act(u, ("shift", 1.5, 0), pde="NS")
    with pytest.raises(InputError, match="pde"):
        act(u, "r", pde="KdV")
    with pytest.raises(InputError, match="u: expected shape"):
        act(u, "r", pde="CE")
    with pytest.raises(InputError, match="square"):
        act(torch.zeros(1, 2, 4, 6), "r", pde="NS")
    with pytest.raises(InputError, match="convention"):
        act(u, "r", pde="NS", convention="theirs")
    # a non-square grid is fine for s, r2 and shifts
    assert act(torch.zeros(1, 2, 4, 6), "sr2", pde="NS").shape == (1, 2, 4, 6)


# ----------------------------------------------------------------------------- which component is which


def _ns_field(n: int = 16, batch: int = 2, seed: int = 0) -> torch.Tensor:
    from pdeinf.solvers import navier_stokes as ns

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    w = torch.fft.irfft2(torch.fft.rfft2(w) * _lowpass(n), s=(n, n))
    return ns.velocity_from_vorticity(w)


def _lowpass(n: int, width: float = 8.0) -> torch.Tensor:
    ky = torch.fft.fftfreq(n, d=1.0 / n)[:, None]
    kx = torch.fft.rfftfreq(n, d=1.0 / n)[None, :]
    return torch.exp(-(kx**2 + ky**2) / width).to(torch.float64)


def test_ns_divergence_identifies_the_component_axes_and_is_kept_by_d4():
    from pdeinf.solvers import navier_stokes as ns

    v = _ns_field()
    check = axis_assignment_check(v, "NS")
    assert check["ours"] < 1e-12 and check["swapped"] > 0.1
    # our solvers' own divergence agrees with the PDESpec assignment
    assert ns.divergence(v).abs().max() < 1e-12
    for g in list(ELEMENTS) + SHIFTS:
        gv = act(v, g, pde="NS")
        assert axis_assignment_check(gv, "NS")["ours"] < 1e-12, g
        assert ns.divergence(gv).abs().max() < 1e-12, g


def test_ns_divergence_on_generated_data(tmp_path):
    from pdeinf.data.generate import generate
    from pdeinf.data.pdegym import open_dataset

    paths = generate("NS-Gauss", 1, 16, tmp_path, solver_resolution=32, progress=False)
    fields = torch.from_numpy(open_dataset(paths[0]).read(0, [0, 4, 8])).double()  # [1, 3, 2, H, W]
    check = axis_assignment_check(fields, "NS")
    # block averaging aliases a little; the swap is off by O(1)
    assert check["ours"] < 0.05 * check["swapped"], check
    assert check["swapped"] > 0.3


def _euler_initial(n: int = 16, batch: int = 1, seed: int = 0, width: float = 8.0) -> torch.Tensor:
    from pdeinf.solvers.euler import primitive_to_conserved

    g = torch.Generator().manual_seed(seed)

    def smooth(amplitude):
        f = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
        f = torch.fft.irfft2(torch.fft.rfft2(f) * _lowpass(n, width), s=(n, n))
        return amplitude * f / f.abs().amax()

    rho, p = 1.0 + smooth(0.3), 1.0 + smooth(0.3)
    return primitive_to_conserved(rho, smooth(0.5), smooth(0.5), p)


def test_ce_continuity_residual_identifies_the_momentum_axes():
    from pdeinf.solvers import euler

    u0 = _euler_initial(n=32, width=2.0)  # a few modes: central differences resolve them
    dt = 2e-3
    traj = euler.solve(u0, [k * dt for k in range(4)], progress=False)[0]  # [T, 4, H, W]
    check = axis_assignment_check(traj, "CE", dt=dt)
    assert check["ours"] < 0.05 and check["swapped"] > 0.5, check
    assert check["ours"] < 0.05 * check["swapped"]
    with pytest.raises(InputError, match="dt"):
        axis_assignment_check(traj, "CE")


# ----------------------------------------------------------------------------- solver equivariance


@pytest.mark.parametrize("element", list(ELEMENTS[1:]) + [("shift", 5, -3)])
def test_navier_stokes_commutes_with_the_group(element):
    from pdeinf.solvers import navier_stokes as ns

    v0 = _ns_field(n=16, batch=1, seed=3) * 2.0
    t = [0.0, 0.05]
    lhs = ns.solve(act(v0, element, pde="NS"), t, nu=1e-3, progress=False)
    rhs = act(ns.solve(v0, t, nu=1e-3, progress=False), element, pde="NS")
    scale = rhs.abs().max()
    assert (lhs - rhs).abs().max() < 1e-12 * scale
    # and the flow moved (not a trivial check)
    assert (rhs[:, 1] - rhs[:, 0]).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("element", list(ELEMENTS[1:]) + [("shift", 5, -3)])
def test_euler_commutes_with_the_group(element):
    from pdeinf.solvers import euler

    u0 = _euler_initial(n=16, seed=4)
    t = [0.0, 0.02]
    lhs = euler.solve(act(u0, element, pde="CE"), t, progress=False)
    rhs = act(euler.solve(u0, t, progress=False), element, pde="CE")
    scale = rhs.abs().max()
    assert (lhs - rhs).abs().max() < 1e-12 * scale
    assert (rhs[:, 1] - rhs[:, 0]).abs().max() > 1e-3 * scale


def test_authors_convention_breaks_ns_solver_equivariance():
    """The swapped assignment is not a symmetry of the dynamics for r (it is for r2)."""
    from pdeinf.solvers import navier_stokes as ns

    v0 = _ns_field(n=16, batch=1, seed=5) * 2.0
    t = [0.0, 0.1]
    def gap(g):
        lhs = ns.solve(act(v0, g, pde="NS", convention="authors"), t, nu=1e-3, progress=False)
        rhs = act(ns.solve(v0, t, nu=1e-3, progress=False), g, pde="NS", convention="authors")
        return float((lhs - rhs).abs().max() / rhs.abs().max())
    assert gap("r") > 1e-3
    assert gap("r2") < 1e-12


# ----------------------------------------------------------------------------- equivariance error


class _D4EquivariantNet(torch.nn.Module):
    """Exactly D4- and shift-equivariant on CE channels: a circular depthwise convolution with
    one D4-symmetric kernel for every channel (the two momentum components must share it),
    scalar-only channel mixing plus a multiple of the identity on the momentum pair (any other
    2x2 matrix on (m_H, m_W) fails to commute with rotations), a pointwise nonlinearity on
    scalars, and on the vector a norm gate v * sigmoid(|v|^2) plus the central-difference
    gradient of |v|^2 (even in v, so v -> -v is not a symmetry of the model)."""

    def __init__(self, spec: PDESpec, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        k = torch.randn(3, 3, generator=g, dtype=torch.float64)
        k = sum(torch.rot90(m, i) for m in (k, k.T) for i in range(4)) / 8  # D4-symmetric
        self.kernel = k
        self.vec = sorted(spec.vector_axes)
        self.along = {ax: c for c, ax in spec.vector_axes.items()}
        self.scal = [c for c in range(spec.channels) if c not in spec.vector_axes]
        self.mix = torch.randn(len(self.scal), len(self.scal), generator=g, dtype=torch.float64)
        self.bias = torch.randn(len(self.scal), generator=g, dtype=torch.float64)
        self.gain = 0.7

    def forward(self, x):
        c = x.shape[1]
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"),
                                       self.kernel.expand(c, 1, 3, 3), groups=c)
        out = torch.empty_like(y)
        s = torch.einsum("ij,bjhw->bihw", self.mix, y[:, self.scal]) + self.bias[:, None, None]
        out[:, self.scal] = torch.tanh(s)
        v = self.gain * y[:, self.vec]
        q = v.pow(2).sum(1, keepdim=True)
        out[:, self.vec] = v * torch.sigmoid(q)
        for ax, ch in self.along.items():
            out[:, ch] += 0.3 * (torch.roll(q[:, 0], -1, ax) - torch.roll(q[:, 0], 1, ax))
        return out


def _batch(pde: str, n: int = 8, count: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = pde_spec(pde).channels
    x = torch.randn(count, c, n, n, generator=g, dtype=torch.float64)
    y = torch.randn(count, c, n, n, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("pde", ["CE", "NS"])
def test_equivariance_error_is_one_for_an_equivariant_model(pde):
    model = _D4EquivariantNet(pde_spec(pde))
    x, y = _batch(pde)
    for g in list(ELEMENTS) + SHIFTS:
        ratio = equivariance_error(model, x, y, g, pde=pde)
        assert ratio.shape == (5,)
        assert torch.allclose(ratio, torch.ones_like(ratio), rtol=0, atol=1e-12), g
    # the same model judged with the swapped (authors') assignment is not equivariant
    ratio = equivariance_error(model, x, y, "r", pde=pde, convention="authors")
    assert (ratio - 1).abs().max() > 1e-3


def test_equivariance_error_differs_from_one_for_a_generic_conv_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv2d(8, 4, 3, padding=1)).double().eval()
    x, y = _batch("CE")
    assert torch.equal(equivariance_error(net, x, y, "e", pde="CE"), torch.ones(5, dtype=torch.float64))
    for g in ["r", "s", "sr3", ("shift", 2, 1)]:
        ratio = equivariance_error(net, x, y, g, pde="CE")
        assert (ratio - 1).abs().max() > 1e-3, g
    # a non-symmetric kernel with circular padding: shifts are exact, rotations are not
    circ = torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular").double().eval()
    assert torch.allclose(equivariance_error(circ, x, y, ("shift", 3, -2), pde="CE"),
                          torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (equivariance_error(circ, x, y, "r", pde="CE") - 1).abs().max() > 1e-3
    with pytest.raises(InputError, match="inputs"):
        equivariance_error(net, x[:, :2], y[:, :2], "r", pde="CE")


def test_aggregate_equivariance_follows_the_follow_up_recipe():
    import xarray as xr

    rng = np.random.default_rng(0)
    values = rng.lognormal(size=(3, 4, 6, 2))  # seed, batch, example, element
    errors = xr.DataArray(values, dims=("seed", "batch", "example", "element"),
                          coords={"element": ["r", "s"]})
    out = aggregate_equivariance(errors)
    per_seed = np.quantile(values.reshape(3, 24, 2), 0.75, axis=1)  # [seed, element]
    np.testing.assert_allclose(out["per_seed"].transpose("seed", "element").values, per_seed)
    np.testing.assert_allclose(out["median"].values, np.median(per_seed, axis=0))
    np.testing.assert_allclose(out["q1"].values, np.quantile(per_seed, 0.25, axis=0))
    np.testing.assert_allclose(out["iqr"].values, np.quantile(per_seed, 0.75, axis=0)
                               - np.quantile(per_seed, 0.25, axis=0))
    assert list(out["median"].coords["element"].values) == ["r", "s"]
    ones = aggregate_equivariance(xr.ones_like(errors))
    assert float(abs(ones["median"] - 1).max()) == 0 and float(ones["iqr"].max()) == 0
    with pytest.raises(InputError, match="seed"):
        aggregate_equivariance(errors.rename(seed="s"))


# ----------------------------------------------------------------------------- orbit influence


class _TrainableEquivariant(torch.nn.Module):
    """Trainable, exactly D4- and shift-equivariant on CE channels (see _D4EquivariantNet):
    the kernel is symmetrized from a free 3x3 parameter inside forward."""

    def __init__(self, spec: PDESpec, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vec = sorted(spec.vector_axes)
        self.scal = [c for c in range(spec.channels) if c not in spec.vector_axes]
        self.channels = spec.channels
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64))
        self.mix = torch.nn.Parameter(torch.randn(len(self.scal), len(self.scal), generator=g, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.randn(len(self.scal), generator=g, dtype=torch.float64))
        self.gain = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))  # not 0-dim: ParameterLayout.unflatten fails on those

    def forward(self, x):
        k = sum(torch.rot90(m, i) for m in (self.w, self.w.T) for i in range(4)) / 8
        c = x.shape[1]
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"),
                                       k.expand(c, 1, 3, 3), groups=c)
        s = torch.tanh(torch.einsum("ij,bjhw->bihw", self.mix, y[:, self.scal]) + self.bias[:, None, None])
        v = self.gain * y[:, self.vec]
        v = v * torch.sigmoid(v.pow(2).sum(1, keepdim=True))
        parts = {c: s[:, i] for i, c in enumerate(self.scal)} | {c: v[:, i] for i, c in enumerate(self.vec)}
        return torch.stack([parts[c] for c in range(self.channels)], dim=1)


def test_orbit_influence_of_an_equivariant_model_is_the_same_on_every_element():
    from pdeinf.symmetry import orbit_influence

    torch.manual_seed(0)
    model = _TrainableEquivariant(pde_spec("CE")).eval()
    x, y = _batch("CE", n=8, count=6)
    # the model is exactly equivariant
    for g in ELEMENTS:
        assert torch.allclose(equivariance_error(model, x, y, g, pde="CE"), torch.ones(6, dtype=torch.float64),
                              atol=1e-12, rtol=0)
    elements = list(ELEMENTS) + [("shift", 2, 5)]
    out = orbit_influence(model, x, y, elements, pde="CE", keep_matrices=True)
    assert out["diagonal"].dims == ("element", "example") and out.sizes["element"] == 9
    ref = out["pi"].sel(element="e").values
    for label in out["element"].values:
        np.testing.assert_allclose(out["pi"].sel(element=label).values, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(out["diagonal"].values, np.broadcast_to(out["diagonal"].values[0], (9, 6)),
                               rtol=1e-6)
    # the standardized diagonal is the raw diagonal over the row's std (ddof 1) + 1e-6
    std = ref.std(axis=1, ddof=1)
    np.testing.assert_allclose(out["diagonal"].sel(element="e").values, np.diag(ref) / (std + 1e-6), rtol=1e-12)


def _dense_orbit_pi(model, x, y, element, damping):
    """Dense float64 reference of the follow-up formula: Q orthonormal basis of the joint span
    of the ket and bra gradients, eta = Q^T J^T J Q / M + damping I with J at the untransformed
    x, Pi = G_b Q eta^-1 Q^T G_k^T."""
    from torch.func import functional_call, grad, jacrev

    from pdeinf.training.loss import smse

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    flat = lambda d: torch.cat([d[n].reshape(-1) for n in names])

    def loss(p, xi, yi):
        return smse(functional_call(model, p, (xi[None],)), yi[None])[0]

    def rows(xs, ys):
        return torch.stack([flat(grad(loss)(params, xs[i], ys[i])) for i in range(xs.shape[0])])

    gk = rows(x, y)
    gb = rows(act(x, element, pde="NS"), act(y, element, pde="NS"))
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    j = torch.cat([jac[n].reshape(x.numel(), -1) for n in names], dim=1)  # [M, P]
    u, s, _ = torch.linalg.svd(torch.cat([gk, gb]).T, full_matrices=False)
    q = u[:, s > s[0] * 1e-10]
    jq = j @ q
    eta = jq.T @ jq / x.numel() + damping * torch.eye(q.shape[1], dtype=torch.float64)
    return (gb @ q) @ torch.linalg.solve(eta, q.T @ gk.T)


def test_orbit_influence_matches_a_dense_reference():
    from pdeinf.symmetry import orbit_influence

    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), torch.nn.Tanh(),
        torch.nn.Conv2d(3, 2, 3, padding=1),  # zero padding: not shift-equivariant either
    ).double().eval()
    x, y = _batch("NS", n=6, count=5, seed=3)
    elements = ["e", "r", "sr3", ("shift", 1, 2)]
    out = orbit_influence(model, x, y, elements, pde="NS", energy_tol=0.0, keep_matrices=True)
    for g, label in zip(elements, out["element"].values):
        dense = _dense_orbit_pi(model, x, y, g, 1e-6).numpy()
        got = out["pi"].sel(element=label).values
        np.testing.assert_allclose(got, dense, rtol=1e-6, atol=1e-8 * np.abs(dense).max())
    # a generic model couples its orbit differently from itself
    d = out["pi"].values
    assert np.abs(d[1] - d[0]).max() > 1e-3 * np.abs(d[0]).max()
    with pytest.raises(InputError, match="elements"):
        orbit_influence(model, x, y, ["r", "r"], pde="NS")
