"""Summaries of symmetry studies (`pdeinf.symmetry.study` with a leading `seed` dim; pure,
xarray in and out): layer shares, checkpoint trends, translation landscapes, the axis
convention and Lie derivative in words and, per seed, the statistics of the finding rules
(`seed_statistic`), which `symmetry_findings` turns into records (`evaluate.evaluate_finding`).
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import torch
import xarray as xr
from scipy import stats

from pdeinf.analysis.aggregate import pearson
from pdeinf.analysis.evaluate import evaluate_finding
from pdeinf.errors import InputError
from pdeinf.symmetry.actions import ELEMENTS, act
from pdeinf.symmetry.equivariance import aggregate_equivariance  # noqa: F401  (the figures' aggregation)

__all__ = ["FINDINGS", "convention_summary", "d4_labels", "epoch_trends", "layer_shares",
           "lie_summary", "orbit_quartiles", "seed_statistic", "shift_labels", "symmetry_findings"]

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
    return [str(e) for e in ds["element"].values
            if not str(e).startswith(("shift", "affine")) and str(e) != "e"]


def shift_labels(ds) -> list[str]:
    return [str(e) for e in ds["element"].values if str(e).startswith("shift")]


def _seed_q3(errors: xr.DataArray) -> xr.DataArray:
    """Per seed and element: Q3 over batches x examples."""
    return errors.quantile(0.75, dim=("batch", "example")).drop_vars("quantile")


def seed_statistic(ds, rule: str) -> xr.DataArray:
    """The statistic of `rule` per seed, dims (seed,): for `ns_d4_broken`, `ce_d4_within_25pct`
    (`translation_within_few_percent`) log10 of the largest, over the non-identity D4 (shift)
    elements, Q3 over batches x examples of the equivariance ratio; for
    `orbit_influence_suppressed` the Spearman correlation over the elements of the median orbit
    diagonal with the log10 Q3 ratio (averaged over seeds on Fisher's z scale)."""
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


def orbit_quartiles(ds) -> xr.DataArray:
    """Quartiles (0.25, 0.5, 0.75) of the orbit diagonal over seeds x batches x examples, per
    element (`quantile`, `element`)."""
    _check(ds, ("orbit_diagonal",))
    return ds["orbit_diagonal"].quantile([0.25, 0.5, 0.75], dim=("seed", "batch", "example"))


def signed(shift: int, n: int) -> int:
    """A circular shift 0..n-1 as the signed shift -n/2..n/2-1 it equals."""
    return shift - n if shift >= (n + 1) // 2 else shift


def translation_landscape(ds, n: int) -> dict:
    """The follow-up's translation landscapes (its Figs. 5-8 and 11-20) of a study on an n x n
    grid: `axis` {"y" | "x": (signed shifts, orbit-diagonal quartiles [3, shifts])}, identity
    at 0; `box_influence`, `box_error` `[box + 1, box + 1]` over (a along y, b along x): median
    orbit diagonal, and median over seeds of the Q3 equivariance ratio (NaN where missing)."""
    _check(ds, ("equivariance", "orbit_diagonal"))
    labels = [str(e) for e in ds["element"].values]
    shifts = {lab: (int(m[1]), int(m[2])) for lab in labels
              if (m := re.fullmatch(r"shift\((-?\d+),(-?\d+)\)", lab))}
    q = orbit_quartiles(ds)
    axis = {}
    for name, along in (("y", 0), ("x", 1)):  # the shifts with the other component 0
        chosen = sorted([(0, "e"), *((signed(ab[along], n), lab) for lab, ab in shifts.items()
                                     if ab[1 - along] == 0)], key=lambda t: t[0])
        axis[name] = (np.asarray([s for s, _ in chosen]),
                      q.sel(element=[lab for _, lab in chosen]).values)
    box = max([min(a, b) for a, b in shifts.values() if a and b], default=0)
    influence, error = np.full((2, box + 1, box + 1), np.nan)
    med = q.sel(quantile=0.5)
    err = _seed_q3(ds["equivariance"]).median("seed")
    for a, b in np.ndindex(box + 1, box + 1):
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
    return (norms / total.where(total > 0)).median(("seed", "batch", "example"))


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
        with warnings.catch_warnings():  # NaN throughout where a checkpoint is not measured
            # (the orbit diagonal outside `symmetry_orbit_epochs`): NaN quartiles, as meant
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            q = da.quantile([0.25, 0.5, 0.75], dim=dims)
        for suffix, level in (("", 0.5), ("_q1", 0.25), ("_q3", 0.75)):
            out[name + suffix] = q.sel(quantile=level, drop=True)
    return xr.Dataset(out)


def convention_summary(studies: dict) -> str:
    """The D4 elements on which the authors' axis convention is our action with v -> -v (NS),
    and per (pde, model) whether they are the four largest errors under the authors' axes."""
    u = torch.arange(128, dtype=torch.float64).reshape(1, 2, 8, 8)
    flips = [g for g in ELEMENTS
             if not torch.equal(act(u, g, pde="NS", convention="authors"), act(u, g, pde="NS"))]
    lines = [f"the authors' convention flips the vectors on {flips}"]
    for (pde, model), ds in studies.items():
        theirs = _seed_q3(ds["equivariance_authors"]).median("seed").drop_sel(d4="e")
        top4 = sorted(str(g) for g in theirs["d4"].values[np.argsort(theirs.values)[-4:]])
        lines.append(f"{pde}-{model}: the four largest errors under the authors' axes are {top4}; "
                     f"the sign-flip set: {top4 == sorted(flips)}")
    return "\n".join(lines)


def lie_summary(studies: dict) -> str:
    """Per (pde, model), first to last checkpoint (`epoch_trends`): the x-translation Lie norm
    and the worst D4 element's orbit influence relative to the identity's."""
    lines = []
    for (pde, model), ds in studies.items():
        tr = epoch_trends(ds)
        lie, rel = tr["lie"].sel(generator="x").values, tr["orbit_relative"].sel(tracked="worst_d4").values
        ep = tr["epoch"].values
        follows = (rel[-1] > rel[0]) == (lie[-1] < lie[0])
        lines.append(f"{pde}-{model}: Lie norm (x) {lie[0]:.3g} at epoch {ep[0]} -> {lie[-1]:.3g} at epoch "
                     f"{ep[-1]} ({'more' if lie[-1] < lie[0] else 'less'} equivariant); orbit influence of "
                     f"the worst D4 element relative to the identity {rel[0]:.3g} -> {rel[-1]:.3g} "
                     f"({'follows' if follows else 'does not follow'})")
    return "\n".join(lines)
