"""Orbit influence (follow-up, `qr_eqv.jl`): how a training step on (x_m, y_m) changes the loss
at the transformed example (g.x_n, g.y_n).

For each group element g, with the SMSE gradients G_k at the kets (x_m, y_m) and G_b at the
bras (g.x_n, g.y_n): the basis of the joint rows [G_k; G_b] (energy cut `energy_tol`), ket and
bra coordinates A, B, the Gauss-Newton metric eta = (JQ)^T (JQ) / M + damping I with J at the
UNtransformed inputs x, and

    Pi_g = B^T eta^{-1} A        ([N, N], rows = response at g.x_n, columns = perturbation m)

(`pdeinf.influence.HatEngine.pi(response_transform=...)`, which this module only drives).
Each row is standardized, `Pi_g[n, :] / (std_m Pi_g[n, m] + std_eps)` (ddof 1, std_eps = 1e-6
as the authors), and the diagonal `H_g[n, n]` is kept: the influence of an example on its own
orbit partner. One engine serves every element: the ket gradients, their span and the ket
JVPs are computed once; each further element costs its bra gradients, the JVPs of its own N
rows and a 2N x 2N eigendecomposition (`benchmarks/bench_orbit.py`).

For the identity (and any element acting trivially, e.g. a zero shift) the ordinary Pi is used.
An exactly equivariant model has SMSE(f(g.x), g.y) = SMSE(f(x), y) for every parameter value,
so G_b = G_k and every H_g equals H_e (tested in tests/test_symmetry.py).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from pdeinf.errors import InputError
from pdeinf.symmetry.actions import act, check_batch, parse_element, resolve_spec, vector_channels

__all__ = ["element_label", "orbit_influence", "standardize_rows"]


def element_label(element) -> str:
    """A string label for a coordinate: "r", "shift(3,0)", "affine(sr,1,2)"."""
    g = parse_element(element)
    el = g.element()
    if isinstance(el, str):
        return el
    if el[0] == "shift":
        return f"shift({el[1]},{el[2]})"
    return f"affine({el[1]},{el[2]},{el[3]})"


def standardize_rows(pi: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """`pi[..., n, :] / (std over m (ddof 1) + std_eps)`."""
    return pi / (pi.std(dim=-1, correction=1, keepdim=True) + std_eps)


def orbit_influence(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    elements: Sequence, *, pde, convention: str = "ours", damping: float = 1e-6,
                    energy_tol: float = 1e-4, std_eps: float = 1e-6, keep_matrices: bool = False,
                    engine=None, progress: bool = False, **engine_kwargs):
    """Orbit influence of one batch for each group element.

    `inputs`, `targets`: `[N, C, H, W]` of `pde` ("CE", "NS" or a PDESpec); `elements`: D4
    names, `("shift", a, b)` or `("affine", name, a, b)` (see `pdeinf.symmetry.act`).
    `engine`: a `pdeinf.influence.HatEngine` of this batch to reuse (else one is built with
    `energy_tol` and `engine_kwargs`, e.g. grad_chunk, jvp_chunk, keep_ket_jvps: the engine's
    own rule decides by default whether the ket JVPs are kept for the elements' bras).

    Returns an xarray Dataset with `diagonal` (element, example): the standardized
    `H_g[n, n]`; `rank` (element): joint-basis rank; and with `keep_matrices=True` also `pi`
    (element, response, perturbation): the raw Pi_g.
    """
    import xarray as xr
    from tqdm.auto import tqdm

    from pdeinf.influence import HatEngine

    spec = resolve_spec(pde)
    vector_channels(spec, convention)  # validates the convention
    parsed = [parse_element(g) for g in elements]
    if not parsed:
        raise InputError("elements: at least one group element is required")
    labels = [element_label(g) for g in parsed]
    if len(set(labels)) != len(labels):
        raise InputError(f"elements: repeated elements {labels}")
    check_batch(spec, inputs, targets, square=any(g.k % 2 for g in parsed))
    if engine is None:
        engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, progress=progress, **engine_kwargs)
    elif engine.model is not model or engine.inputs.shape != inputs.shape:
        raise InputError("engine: built for another model or batch")

    diagonals, ranks, matrices = [], [], []
    for g in tqdm(parsed, desc="orbit influence", disable=not progress, leave=False):
        trivial = g.k == 0 and g.f == 0 and g.a == 0 and g.b == 0
        transform = None if trivial else functools.partial(act, element=g, pde=spec, convention=convention)
        pi, _ = engine.pi("gauss-newton", damping=damping, response_transform=transform)
        basis = engine.basis("gauss-newton", response_transform=transform)
        h = standardize_rows(pi, std_eps)
        diagonals.append(torch.diagonal(h).cpu().numpy())
        ranks.append(int(basis.rank))
        if keep_matrices:
            matrices.append(pi.cpu().numpy())
    n = inputs.shape[0]
    data = {
        "diagonal": (("element", "example"), np.stack(diagonals)),
        "rank": (("element",), np.asarray(ranks)),
    }
    if keep_matrices:
        data["pi"] = (("element", "response", "perturbation"), np.stack(matrices))
    return xr.Dataset(
        data,
        coords={"element": labels, "example": np.arange(n)},
        attrs={"pde": spec.name, "convention": convention, "damping": float(damping),
               "energy_tol": float(engine.energy_tol), "std_eps": float(std_eps),
               "description": "standardized rows of Pi_g (bras at g.x_n, g.y_n; kets and J at x_m, y_m), diagonal"},
    )
