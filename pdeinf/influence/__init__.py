"""Influence of neural PDE surrogates: `hat_matrix` (hat.py), `normalize`, the variant table
and `CoherenceMonitor`; labelled datasets in `task`, whole profiles in `pdeinf.pipeline`.
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

__all__ = ["BRA_BASES", "ESTIMATORS", "METRICS", "NORMALIZATIONS", "OBSERVABLES", "VARIANTS", "VARIANT_TABLE",
           "CoherenceMonitor", "HatEngine", "HatResult", "adam_preconditioner", "energy_drift", "hat_matrix",
           "mass_drift", "normalize", "variants_for"]
