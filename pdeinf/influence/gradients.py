"""Per-example gradients and forward-mode output JVPs of any `nn.Module [B,C,H,W] -> [B,C,H,W]`,
evaluated functionally on its trainable parameters (flat in `model.named_parameters()` order;
complex ones as their (re, im) parts, as `torch.view_as_real`). What `vmap` cannot trace runs
in an exact slower path, with one warning per `FuncSupport`.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence.untouched import parameter_slots, swap_parameters

TRACE_ERRORS = (RuntimeError, NotImplementedError)  # torch.func cannot trace the model

#: Module types whose forward depends on train/eval mode (stochastic or batch statistics).
_MODE_DEPENDENT = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.MultiheadAttention,
    torch.nn.RReLU,
)


@dataclass(frozen=True)
class ParameterLayout:
    """Names, real shapes and flat offsets of the trainable parameters (P = `size` reals); a
    complex parameter of shape s has the real shape (*s, 2) and its name in `complex_names`."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]
    complex_names: frozenset[str] = field(default_factory=frozenset)

    @property
    def size(self) -> int:
        return int(sum(self.numels))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """`[..., P]` -> {name: `[..., *shape]`} (views, no copy)."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, list(self.numels), dim=-1)
        return {n: p.reshape(tuple(lead) + tuple(s)) for n, p, s in zip(self.names, pieces, self.shapes)}

    def flatten(self, tensors: dict[str, torch.Tensor], lead_dims: int = 0) -> torch.Tensor:
        """{name: `[..., *shape]`} -> `[..., P]` (the inverse of `unflatten`)."""
        return torch.cat([tensors[n].reshape(*tensors[n].shape[:lead_dims], -1) for n in self.names], dim=-1)


def _real_views(named) -> dict[str, torch.Tensor]:
    return {n: (torch.view_as_real(p.detach()) if p.is_complex() else p.detach()) for n, p in named}


def trainable_parameters(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], ParameterLayout]:
    """Detached trainable parameters of `model` (complex ones as real views) and their layout."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise InputError("model: it has no trainable parameters (requires_grad=True)")
    params = _real_views(named)
    return params, ParameterLayout(tuple(params), tuple(t.shape for t in params.values()),
                                   tuple(t.numel() for t in params.values()),
                                   frozenset(n for n, p in named if p.is_complex()))


def real_dtype(params: dict[str, torch.Tensor], complex_names: frozenset = frozenset()) -> torch.dtype:
    """The real floating dtype of the (real-view) parameters; InputError naming the parameters
    of another precision (e.g. complex64 spectral weights left by `model.double()`)."""
    dtypes = [t.dtype for t in params.values()]
    common = max(set(dtypes), key=dtypes.count)
    if len(set(dtypes)) > 1:
        # the dtype as the model stores it (complex ones are (re, im) views here)
        odd = [(n, torch.complex(t[..., :1], t[..., :1]).dtype if n in complex_names else t.dtype)
               for n, t in params.items() if t.dtype != common]
        odd = [f"{n} ({str(d).replace('torch.', '')})" for n, d in odd]
        raise InputError(f"model: parameters of another precision than the other "
                         f"{str(common).replace('torch.', '')} ones: {', '.join(odd[:5])}"
                         f"{' ...' if len(odd) > 5 else ''}; convert them too (`.double()` leaves complex "
                         "parameters as they are: `p.data = p.data.to(torch.complex128)`)")
    return common


def cast_to_model(model: torch.nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` with the real floating ones cast to the model's real dtype (`real_dtype` of its
    floating parameters); unchanged for a model without floating parameters."""
    named = _real_views((n, p) for n, p in model.named_parameters()
                        if p.is_floating_point() or p.is_complex())
    if not named:
        return tensors
    complex_names = frozenset(n for n, p in model.named_parameters() if p.is_complex())
    dtype = real_dtype(named, complex_names)
    return tuple(t.detach().to(dtype) if t.is_floating_point() else t for t in tensors)


def check_model_mode(model: torch.nn.Module) -> None:
    """Refuse modules whose forward depends on train mode (dropout, batch statistics)."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model: expected a torch.nn.Module mapping [B, C, H, W] -> [B, C, H, W], got "
                         f"{type(model).__name__} (wrap a function in an nn.Module holding its parameters)")
    for name, module in model.named_modules():
        if isinstance(module, _MODE_DEPENDENT) and module.training:
            if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and not module.track_running_stats:
                continue  # same forward in both modes
            if isinstance(module, (torch.nn.modules.dropout._DropoutNd, torch.nn.MultiheadAttention)) \
                    and not float(getattr(module, "p", getattr(module, "dropout", 0.0)) or 0.0) > 0.0:
                continue  # dropout probability 0: the identity in both modes
            kind = "BatchNorm" if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) else type(module).__name__
            raise InputError(f"model: {kind} module {name or type(model).__name__!r} is in train mode; call "
                             "model.eval() first (per-example gradients are defined for a deterministic "
                             "forward with frozen statistics)")


def dry_forward(model: torch.nn.Module, x: torch.Tensor, hooks=()) -> torch.Tensor:
    """`model(x)` without gradients (math attention), with `hooks` registered for this call only:
    `(module, forward pre-hook or None, forward hook or None)` triples."""
    handles = []
    for module, pre, post in hooks:
        handles += [module.register_forward_pre_hook(pre)] if pre is not None else []
        handles += [module.register_forward_hook(post)] if post is not None else []
    try:
        with torch.no_grad(), math_attention():
            return model(x)
    finally:
        for handle in handles:
            handle.remove()


def check_model_output(model: torch.nn.Module, inputs: torch.Tensor) -> None:
    """One forward on the first example; InputError for a channels-last batch, a channel count the
    model's first layer does not take, or outputs other than real `[1, C, H, W]` like the inputs."""
    name = type(model).__name__
    shape = tuple(inputs.shape)
    # channels-last [N, H, W, C]: C equal to H, at least 8, and a last axis of a field's components
    if len(shape) == 4 and shape[1] == shape[2] >= 8 and shape[3] <= 4:
        raise InputError(f"inputs: shape {shape} looks channels-last [N, H, W, C]; expected [N, C, H, W] "
                         "(pass inputs.permute(0, 3, 1, 2))")
    seen: list = []  # the first sub-module with `in_channels` that the forward calls

    def first(module, args, name):
        if not seen:
            seen.append((name or type(model).__name__, module))

    hooks = [(m, functools.partial(first, name=n), None) for n, m in model.named_modules()
             if isinstance(getattr(m, "in_channels", None), int)]
    try:
        out = dry_forward(model, inputs[:1], hooks)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        if seen and seen[0][1].in_channels != shape[1]:
            layer, module = seen[0]
            raise InputError(f"inputs: {shape[1]} channels, but the model's first layer {layer!r} "
                             f"({type(module).__name__}) takes {module.in_channels}; expected "
                             f"[N, {module.in_channels}, H, W]") from None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(f"model: {name} fails on one example of shape {(1, *shape[1:])}: {reason}") from err
    if not isinstance(out, torch.Tensor):
        raise InputError(f"model: {name} returns {type(out).__name__}, expected a tensor [B, C, H, W]")
    if out.is_complex() or not out.is_floating_point():
        raise InputError(f"model: {name} returns {out.dtype} outputs, expected real floating values")
    if out.shape != inputs[:1].shape:
        detail = ""
        if out.ndim == 4 and out.shape[-2:] == inputs.shape[-2:]:
            detail = f" ({out.shape[1]} output channels for {inputs.shape[1]} input channels)"
        raise InputError(f"model: {name} maps inputs {tuple(inputs[:1].shape)} to outputs "
                         f"{tuple(out.shape)}{detail}; expected [B, C, H, W] -> [B, C, H, W] with the "
                         "inputs' shape")


def check_batch(inputs, targets, dtype, names=("inputs", "targets")) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, targets)` `[N, C, H, W]` cast to `dtype`; InputError naming the first one that
    is not a real, finite batch of that shape (or whose shape differs from the other's)."""
    for name, t in zip(names, (inputs, targets)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(t).__name__}")
        if t.ndim != 4 or t.shape[0] == 0:
            raise InputError(f"{name}: expected shape [N, C, H, W] with N >= 1, got {tuple(t.shape)}")
        if t.is_complex():
            raise InputError(f"{name}: complex values; expected real [N, C, H, W]")
        if not torch.isfinite(t).all():
            raise InputError(f"{name}: contains NaN or Inf")
    if inputs.shape != targets.shape:
        raise InputError(f"{names[1]}: shape {tuple(targets.shape)} differs from {names[0]} {tuple(inputs.shape)}")
    return inputs.detach().to(dtype), targets.detach().to(dtype)


def check_callable(value, name: str) -> None:
    """InputError unless `value` is None or callable."""
    if value is not None and not callable(value):
        raise InputError(f"{name}={value!r}: expected None or a callable on [N, C, H, W] tensors")


def transformed_batch(inputs, targets, transform, target_transform) -> tuple[torch.Tensor, torch.Tensor]:
    """`(transform(inputs), target_transform(targets))` `[N, C, H, W]` (None leaves its tensor;
    target_transform None: `transform` for both), checked like the batch."""
    check_callable(transform, "response_transform")
    check_callable(target_transform, "target_transform")
    target_transform = target_transform if target_transform is not None else transform
    x = inputs if transform is None else transform(inputs)
    y = targets if target_transform is None else target_transform(targets)
    x, y = check_batch(x, y, inputs.dtype, ("response_transform(inputs)", "target_transform(targets)"))
    if x.shape[0] != inputs.shape[0]:
        raise InputError(f"response_transform: returned {x.shape[0]} examples for {inputs.shape[0]}; "
                         "a transform must act on each example")
    return x, y


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes of memory available now on `device` (a CUDA device's own, the host's otherwise);
    None when it cannot be told."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(rows: int, columns: int, dtype: torch.dtype, what: str, subject: str = "model") -> None:
    """Refuse up front a `[rows, columns]` matrix larger than the available memory."""
    need = rows * columns * torch.empty(0, dtype=dtype).element_size()
    have = available_memory()
    if have is not None and need > have:
        raise InputError(f"{subject}: the {what} ({rows} x {columns} {str(dtype).replace('torch.', '')}) "
                         f"needs {need / 2**30:.2f} GiB, more than the {have / 2**30:.2f} GiB of memory "
                         "available; use fewer examples or a smaller model")


def math_attention():
    """Context in which scaled-dot-product attention uses the exact math kernel (the fused CPU
    kernels have no forward-mode derivative on torch 2.13)."""
    return sdpa_kernel(SDPBackend.MATH)


@dataclass
class FuncSupport:
    """What torch.func can trace for one model; warns once when a slower path takes over."""

    model_name: str
    vmap_grad: bool = True
    vmap_jvp: bool = True
    forward_mode: bool = True
    warned: bool = False

    def fall_back(self, stage: str, err: Exception) -> None:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
        if not self.warned:
            self.warned = True
            warnings.warn(f"pdeinf: torch.func cannot trace {self.model_name} ({stage}: {reason}); using an "
                          "exact per-example loop instead (slower)",
                          RuntimeWarning, stacklevel=caller_level())


def caller_level() -> int:
    """warnings.warn stacklevel of the first frame outside pdeinf (the user's call)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _model_function(model: torch.nn.Module):
    """`apply(params, x)`: the module on a real parameter dict (complex ones as (re, im) views),
    swapped into every slot that holds them (`untouched.swap_parameters`) for each call."""
    complex_names = frozenset(n for n, p in model.named_parameters() if p.is_complex())
    slots = parameter_slots(model)

    def apply(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if complex_names:
            # torch.complex rather than view_as_complex: split pieces of a flat tangent can
            # have an odd storage offset, which view_as_complex refuses.
            params = {n: torch.complex(t[..., 0], t[..., 1]) if n in complex_names and not t.is_complex() else t
                      for n, t in params.items()}
        with swap_parameters(model, params, slots):
            return model(x)

    return apply


def per_example_gradients(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                          function: Callable, *, chunk: int | None = 16,
                          params: dict[str, torch.Tensor] | None = None,
                          layout: ParameterLayout | None = None,
                          support: FuncSupport | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(G [N, P], values [N])` in the parameters' dtype: gradients of the scalar `function(x_n [C,H,W],
    y_n, f(x_n))` for inputs, targets `[N, C, H, W]`, `chunk` examples per vmapped call (None: all)."""
    if params is None or layout is None:
        params, layout = trainable_parameters(model)
    support = support if support is not None else FuncSupport(type(model).__name__)
    apply = _model_function(model)

    def value(p, x, y):
        pred = apply(p, x.unsqueeze(0)).squeeze(0)
        out = function(x, y, pred)
        return out, out

    def store(rows, grads):  # per-parameter gradients [b, ...] (None: unused) into out[rows]
        offset = 0
        for g, numel in zip(grads, layout.numels):
            out[rows, offset:offset + numel] = 0.0 if g is None else g.reshape(rows.stop - rows.start, numel)
            offset += numel

    # Chunks go straight into one [N, P] buffer (vmap's `chunk_size` and `flatten` would copy).
    grad_fn = vmap(grad(value, has_aux=True), in_dims=(None, 0, 0))
    n = inputs.shape[0]
    step = n if chunk is None else chunk
    dtype = real_dtype(params, layout.complex_names)
    out = torch.empty(n, layout.size, dtype=dtype)
    values = torch.empty(n, dtype=dtype)
    with math_attention():
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            if support.vmap_grad:
                try:
                    grads, vals = grad_fn(params, inputs[rows], targets[rows])
                except TRACE_ERRORS as err:
                    support.vmap_grad = False
                    support.fall_back("vmap(grad)", err)
                else:
                    store(rows, [grads[name] for name in layout.names])
                    values[rows] = vals.detach()
                    del grads
                    continue
            for i in range(rows.start, rows.stop):  # exact fallback: one autograd.grad per example
                leaves = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
                with torch.enable_grad():
                    val, _ = value(leaves, inputs[i], targets[i])
                    grads = torch.autograd.grad(val, [leaves[n] for n in layout.names], allow_unused=True)
                store(slice(i, i + 1), grads)
                values[i] = val.detach()
    return out, values


def double_backward_jvp(function, primals: list, tangents: list) -> torch.Tensor:
    """`J v` of `function(*primals)` along `tangents` by reverse mode only (exact, for operations
    without a forward-mode rule): d/du [u^T J v] with u a dummy cotangent."""
    leaves = [p.detach().clone().requires_grad_(True) for p in primals]
    with torch.enable_grad():
        out = function(*leaves)
        u = torch.zeros_like(out, requires_grad=True)
        vjp = torch.autograd.grad(out, leaves, u, create_graph=True, allow_unused=True)
        pairs = [(g, t) for g, t in zip(vjp, tangents) if g is not None]
        if not pairs:
            return torch.zeros_like(out).detach()
        dot = sum((g * t).sum() for g, t in pairs)
        (jv,) = torch.autograd.grad(dot, u, allow_unused=True)
    return torch.zeros_like(out).detach() if jv is None else jv.detach()


def output_jvps(model: torch.nn.Module, inputs: torch.Tensor, tangents: torch.Tensor, *,
                params: dict[str, torch.Tensor] | None = None, layout: ParameterLayout | None = None,
                vmap_tangents: bool = True, support: FuncSupport | None = None) -> torch.Tensor:
    """`[K, B, C, H, W]`, entry k = J(inputs) tangent_k, for inputs `[B, C, H, W]`, tangents `[K, P]`:
    one vmapped jvp (`vmap_tangents`) or a loop (also the fallbacks, then double backward)."""
    if params is None or layout is None:
        params, layout = trainable_parameters(model)
    support = support if support is not None else FuncSupport(type(model).__name__)
    apply = _model_function(model)

    def push(tangent_flat: torch.Tensor) -> torch.Tensor:
        tangent = layout.unflatten(tangent_flat)
        return jvp(lambda p: apply(p, inputs), (params,), (tangent,))[1]

    with math_attention():
        if vmap_tangents and support.vmap_jvp and tangents.shape[0] > 1:
            try:
                return vmap(push)(tangents)
            except TRACE_ERRORS as err:
                support.vmap_jvp = False
                support.fall_back("vmap(jvp)", err)
        if support.forward_mode:
            try:
                return torch.stack([push(t) for t in tangents])
            except TRACE_ERRORS as err:
                support.forward_mode = False
                support.fall_back("jvp", err)

        def forward(*values):
            return apply(dict(zip(layout.names, values)), inputs)

        primals = [params[n] for n in layout.names]
        return torch.stack([double_backward_jvp(forward, primals, list(layout.unflatten(t).values()))
                            for t in tangents])


def check_finite(grads: torch.Tensor, what: str) -> None:
    """NumericalError naming `what` and the first bad example when `grads` has NaN or Inf."""
    bad = ~torch.isfinite(grads).all(dim=-1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise NumericalError(f"{what}: per-example gradients contain NaN or Inf ({int(bad.sum())} of "
                             f"{grads.shape[0]} examples, first n = {first})")
