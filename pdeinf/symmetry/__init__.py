"""Symmetry of PDE surrogates (follow-up, docs/method.md section 7): group actions (D4, circular
shifts) on fields, the forward equivariance error, the Lie derivative (Gruver et al. 2023) and
orbit influence (bras at transformed examples); `study` (one seed's whole study as a Dataset)
and `summary` (the follow-up's aggregation and the verdict statistics). `actions` is pure
tensor code (importable from training); the others sit above `pdeinf.influence`, imported lazily.
"""
from __future__ import annotations

import importlib

from pdeinf.symmetry.actions import (
    CONVENTIONS,
    ELEMENTS,
    act,
    axis_assignment_check,
    compose,
    inverse,
)

_LAZY = {name: f"pdeinf.symmetry.{module}" for module, names in (
    ("equivariance", ("equivariance_error", "aggregate_equivariance")),
    ("lie", ("lie_derivative", "GENERATORS")), ("orbit", ("orbit_influence",)),
    ("study", ("symmetry_study",)), ("summary", ("symmetry_findings",))) for name in names}

__all__ = [
    "CONVENTIONS", "ELEMENTS", "GENERATORS", "act", "aggregate_equivariance",
    "axis_assignment_check", "compose", "equivariance_error", "inverse", "lie_derivative",
    "orbit_influence", "symmetry_findings", "symmetry_study",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pdeinf.symmetry' has no attribute {name!r}")
