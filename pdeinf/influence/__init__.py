"""Influence (gradient coherence) of neural PDE surrogates: the hat matrix and its variants.

`hat_matrix(model, inputs, targets, ...)` computes Pi for one batch (see hat.py);
`normalize(pi, kind)` rescales it; `sweep.run_sweep` / `sweep.load_sweep` cover whole profiles.
"""
from pdeinf.influence.hat import METRICS, HatEngine, HatResult, adam_preconditioner, hat_matrix
from pdeinf.influence.normalize import NORMALIZATIONS, normalize
from pdeinf.influence.observables import OBSERVABLES, energy_drift, mass_drift

#: The variants stored by a sweep: metrics with the SMSE bra, then (CE only) the Gauss-Newton
#: metric with the relative mass / energy drift bras.
VARIANTS: tuple[str, ...] = ("gauss-newton", "euclidean", "adam", "gn-mass", "gn-energy")

__all__ = [
    "METRICS", "NORMALIZATIONS", "OBSERVABLES", "VARIANTS", "HatEngine", "HatResult",
    "adam_preconditioner", "energy_drift", "hat_matrix", "mass_drift", "normalize",
]
