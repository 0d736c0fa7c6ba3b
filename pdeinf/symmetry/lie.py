"""Lie derivative of a surrogate (Gruver et al., ICLR 2023), `L f (x) = d/dt|_{t=0} g_t^{-1}
f(g_t x)` `[N, C, H, W]` (zero for an equivariant f), by forward-mode AD through smooth g_t: "x",
"y" translate by t grid cells along W, H (an exact Fourier shift; the Nyquist mode of an even grid
stays in place); "rotation" turns by t radians (pi/2: the sense of `r`) about the grid centre by
three Fourier shears (Larkin et al. 1997), vector components too (approximate on a periodic grid,
measured in tests/test_lie.py).

Layer-wise, a hooked module's contribution is the derivative with ONLY it conjugated, `M_i ->
g_s^{-1} M_i(g_s .)`; along a chain these telescope to the total, operations outside them leave a
`remainder`. Feature maps are scalar fields on their own grid (translation by t H'/H cells); only
the model's input and output carry the PDE's vector components.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import gradients as _grad
from pdeinf.influence.untouched import keeps_model
from pdeinf.symmetry.actions import check_batch, mix_vector, resolve_spec, vector_channels

GENERATORS: tuple[str, ...] = ("x", "y", "rotation")


def fourier_shift(u: torch.Tensor, t, dim: int) -> torch.Tensor:
    """`u(. - t)` along `dim` on the periodic grid (content moves by +t cells, like
    `torch.roll(u, t, dim)` for integer t); `t` a scalar or a tensor broadcasting against `u`
    with the shifted axis of size 1 (per-row shears). Differentiable in `u` and `t`."""
    dim = dim % u.ndim
    n = u.shape[dim]
    t = torch.as_tensor(t, dtype=u.dtype, device=u.device)
    m = torch.arange(n // 2 + 1, dtype=u.dtype, device=u.device)  # the rfft modes
    if n % 2 == 0:
        m[-1] = 0.0  # the Nyquist mode stays in place
    shape = [1] * u.ndim
    shape[dim] = m.numel()
    k = ((2 * math.pi / n) * m).reshape(shape)  # per grid cell
    phase = torch.polar(torch.ones_like(k * t), -(k * t))
    return torch.fft.irfft(torch.fft.rfft(u, dim=dim) * phase, n=n, dim=dim)


def rotate(u: torch.Tensor, theta, *, pair: tuple[int, int] | None = None) -> torch.Tensor:
    """Rotate `u` `[..., C, H, W]` (H == W) by `theta` radians about the grid centre by the
    Fourier shears `Sx(tan t/2) Sy(-sin t) Sx(tan t/2)`, `Sx(a) u (Y, X) = u(Y, X - a Y)`;
    `pair` = (channel along H, channel along W) of a vector to rotate too (None: scalars only).
    `theta = pi/2` approximates `torch.rot90(u, 1, (-2, -1))`."""
    if u.shape[-1] != u.shape[-2]:
        raise InputError(f"u: rotation needs a square grid, got H x W = {tuple(u.shape[-2:])}")
    theta = torch.as_tensor(theta, dtype=u.dtype, device=u.device)
    alpha, beta = torch.tan(theta / 2), -torch.sin(theta)
    n = u.shape[-1]
    centred = torch.arange(n, dtype=u.dtype, device=u.device) - (n - 1) / 2
    rows, cols = centred[:, None], centred  # Y varies along H, X along W
    out = fourier_shift(u, alpha * rows, -1)
    out = fourier_shift(out, beta * cols, -2)
    out = fourier_shift(out, alpha * rows, -1)
    if pair is not None:
        c, s = torch.cos(theta), torch.sin(theta)
        out = mix_vector(out, pair, ((c, -s), (s, c)))
    return out


def transform(u: torch.Tensor, t, generator: str, *, pair: tuple[int, int] | None = None,
              reference: int | None = None) -> torch.Tensor:
    """`g_t u` for `generator` in GENERATORS. `reference`: the input grid size that `t` is
    measured in for translations (a feature map of size n' moves by t n'/reference cells)."""
    if generator == "rotation":
        return rotate(u, t, pair=pair)
    dim = -1 if generator == "x" else -2
    scale = 1.0 if reference is None else u.shape[dim] / reference
    return fourier_shift(u, t * scale if scale != 1.0 else t, dim)


@dataclass
class LieDecomposition:
    """`total` `[N, C, H, W]`; `contributions` {module name: `[N, C, H, W]`} in forward order;
    `remainder` = total - sum of contributions (operations outside the hooked modules)."""

    total: torch.Tensor
    contributions: dict[str, torch.Tensor] = field(default_factory=dict)
    remainder: torch.Tensor | None = None

    def norms(self) -> dict[str, torch.Tensor]:
        """Per-example RMS over channels and grid of every term, `{name: [N]}` ("total",
        each module, "remainder")."""
        terms = {"total": self.total, **self.contributions, "remainder": self.remainder}
        return {k: rms(v) for k, v in terms.items() if v is not None}


def rms(field_: torch.Tensor) -> torch.Tensor:
    """Per-example root mean square over channels and grid, `[N, ...] -> [N]`."""
    return field_.pow(2).flatten(1).mean(dim=1).sqrt()


def _jvp_t(function, dtype, device, support: _grad.FuncSupport) -> torch.Tensor:
    """`d function(t) / dt` at t = 0 by forward mode; where the model has an operation without
    a forward-mode rule, by double backward (exact), with one warning per `support`."""
    t0 = torch.zeros((), dtype=dtype, device=device)
    with _grad.math_attention():
        if support.forward_mode:
            try:
                _, tangent = torch.func.jvp(function, (t0,), (torch.ones_like(t0),))
                return tangent.detach()
            except _grad.TRACE_ERRORS as err:
                support.forward_mode = False
                support.fall_back("jvp", err)
        return _grad.double_backward_jvp(function, [t0], [torch.ones_like(t0)])


def _default_layers(model: torch.nn.Module, inputs: torch.Tensor) -> list[str]:
    """Leaf modules whose (first) input and output are 4D tensors in a dry forward pass."""
    seen: list[str] = []

    def hook(mod, args, out, name):
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4 \
                and isinstance(out, torch.Tensor) and out.ndim == 4 and name not in seen:
            seen.append(name)

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    _grad.dry_forward(model, inputs[:1], [(m, None, functools.partial(hook, name=n)) for n, m in leaves])
    return seen


@keeps_model
def lie_derivative(model: torch.nn.Module, inputs: torch.Tensor, generator: str, *, pde,
                   layerwise: bool = False, layers: Sequence[str] | None = None,
                   convention: str = "ours"):
    """`d/dt g_t^{-1} f(g_t x)` at t = 0 `[N, C, H, W]` of a model in eval mode at `inputs`
    `[N, C, H, W]` of `pde`, for `generator` "x", "y" (per grid cell) or "rotation" (per
    radian). `layerwise=True`: a `LieDecomposition` over `layers` (module names; default every
    leaf module with 4D input and output)."""
    if generator not in GENERATORS:
        raise InputError(f"generator: unknown {generator!r}; expected one of {', '.join(GENERATORS)}")
    spec = resolve_spec(pde)
    pair = vector_channels(spec, convention)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_batch(spec, inputs, square=generator == "rotation")
    if not inputs.is_floating_point():
        raise InputError(f"inputs: expected floating-point values, got {inputs.dtype}")
    (x,) = _grad.cast_to_model(model, inputs.detach())
    n_ref = x.shape[-1] if generator == "x" else x.shape[-2]

    def g(u, t, typed: bool):
        return transform(u, t, generator, pair=pair if typed else None, reference=n_ref)

    def total_fn(t):
        return g(model(g(x, t, True)), -t, True)

    support = _grad.FuncSupport(type(model).__name__)
    total = _jvp_t(total_fn, x.dtype, x.device, support)
    if not bool(torch.isfinite(total).all()):
        raise NumericalError("lie_derivative: non-finite values (the model output has NaN/Inf)")
    if not layerwise:
        return total

    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else _default_layers(model, x)
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise InputError(f"layers: no such sub-module(s) {unknown[:5]} in {type(model).__name__}")
    typing = _call_typing(model, {n: modules[n] for n in names}, x)
    contributions: dict[str, torch.Tensor] = {}
    for name in names:
        module, calls = modules[name], typing[name]
        state = {"t": None, "call": 0}

        def pre(mod, args, state=state, calls=calls):
            if not args or not isinstance(args[0], torch.Tensor):
                raise InputError(f"layers: module {mod.__class__.__name__} gets no positional field input")
            return (g(args[0], state["t"], calls[state["call"] % len(calls)][0]), *args[1:])

        def post(mod, args, out, state=state, calls=calls):
            typed_out = calls[state["call"] % len(calls)][1]
            state["call"] += 1
            return g(out, -state["t"], typed_out)

        handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            def conj_fn(t, state=state):
                state["t"], state["call"] = t, 0
                return model(x)

            contributions[name] = _jvp_t(conj_fn, x.dtype, x.device, support)
        finally:
            for h in handles:
                h.remove()
    remainder = total - sum(contributions.values()) if contributions else total.clone()
    return LieDecomposition(total=total, contributions=contributions, remainder=remainder)


def _call_typing(model, modules: dict, x: torch.Tensor) -> dict[str, list[tuple[bool, bool]]]:
    """Per hooked module and call (in forward order): (its first input IS the model input,
    its output IS the model output), from one dry forward on the first example. Only those
    tensors carry vector components; every other feature map is a set of scalar fields."""
    x1 = x[:1]
    records: dict[str, list] = {n: [] for n in modules}

    def pre(mod, args, name):
        records[name].append([bool(args) and args[0] is x1, None])

    def post(mod, args, out, name):
        records[name][-1][1] = out  # keep a reference: identity is checked after the call

    y = _grad.dry_forward(model, x1, [(m, functools.partial(pre, name=n), functools.partial(post, name=n))
                                      for n, m in modules.items()])
    for name in modules:
        if not records[name]:
            raise InputError(f"layers: module {name!r} is not called in the forward pass")
        for rec in records[name]:
            if not (isinstance(rec[1], torch.Tensor) and rec[1].ndim == 4):
                raise InputError(f"layers: module {name!r} does not return a 4D field [N, C, H, W]")
    return {n: [(r[0], r[1] is y) for r in recs] for n, recs in records.items()}
