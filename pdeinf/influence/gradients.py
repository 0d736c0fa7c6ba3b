"""Per-example gradients and forward-mode output JVPs with torch.func.

The model is evaluated functionally (`torch.func.functional_call`) on a dict of its trainable
parameters, so the same code serves the gradients (reverse mode, `vmap(grad)`) and the
Jacobian-vector products of the outputs (forward mode, `vmap(jvp)`). Flat vectors follow the
order of `model.named_parameters()` restricted to parameters with `requires_grad`; this is also
the order in which an optimizer built from `model.parameters()` indexes its state.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, jvp, vmap

from pdeinf.errors import InputError

#: per-example scalar function (input [C,H,W], target [C,H,W], prediction [C,H,W]) -> scalar
ExampleFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ParameterLayout:
    """Names, shapes and flat offsets of the trainable parameters (P = `size` entries)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(sum(self.numels))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """`[..., P]` -> {name: `[..., *shape]`} (views, no copy)."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, list(self.numels), dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def flatten(self, tensors: dict[str, torch.Tensor], lead_dims: int = 0) -> torch.Tensor:
        """{name: `[..., *shape]`} -> `[..., P]` (the inverse of `unflatten`)."""
        parts = []
        for n in self.names:
            t = tensors[n]
            parts.append(t.reshape(*t.shape[:lead_dims], -1))
        return torch.cat(parts, dim=-1)


def trainable_parameters(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], ParameterLayout]:
    """Detached trainable parameters of `model` and their layout; InputError if there are none."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise InputError("model: it has no trainable parameters (requires_grad=True)")
    params = {n: p.detach() for n, p in named}
    layout = ParameterLayout(
        names=tuple(n for n, _ in named),
        shapes=tuple(p.shape for _, p in named),
        numels=tuple(p.numel() for _, p in named),
    )
    return params, layout


def check_model_mode(model: torch.nn.Module) -> None:
    """torch.func cannot vmap/jvp through BatchNorm in train mode: refuse it with a clear line."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
            raise InputError(
                f"model: BatchNorm module {name!r} is in train mode; call model.eval() first "
                "(per-example gradients are defined with frozen running statistics)"
            )


def math_attention():
    """Context in which scaled-dot-product attention uses the math kernel.

    The fused CPU kernels have no forward-mode derivative on torch 2.13, so the JVPs of a ViT
    raise NotImplementedError without it; the math kernel is exact (same numbers to rounding).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: no choice to make
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _model_function(model: torch.nn.Module):
    buffers = {n: b for n, b in model.named_buffers()}

    def apply(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x,))

    return apply


def per_example_gradients(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    function: ExampleFunction,
    *,
    chunk: int | None = 16,
    params: dict[str, torch.Tensor] | None = None,
    layout: ParameterLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `function(x_n, y_n, f(x_n))` with respect to the trainable parameters.

    inputs, targets: `[N, C, H, W]`. Returns `(G [N, P], values [N])` in the parameters' dtype.
    `chunk` examples are vmapped at once (None = all N at once); memory grows with it.
    """
    if params is None or layout is None:
        params, layout = trainable_parameters(model)
    apply = _model_function(model)

    def value(p, x, y):
        pred = apply(p, x.unsqueeze(0)).squeeze(0)
        out = function(x, y, pred)
        return out, out

    # Chunks are written straight into one [N, P] buffer: vmap's own `chunk_size` would
    # concatenate the chunks per parameter and `flatten` would copy again (two extra,
    # short-lived N x P copies).
    grad_fn = vmap(grad(value, has_aux=True), in_dims=(None, 0, 0))
    n = inputs.shape[0]
    step = n if chunk is None else chunk
    dtype = next(iter(params.values())).dtype
    out = torch.empty(n, layout.size, dtype=dtype)
    values = torch.empty(n, dtype=dtype)
    with math_attention():
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            grads, vals = grad_fn(params, inputs[rows], targets[rows])
            offset = 0
            for name, numel in zip(layout.names, layout.numels):
                out[rows, offset:offset + numel] = grads[name].reshape(rows.stop - rows.start, numel)
                offset += numel
            values[rows] = vals.detach()
            del grads
    return out, values


def output_jvps(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    tangents: torch.Tensor,
    *,
    params: dict[str, torch.Tensor] | None = None,
    layout: ParameterLayout | None = None,
    vmap_tangents: bool = True,
) -> torch.Tensor:
    """Forward-mode products of the outputs with parameter directions.

    inputs `[B, C, H, W]`, tangents `[K, P]` -> `[K, B, C, H, W]`, entry k = J(inputs) tangent_k.
    With `vmap_tangents` the K tangents go through one vmapped jvp, otherwise a Python loop.
    """
    if params is None or layout is None:
        params, layout = trainable_parameters(model)
    apply = _model_function(model)

    def push(tangent_flat: torch.Tensor) -> torch.Tensor:
        tangent = layout.unflatten(tangent_flat)
        return jvp(lambda p: apply(p, inputs), (params,), (tangent,))[1]

    with math_attention():
        if vmap_tangents and tangents.shape[0] > 1:
            return vmap(push)(tangents)
        return torch.stack([push(t) for t in tangents])
