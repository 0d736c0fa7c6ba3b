"""Orbit influence (follow-up, `qr_eqv.jl`): how a training step on (x_m, y_m) changes the loss
at the transformed example (g.x_n, g.y_n): `Pi_g` of `pdeinf.influence.HatEngine` with bras at
(g.x_n, g.y_n), kets and the Gauss-Newton metric at the untransformed examples, rows
standardized (`standardize_rows`), diagonal `H_g[n, n]` kept. One engine serves every element;
for an exactly equivariant model every H_g equals H_e.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pdeinf.errors import InputError
from pdeinf.influence import HatEngine
from pdeinf.symmetry.actions import act, check_batch, parse_element, resolve_spec, vector_channels


def element_label(element) -> str:
    """A string label for a coordinate: "r", "shift(3,0)", "affine(sr,1,2)"."""
    el = parse_element(element).element()
    return el if isinstance(el, str) else f"{el[0]}({','.join(map(str, el[1:]))})"


def standardize_rows(pi: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """`pi[..., n, :] / (std over m (ddof 1) + std_eps)`."""
    return pi / (pi.std(dim=-1, correction=1, keepdim=True) + std_eps)


def orbit_influence(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    elements: Sequence, *, pde, convention: str = "ours", damping: float = 1e-6,
                    energy_tol: float = 1e-4, std_eps: float = 1e-6, keep_matrices: bool = False,
                    engine=None, progress: bool = False, **engine_kwargs):
    """Orbit influence of one batch `[N, C, H, W]` for each of `elements` (see `act`): a Dataset
    with `diagonal` (element, example), the standardized `H_g[n, n]`, `rank` (element) and, with
    `keep_matrices`, the raw Pi_g as `pi` (element, response, perturbation). `engine`: a
    `HatEngine` of this batch to reuse (else built with `energy_tol` and `engine_kwargs`)."""
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
        engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, progress=progress,
                           **engine_kwargs)
    elif engine.model is not model or engine.inputs.shape != inputs.shape:
        raise InputError("engine: built for another model or batch")

    diagonals, ranks, matrices = [], [], []
    for g in tqdm(parsed, desc="orbit influence", disable=not progress, leave=False):
        transform = None if g.element() == "e" else \
            functools.partial(act, element=g, pde=spec, convention=convention)
        pi, _ = engine.pi("gauss-newton", damping=damping, response_transform=transform)
        basis = engine.basis("gauss-newton", response_transform=transform)
        diagonals.append(torch.diagonal(standardize_rows(pi, std_eps)).cpu().numpy())
        ranks.append(int(basis.rank))
        if keep_matrices:
            matrices.append(pi.cpu().numpy())
    data = {"diagonal": (("element", "example"), np.stack(diagonals)),
            "rank": (("element",), np.asarray(ranks))}
    if keep_matrices:
        data["pi"] = (("element", "response", "perturbation"), np.stack(matrices))
    return xr.Dataset(
        data, coords={"element": labels, "example": np.arange(inputs.shape[0])},
        attrs={"pde": spec.name, "convention": convention, "damping": float(damping),
               "energy_tol": float(engine.energy_tol), "std_eps": float(std_eps),
               "description": "standardized rows of Pi_g (bras at g.x_n, g.y_n; kets and J at "
                              "x_m, y_m), diagonal"})
