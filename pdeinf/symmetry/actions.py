"""Group actions on fields `[..., C, H, W]` (x along W, y along H; docs/method.md section 7):
D4 `ELEMENTS` (`r` = `torch.rot90(u, 1, dims=(-2, -1))`, `s` = flip along H, `sr^k = s o r^k`),
circular shifts `("shift", a, b)` (`torch.roll` by a along H, b along W) and their products
`("affine", d4_name, a, b)` = shift(a, b) o d4_name. Scalars move, `(g.u)(p) = u(g^-1 p)`;
the vector components `(v_H, v_W)` of `pde_spec(pde).vector_axes` also rotate/reflect
(`r: (v_H, v_W) -> (-r(v_W), r(v_H))`, `s: v_H -> -s(v_H)`). Convention `"authors"` reproduces
the follow-up code (lanl/PDEHats `lie.jl`), which takes the first vector channel along H: with
our data the true action times `v -> -v` for r, r3, s, sr2. Imports only config and errors.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from pdeinf.config import PDESpec, pde_spec
from pdeinf.errors import InputError

ELEMENTS: tuple[str, ...] = ("e", "r", "r2", "r3", "s", "sr", "sr2", "sr3")
CONVENTIONS: tuple[str, ...] = ("ours", "authors")


@dataclass(frozen=True)
class _Affine:
    """`g = shift(a, b) o s^f o r^k` (k in 0..3, f in 0..1)."""

    k: int
    f: int
    a: int = 0
    b: int = 0

    @property
    def d4(self) -> str:
        return ("s" if self.f else "") + ("r" if self.k else "") + (str(self.k) if self.k > 1 else "") or "e"

    def element(self):
        if self.a == 0 and self.b == 0:
            return self.d4
        if self.k == 0 and self.f == 0:
            return ("shift", self.a, self.b)
        return ("affine", self.d4, self.a, self.b)


def _linear(k: int, f: int):
    """Integer matrix of `s^f r^k` on (dy, dx) / (v_H, v_W): r = ((0, -1), (1, 0)) and s
    negates the first row."""
    c, s = (1, 0, -1, 0)[k], (0, 1, 0, -1)[k]
    return ((-c, s) if f else (c, -s), (s, c))


def vector_matrix(element) -> tuple[tuple[int, int], tuple[int, int]]:
    """2x2 integer matrix of the element's linear part on `(v_H, v_W)` (shifts: identity)."""
    g = parse_element(element)
    return _linear(g.k, g.f)


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"element: {what} must be an integer, got {value!r}")
    return int(value)


def parse_element(element) -> _Affine:
    """Canonical form of a D4 name, `("shift", a, b)` or `("affine", name, a, b)`; InputError else."""
    expected = f"expected one of {', '.join(ELEMENTS)}, ('shift', a, b) or ('affine', name, a, b)"
    if isinstance(element, _Affine):
        return element
    if isinstance(element, str):
        if element not in ELEMENTS:
            raise InputError(f"element: unknown group element {element!r}; {expected}")
        f = int(element.startswith("s"))
        rest = element[f:]
        return _Affine(0 if rest in ("", "e") else (1 if rest == "r" else int(rest[1:])), f)
    if isinstance(element, (tuple, list)) and element:
        if element[0] == "shift" and len(element) == 3:
            return _Affine(0, 0, _int(element[1], "shift a"), _int(element[2], "shift b"))
        if element[0] == "affine" and len(element) == 4 and element[1] in ELEMENTS:
            d = parse_element(element[1])
            return _Affine(d.k, d.f, _int(element[2], "shift a"), _int(element[3], "shift b"))
    raise InputError(f"element: cannot read {element!r}; {expected}")


def compose(g, h):
    """The element `g o h` (apply h first, then g): `act(act(u, h), g) == act(u, compose(g, h))`."""
    g, h = parse_element(g), parse_element(h)
    # T(t1) D1 T(t2) D2 = T(t1 + D1 t2) D1 D2, and s^f1 r^k1 s^f2 r^k2 = s^(f1+f2) r^((-1)^f2 k1 + k2)
    m = _linear(g.k, g.f)
    a = g.a + m[0][0] * h.a + m[0][1] * h.b
    b = g.b + m[1][0] * h.a + m[1][1] * h.b
    return _Affine(((-g.k if h.f else g.k) + h.k) % 4, (g.f + h.f) % 2, a, b).element()


def inverse(g):
    """The element `g^-1`: `act(act(u, g), inverse(g)) == u`."""
    p = parse_element(g)
    # (T(t) D)^-1 = D^-1 T(-t); for D = s^f r^k, D^-1 = r^-k s^f = s^f r^((-1)^(f+1) k)
    return compose(_Affine(p.k % 4 if p.f else (-p.k) % 4, p.f), _Affine(0, 0, -p.a, -p.b))


def resolve_spec(pde) -> PDESpec:
    """`pde` as a PDESpec: a PDE name ("CE", "NS") or a PDESpec (e.g. a custom scalar one)."""
    if isinstance(pde, PDESpec):
        return pde
    if not isinstance(pde, str):
        raise InputError(f"pde: expected a PDE name or a PDESpec, got {type(pde).__name__}")
    return pde_spec(pde)


def vector_channels(pde, convention: str = "ours") -> tuple[int, int] | None:
    """`(channel along H, channel along W)` of the PDE's velocity/momentum pair under
    `convention`, or None when every channel is a scalar."""
    if convention not in CONVENTIONS:
        raise InputError(f"convention: unknown {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    spec = resolve_spec(pde)
    axes = dict(spec.vector_axes)
    if not axes:
        return None
    if sorted(axes.values()) != [-2, -1]:
        raise InputError(f"pde: {spec.name} vector_axes {axes} is not one component per grid axis")
    pair = tuple(sorted(axes, key=axes.get))  # (along H, along W)
    # the authors' "vx" (first vector channel) lies along the first array axis (H)
    return tuple(sorted(pair)) if convention == "authors" else pair


def _check_field(u, spec: PDESpec) -> torch.Tensor:
    if not isinstance(u, torch.Tensor):
        raise InputError(f"u: expected a torch tensor [..., C, H, W], got {type(u).__name__}")
    if u.ndim < 3 or u.shape[-3] != spec.channels:
        raise InputError(f"u: expected shape [..., {spec.channels}, H, W] ({spec.name} channels "
                         f"{', '.join(spec.channel_names)}), got {tuple(u.shape)}")
    return u


def check_batch(spec: PDESpec, inputs, targets=None, *, square: bool = False) -> None:
    """InputError unless `inputs` (and `targets`, of the same shape) are non-empty tensors
    `[N, C, H, W]` with the channels of `spec`; `square`: H == W too (rotations)."""
    for name, x in (("inputs", inputs), ("targets", targets))[:1 if targets is None else 2]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != spec.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{name}: expected a tensor [N, {spec.channels}, H, W] for {spec.name}, "
                             f"got {shape}")
    if targets is not None and inputs.shape != targets.shape:
        raise InputError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ in shape")
    if inputs.shape[0] == 0:
        raise InputError("inputs: the batch is empty")
    if square and inputs.shape[-1] != inputs.shape[-2]:
        raise InputError(f"inputs: rotations need a square grid, got {tuple(inputs.shape[-2:])}")


def mix_vector(u: torch.Tensor, pair: tuple[int, int], m) -> torch.Tensor:
    """`u` `[..., C, H, W]` with the vector `(v_H, v_W)` in the channels `pair` (along H, along
    W) replaced by `m (v_H, v_W)` for a 2x2 matrix `m` (numbers or tensors); other channels kept."""
    ch_h, ch_w = pair
    v_h, v_w = u[..., ch_h, :, :], u[..., ch_w, :, :]
    new = {ch_h: m[0][0] * v_h + m[0][1] * v_w, ch_w: m[1][0] * v_h + m[1][1] * v_w}
    return torch.stack([new.get(c, u[..., c, :, :]) for c in range(u.shape[-3])], dim=-3)


def act(u: torch.Tensor, element, *, pde, convention: str = "ours") -> torch.Tensor:
    """`g . u` for `u` `[..., C, H, W]` (same shape, dtype, device; differentiable); `element`
    a D4 name, `("shift", a, b)` or `("affine", name, a, b)`; `pde` "CE", "NS" or a PDESpec;
    `convention` "ours" or "authors". Rotations need H == W."""
    g = parse_element(element)
    spec = resolve_spec(pde)
    pair = vector_channels(spec, convention)
    out = _check_field(u, spec)
    if g.k % 2 and u.shape[-1] != u.shape[-2]:
        raise InputError(f"u: rotation {g.d4!r} needs a square grid, got H x W = {tuple(u.shape[-2:])}")
    if g.k:
        out = torch.rot90(out, g.k, dims=(-2, -1))
    if g.f:
        out = torch.flip(out, dims=(-2,))
    if pair is not None and (g.k or g.f):
        out = mix_vector(out, pair, _linear(g.k, g.f))
    if g.a or g.b:
        out = torch.roll(out, shifts=(g.a, g.b), dims=(-2, -1))
    return out


def _spectral_derivative(f: torch.Tensor, dim: int, length: float) -> torch.Tensor:
    """Spectral d/d(axis `dim`) of a periodic field (Nyquist mode dropped)."""
    n = f.shape[dim]
    m = torch.fft.fftfreq(n, d=1.0 / n, dtype=f.dtype if f.is_floating_point() else torch.float64)
    if n % 2 == 0:
        m[n // 2] = 0.0
    shape = [1] * f.ndim
    shape[dim] = n
    k = (2 * math.pi / length) * m.to(f.device).reshape(shape)
    return torch.fft.ifft(1j * k * torch.fft.fft(f, dim=dim), dim=dim).real


def _central_difference(f: torch.Tensor, dim: int, length: float) -> torch.Tensor:
    return (torch.roll(f, -1, dim) - torch.roll(f, 1, dim)) * (f.shape[dim] / (2.0 * length))


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def axis_assignment_check(u: torch.Tensor, pde, *, dt: float | None = None,
                          domain: tuple[float, float] = (1.0, 1.0)) -> dict[str, float]:
    """`{"ours": r, "swapped": r}`: relative residuals of the kinematic constraint with the
    PDESpec's vector assignment and with its swap (0 up to discretisation for the right one).
    Incompressible: `u` `[..., C, H, W]`, rms(spectral div v) / rms(the four derivatives).
    Compressible: `u` `[..., T >= 2, C, H, W]` `dt` apart, continuity `(rho^{n+1} - rho^n) / dt
    + (div m^n + div m^{n+1}) / 2` (central differences) over rms(d rho / dt). `domain=(Lx, Ly)`.
    """
    spec = resolve_spec(pde)
    pair = vector_channels(spec, "ours")
    if pair is None:
        raise InputError(f"pde: {spec.name} has no vector channels to check")
    u = _check_field(u, spec)
    lx, ly = (float(d) for d in domain)
    assignments = {"ours": pair, "swapped": pair[::-1]}
    if spec.density_channel is None:
        out = {}
        for name, (a, b) in assignments.items():  # d v_H / dx, d v_H / dy, d v_W / dx, d v_W / dy
            d = [_spectral_derivative(u[..., c, :, :], dim, ln)
                 for c in (a, b) for dim, ln in ((-1, lx), (-2, ly))]
            scale = math.sqrt(sum(_rms(x) ** 2 for x in d) / 4)
            out[name] = _rms(d[2] + d[1]) / max(scale, 1e-300)
        return out
    if dt is None or not float(dt) > 0:
        raise InputError(f"dt: a positive snapshot spacing is required for {spec.name}, got {dt!r}")
    if u.ndim < 4 or u.shape[-4] < 2:
        raise InputError(f"u: expected a trajectory [..., T >= 2, C, H, W], got {tuple(u.shape)}")
    rho = u[..., spec.density_channel, :, :]
    drho = (rho[..., 1:, :, :] - rho[..., :-1, :, :]) / float(dt)
    out = {}
    for name, (a, b) in assignments.items():
        div = _central_difference(u[..., b, :, :], -1, lx) + _central_difference(u[..., a, :, :], -2, ly)
        residual = drho + 0.5 * (div[..., 1:, :, :] + div[..., :-1, :, :])
        out[name] = _rms(residual) / max(_rms(drho), 1e-300)
    return out
