"""Influence (gradient coherence) of neural PDE surrogates: the hat matrix and its variants.

`hat_matrix(model, inputs, targets, ...)` computes Pi for one batch (see hat.py; bras other than
SMSE use the joint basis of ket and bra gradients, `bra_basis="ket"` the ket span alone);
`normalize(pi, kind)` rescales it; `variants` is the one table of metric x bra variants;
`task.labelled_influence` labels one batch. Whole profiles are the pipeline's (`pdeinf.pipeline`).
"""
from pdeinf.influence.hat import (
    BRA_BASES,
    ESTIMATORS,
    METRICS,
    HatEngine,
    HatResult,
    adam_preconditioner,
    hat_matrix,
)
from pdeinf.influence.monitor import CoherenceMonitor
from pdeinf.influence.normalize import NORMALIZATIONS, normalize
from pdeinf.influence.observables import OBSERVABLES, energy_drift, mass_drift
from pdeinf.influence.variants import VARIANT_TABLE, VARIANTS, variants_for

__all__ = [
    "BRA_BASES", "ESTIMATORS", "METRICS", "NORMALIZATIONS", "OBSERVABLES", "VARIANTS",
    "VARIANT_TABLE", "CoherenceMonitor", "HatEngine", "HatResult", "adam_preconditioner", "energy_drift",
    "hat_matrix", "mass_drift", "normalize", "variants_for",
]
