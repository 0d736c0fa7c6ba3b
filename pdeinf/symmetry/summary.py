"""Summaries of the symmetry study (`pdeinf.symmetry.study`, with a leading `seed` dim): the
follow-up's aggregation, the per-seed statistics of the finding rules, Lie-derivative layer
shares and checkpoint trends. Pure: xarray in, xarray out.

Statistics of the rules (`pdeinf.analysis.registry.FINDING_RULES`), one value per seed:

- `ns_d4_broken`, `ce_d4_within_25pct`: log10 of the largest, over the 7 non-identity D4
  elements, Q3 over the seed's batches x examples of the equivariance ratio;
- `translation_within_few_percent`: the same over the axis-shift elements;
- `orbit_influence_suppressed`: Spearman correlation, over the group elements (identity, D4,
  shifts), of the seed's median orbit-influence diagonal (over batches x examples) with the
  log10 of its Q3 equivariance ratio (averaged over seeds on Fisher's z scale).

`symmetry_findings` turns them into records (`pdeinf.analysis.evaluate.evaluate_finding`).
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from pdeinf.analysis.aggregate import pearson
from pdeinf.analysis.evaluate import evaluate_finding
from pdeinf.errors import InputError
from pdeinf.symmetry.equivariance import aggregate_equivariance

__all__ = ["FINDINGS", "d4_labels", "epoch_trends", "equivariance_summary", "layer_shares",
           "orbit_quartiles", "seed_statistic", "shift_labels", "symmetry_findings"]

FINDINGS = ("ns_d4_broken", "ce_d4_within_25pct", "translation_within_few_percent",
            "orbit_influence_suppressed")


def _check(ds, names) -> None:
    if not isinstance(ds, xr.Dataset):
        raise InputError(f"ds: expected the symmetry study as an xr.Dataset, got {type(ds).__name__}")
    missing = [n for n in names if n not in ds]
    if missing or "seed" not in ds.dims:
        raise InputError(f"ds: needs a seed dim and {list(names)}; missing {missing or ['seed']}")


def d4_labels(ds) -> list[str]:
    """Non-identity D4 element labels of the study's `element` coordinate."""
    return [str(e) for e in ds["element"].values if not str(e).startswith(("shift", "affine")) and str(e) != "e"]


def shift_labels(ds) -> list[str]:
    return [str(e) for e in ds["element"].values if str(e).startswith("shift")]


def _seed_q3(errors: xr.DataArray) -> xr.DataArray:
    """Per seed and element: Q3 over batches x examples."""
    return errors.quantile(0.75, dim=("batch", "example")).drop_vars("quantile")


def seed_statistic(ds, rule: str) -> xr.DataArray:
    """The statistic of `rule` (module docstring) per seed, dims (seed,)."""
    _check(ds, ("equivariance", "orbit_diagonal"))
    eqv = ds["equivariance"]
    if rule in ("ns_d4_broken", "ce_d4_within_25pct", "translation_within_few_percent"):
        labels = shift_labels(ds) if rule.startswith("translation") else d4_labels(ds)
        if not labels:
            raise InputError(f"ds: no elements for {rule}")
        return np.log10(_seed_q3(eqv.sel(element=labels)).max("element")).transpose("seed")
    if rule == "orbit_influence_suppressed":
        q3 = _seed_q3(eqv).transpose("seed", "element")
        orbit = ds["orbit_diagonal"].median(("batch", "example")).transpose("seed", "element")
        rho = pearson(stats.rankdata(np.log10(q3.values), axis=-1),
                      stats.rankdata(orbit.values, axis=-1), zero_spread="tolerance")
        return xr.DataArray(rho, dims=("seed",), coords={"seed": ds["seed"].values})
    raise InputError(f"rule: expected one of {', '.join(FINDINGS)}, got {rule!r}")


def symmetry_findings(studies: dict) -> dict:
    """`{rule: [record per (pde, model)]}` for `studies` {(pde, model): study Dataset}: the D4
    rules only for their PDE (ns_d4_broken on NS, ce_d4_within_25pct on CE)."""
    out: dict = {r: [] for r in FINDINGS}
    for (pde, model), ds in studies.items():
        for rule in FINDINGS:
            if (rule == "ns_d4_broken" and pde != "NS") or (rule == "ce_d4_within_25pct" and pde != "CE"):
                continue
            values = seed_statistic(ds, rule)
            out[rule].append(evaluate_finding(
                rule, values.values, key=pde if rule == "ns_d4_broken" else None, pde=pde,
                model=model, scale="fisher-z" if rule == "orbit_influence_suppressed" else "linear",
                seeds=[int(v) for v in values["seed"].values]))
    return {k: v for k, v in out.items() if v}


def equivariance_summary(ds, variable: str = "equivariance") -> xr.Dataset:
    """The follow-up's aggregation (per seed Q3, median and quartiles over seeds) per element."""
    _check(ds, (variable,))
    return aggregate_equivariance(ds[variable])


def orbit_quartiles(ds) -> xr.DataArray:
    """Quartiles (0.25, 0.5, 0.75) of the orbit diagonal over seeds x batches x examples, per
    element (`quantile`, `element`)."""
    _check(ds, ("orbit_diagonal",))
    return ds["orbit_diagonal"].quantile([0.25, 0.5, 0.75], dim=("seed", "batch", "example"))


def _shift_of(label: str) -> tuple[int, int] | None:
    """`(a, b)` of a label "shift(a,b)", None for other elements."""
    if not label.startswith("shift("):
        return None
    a, b = label[len("shift("):-1].split(",")
    return int(a), int(b)


def signed(shift: int, n: int) -> int:
    """A circular shift 0..n-1 as the signed shift -n/2..n/2-1 it equals."""
    return shift - n if shift >= (n + 1) // 2 else shift


def translation_landscape(ds, n: int) -> dict:
    """The follow-up's translation landscapes (its Figs. 5-8 and 11-20 recipe) from one study
    with every axis shift and a box grid of joint shifts:

    - `axis`: {"y" | "x": (signed shifts, orbit-diagonal quartiles [3, shifts])} along each axis,
      identity included at 0, quartiles over seeds x batches x examples;
    - `box_influence`, `box_error`: [box + 1, box + 1] arrays over (a, b) = 0..box (rows a along
      y, columns b along x): the median orbit diagonal over seeds x batches x examples, and the
      median over seeds of the per-seed Q3 equivariance ratio; NaN where an element is missing.
    `n`: grid size (shifts are circular modulo n)."""
    _check(ds, ("equivariance", "orbit_diagonal"))
    labels = [str(e) for e in ds["element"].values]
    shifts = {lab: _shift_of(lab) for lab in labels if _shift_of(lab) is not None}
    q = orbit_quartiles(ds)
    axis = {}
    for name, pick in (("y", lambda a, b: b == 0), ("x", lambda a, b: a == 0)):
        chosen = sorted(((signed(a if name == "y" else b, n), lab) for lab, (a, b) in shifts.items()
                         if pick(a, b)), key=lambda t: t[0])
        xs = [0] + [s for s, _ in chosen]
        vals = q.sel(element=["e"] + [lab for _, lab in chosen]).values
        order = np.argsort(xs)
        axis[name] = (np.asarray(xs)[order], vals[:, order])
    box = max([min(a, b) for a, b in shifts.values() if a and b], default=0)
    influence = np.full((box + 1, box + 1), np.nan)
    error = np.full((box + 1, box + 1), np.nan)
    med = q.sel(quantile=0.5)
    err = _seed_q3(ds["equivariance"]).median("seed")
    for a in range(box + 1):
        for b in range(box + 1):
            lab = "e" if a == b == 0 else f"shift({a},{b})"
            if lab in labels:
                influence[a, b] = float(med.sel(element=lab))
                error[a, b] = float(err.sel(element=lab))
    return {"axis": axis, "box_influence": influence, "box_error": error, "box": box}


def layer_shares(ds) -> xr.DataArray:
    """Median (over seeds, batches, examples) share of each hooked module in the x-translation
    Lie derivative: ||c_i|| / sum_j ||c_j|| (j over modules and the remainder), per `layer`."""
    _check(ds, ("lie_layer_norm",))
    norms = ds["lie_layer_norm"]
    total = norms.sum("layer")
    share = (norms / total.where(total > 0)).median(("seed", "batch", "example"))
    return share


def epoch_trends(ds) -> xr.Dataset:
    """Across checkpoints: median (over seeds, examples) Lie norm per generator, equivariance
    ratio and orbit diagonal per tracked element, and the orbit diagonal relative to the
    identity's (`orbit_relative`, 1 = as much self-influence on the orbit partner as on the
    example itself); quartiles over seeds x examples in `*_q1`, `*_q3`."""
    _check(ds, ("lie_norm_epochs", "equivariance_epochs", "orbit_diagonal_epochs"))
    dims = ("seed", "example")
    rel = ds["orbit_diagonal_epochs"] / ds["orbit_diagonal_epochs"].sel(tracked="identity")
    out = {}
    for name, da in (("lie", ds["lie_norm_epochs"]), ("equivariance", ds["equivariance_epochs"]),
                     ("orbit", ds["orbit_diagonal_epochs"]), ("orbit_relative", rel)):
        q = da.quantile([0.25, 0.5, 0.75], dim=dims)
        out[name] = q.sel(quantile=0.5, drop=True)
        out[f"{name}_q1"] = q.sel(quantile=0.25, drop=True)
        out[f"{name}_q3"] = q.sel(quantile=0.75, drop=True)
    return xr.Dataset(out)
