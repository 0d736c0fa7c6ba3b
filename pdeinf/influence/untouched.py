"""Leave the user's model exactly as found: `swap_parameters` (tensors in every slot of the named
parameters for one forward, also modules used twice and tied weights) and `untouched` (restores
parameter / buffer objects and values, `requires_grad`, train flags, tensor attributes and the
RNG state on exit); `model_state` / `same_state` are the snapshot the tests compare.
"""
from __future__ import annotations

import contextlib
import functools

import torch


def parameter_slots(model: torch.nn.Module) -> dict[int, list[tuple[torch.nn.Module, str]]]:
    """`{id(parameter): [(module, attribute), ...]}`: every slot holding each parameter."""
    slots: dict[int, list] = {}
    seen: set[tuple[int, str]] = set()
    for module in model.modules():  # each module object once, even when used twice
        for attr, p in module._parameters.items():
            if p is not None and (id(module), attr) not in seen:
                seen.add((id(module), attr))
                slots.setdefault(id(p), []).append((module, attr))
    return slots


@contextlib.contextmanager
def swap_parameters(model: torch.nn.Module, tensors: dict[str, torch.Tensor], slots=None):
    """Within the block, the trainable parameter named n (`model.named_parameters()`) is
    `tensors[n]` in every slot that holds it; the original objects are restored on exit."""
    named = dict(model.named_parameters())
    slots = parameter_slots(model) if slots is None else slots
    saved = []
    try:
        for name, tensor in tensors.items():
            for module, attr in slots[id(named[name])]:
                saved.append((module, attr, module._parameters[attr]))
                module._parameters[attr] = tensor
        yield
    finally:
        for module, attr, original in reversed(saved):
            module._parameters[attr] = original


def _tensor_attributes(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)}


def model_state(model: torch.nn.Module) -> list[tuple]:
    """Per module (each once): train flag, parameters `(attr, object, requires_grad)`, buffers and
    plain tensor attributes; compare two snapshots with `same_state`."""
    out = []
    for module in model.modules():
        params = [(k, p, None if p is None else p.requires_grad) for k, p in module._parameters.items()]
        buffers = list(module._buffers.items())
        out.append((module, module.training, params, buffers, _tensor_attributes(module)))
    return out


def same_state(before: list[tuple], after: list[tuple]) -> list[str]:
    """What differs between two `model_state` snapshots (identity of every object); [] if none."""
    changes = []
    if len(before) != len(after):
        return [f"{len(before)} modules before, {len(after)} after"]
    for (m0, t0, p0, b0, a0), (m1, t1, p1, b1, a1) in zip(before, after):
        name = type(m0).__name__
        if m0 is not m1:
            changes.append(f"{name}: another module object")
        if t0 != t1:
            changes.append(f"{name}: training {t0} -> {t1}")
        if [(k, id(p), g) for k, p, g in p0] != [(k, id(p), g) for k, p, g in p1]:
            changes.append(f"{name}: parameters or their requires_grad changed")
        if [(k, id(b)) for k, b in b0] != [(k, id(b)) for k, b in b1]:
            changes.append(f"{name}: buffers changed")
        if {k: id(v) for k, v in a0.items()} != {k: id(v) for k, v in a1.items()}:
            changes.append(f"{name}: tensor attributes changed")
    return changes


def _restore(snapshot: list[tuple]) -> None:
    for module, training, params, buffers, attributes in snapshot:
        module.training = training
        for attr, p, requires_grad in params:
            module._parameters[attr] = p
            if p is not None and p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
        for attr, b in buffers:
            module._buffers[attr] = b
        for attr in [k for k in _tensor_attributes(module) if k not in attributes]:
            delattr(module, attr)
        for attr, value in attributes.items():
            object.__setattr__(module, attr, value)


@contextlib.contextmanager
def untouched(model):
    """Run a block that uses `model` and leave the model and the global RNG as found."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    snapshot = model_state(model)
    values = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        _restore(snapshot)
        with torch.no_grad():
            for buffer, value in values:  # running statistics a train-mode forward updates
                if not torch.equal(buffer, value):
                    buffer.copy_(value)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def keeps_model(function):
    """Decorator: `function(model, ...)` runs under `untouched(model)`."""
    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        with untouched(model):
            return function(model, *args, **kwargs)
    return wrapper
