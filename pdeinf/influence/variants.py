"""The one table of influence variants (metric x response observable x the PDEs it applies to)
that sweeps, analyses, the explorer and the pipeline look names up in.
"""
from __future__ import annotations

from dataclasses import dataclass

from pdeinf.config import pde_spec
from pdeinf.errors import InputError


@dataclass(frozen=True)
class Variant:
    """`metric` (of `hat.METRICS`) with the bra `observable` (of `observables.OBSERVABLES`); `needs`:
    the PDESpec fact the observable reads ("density_channel", "energy_channel") or None."""

    name: str
    metric: str
    observable: str = "smse"
    needs: str | None = None
    description: str = ""

    def applies_to(self, pde: str) -> bool:
        return self.needs is None or getattr(pde_spec(pde), self.needs) is not None


VARIANT_TABLE: dict[str, Variant] = {v.name: v for v in (
    Variant("gauss-newton", "gauss-newton", description="Gauss-Newton metric, SMSE bra (the papers' default)"),
    Variant("euclidean", "euclidean", description="plain gradient inner products G G^T (TracIn-like)"),
    Variant("adam", "adam", description="the checkpoint's AdamW preconditioner"),
    Variant("gn-mass", "gauss-newton", "mass_drift_sq", needs="density_channel",
            description="Gauss-Newton metric, squared relative mass-drift bra (the follow-up's)"),
    Variant("gn-energy", "gauss-newton", "energy_drift_sq", needs="energy_channel",
            description="Gauss-Newton metric, squared relative energy-drift bra (the follow-up's)"),
)}

#: Every variant name, in the order sweeps store them.
VARIANTS: tuple[str, ...] = tuple(VARIANT_TABLE)


def variants_for(pde: str) -> tuple[str, ...]:
    """The variants a sweep of `pde` stores (the drift bras need a density / energy channel)."""
    return tuple(name for name, v in VARIANT_TABLE.items() if v.applies_to(pde))


def variant(name: str) -> Variant:
    try:
        return VARIANT_TABLE[name]
    except KeyError:
        raise InputError(f"variant: unknown {name!r}; expected one of {', '.join(VARIANTS)}") from None


def variant_named(metric: str | None, observable: str | None) -> str:
    """The variant name of (metric, observable); defaults gauss-newton / smse."""
    key = (metric or "gauss-newton", observable or "smse")
    for v in VARIANT_TABLE.values():
        if (v.metric, v.observable) == key:
            return v.name
    known = ", ".join(f"{v.metric}/{v.observable}" for v in VARIANT_TABLE.values())
    raise InputError(f"metric/observable: {key[0]}/{key[1]} is not computed; one of {known}")
