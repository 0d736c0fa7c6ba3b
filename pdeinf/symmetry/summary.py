"""Summaries of the symmetry study (`pdeinf.symmetry.study`, with a leading `seed` dim): the
follow-up's aggregation, the statistics of the verdict rules with hierarchical-bootstrap
intervals, Lie-derivative layer shares and checkpoint trends. Pure: xarray in, xarray out.

Statistics of the rules (`pdeinf.analysis.verdicts.VERDICT_RULES`):

- `ns_d4_broken`, `ce_d4_within_25pct`: median over seeds of log10 of the largest, over the 7
  non-identity D4 elements, per-seed Q3 (over batches x examples) of the equivariance ratio;
- `translation_within_few_percent`: the same over the axis-shift elements;
- `orbit_influence_suppressed`: Spearman correlation, over the group elements (identity, D4,
  shifts), of the median orbit-influence diagonal (over seeds x batches x examples) with the
  log10 of the follow-up's aggregate of the equivariance ratio (median over seeds of the
  per-seed Q3).

Each entry also carries `needed` (`pdeinf.analysis.verdicts.needed_for_rule`), the seeds x
batches a decisive verdict would need, from per-(seed, batch) versions of the statistic
(`finding_units`): the log10 of the largest, over elements, Q3 over that batch's examples, and
the Spearman over elements within that (seed, batch). With one batch only seeds vary. The
statistics are medians / rank correlations of aggregates, so the projection is approximate.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from pdeinf.analysis.statistics import hierarchical_bootstrap
from pdeinf.analysis.verdicts import VERDICT_RULES, apply_rule, needed_for_rule
from pdeinf.errors import InputError
from pdeinf.symmetry.equivariance import aggregate_equivariance

__all__ = ["FINDINGS", "d4_labels", "epoch_trends", "equivariance_summary", "finding_entry", "finding_interval",
           "finding_units", "layer_shares", "orbit_quartiles", "shift_labels", "symmetry_findings"]

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


def _log_max_q3(errors: xr.DataArray) -> xr.DataArray:
    """median over seeds of log10 max_element Q3_(batch, example) (any leading dims kept)."""
    q3 = errors.quantile(0.75, dim=("batch", "example")).drop_vars("quantile")
    return np.log10(q3.max("element")).median("seed")


def _spearman_stat(data: xr.DataArray) -> xr.DataArray:
    """Spearman over elements (vectorised over any leading `resample` dim)."""
    eqv = data.sel(quantity="equivariance", drop=True)
    q3 = eqv.quantile(0.75, dim=("batch", "example")).drop_vars("quantile").median("seed")
    orbit = data.sel(quantity="orbit", drop=True).median(("seed", "batch", "example"))
    x = np.log10(q3.transpose(..., "element").values)
    y = orbit.transpose(..., "element").values
    rx, ry = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    rho = np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)
    dims = [d for d in q3.dims if d != "element"]
    return xr.DataArray(rho, dims=dims)


def finding_interval(ds, rule: str, *, n_resamples: int = 1000, random_state: int = 0) -> xr.DataArray:
    """The statistic of `rule` (module docstring) with its 95% hierarchical-bootstrap interval
    over seeds and batches (`ci` = estimate, low, high)."""
    _check(ds, ("equivariance", "orbit_diagonal"))
    kw = {"n_resamples": n_resamples, "random_state": random_state}
    eqv = ds["equivariance"]
    if rule in ("ns_d4_broken", "ce_d4_within_25pct", "translation_within_few_percent"):
        labels = shift_labels(ds) if rule.startswith("translation") else d4_labels(ds)
        if not labels:
            raise InputError(f"ds: no elements for {rule}")
        return hierarchical_bootstrap(eqv.sel(element=labels), _log_max_q3, vectorized=True, **kw)
    if rule == "orbit_influence_suppressed":
        data = xr.concat([eqv, ds["orbit_diagonal"]], dim="quantity").assign_coords(
            quantity=["equivariance", "orbit"])
        return hierarchical_bootstrap(data, _spearman_stat, vectorized=True, **kw)
    raise InputError(f"rule: expected one of {', '.join(FINDINGS)}, got {rule!r}")


def finding_units(ds, rule: str) -> xr.DataArray:
    """Per-(seed, batch) values of the statistic of `rule` (module docstring), dims (seed,
    batch): the power analysis's units (`needed_for_rule`)."""
    _check(ds, ("equivariance", "orbit_diagonal"))
    eqv = ds["equivariance"]
    if rule in ("ns_d4_broken", "ce_d4_within_25pct", "translation_within_few_percent"):
        labels = shift_labels(ds) if rule.startswith("translation") else d4_labels(ds)
        if not labels:
            raise InputError(f"ds: no elements for {rule}")
        q3 = eqv.sel(element=labels).quantile(0.75, dim="example").drop_vars("quantile")
        return np.log10(q3.max("element")).transpose("seed", "batch")
    if rule == "orbit_influence_suppressed":
        data = xr.concat([eqv, ds["orbit_diagonal"]], dim="quantity").assign_coords(
            quantity=["equivariance", "orbit"])
        rho = [[float(_spearman_stat(data.isel(seed=[i], batch=[j])))
                for j in range(data.sizes["batch"])] for i in range(data.sizes["seed"])]
        return xr.DataArray(np.array(rho, dtype=np.float64), dims=("seed", "batch"),
                            coords={"seed": ds["seed"].values, "batch": ds["batch"].values})
    raise InputError(f"rule: expected one of {', '.join(FINDINGS)}, got {rule!r}")


def finding_entry(ci: xr.DataArray, rule: str, *, pde: str, model: str, units=None) -> dict:
    """One entry of the results JSON's `findings[rule]` list; with `units` (`finding_units`)
    also `needed` (`needed_for_rule` with this entry's estimate and verdict)."""
    r = VERDICT_RULES[rule]
    est, low, high = (float(ci.sel(ci=k)) for k in ("estimate", "low", "high"))
    n_seeds, n_batches = int(ci.attrs.get("n_seeds", 0)), int(ci.attrs.get("n_batches", 0))
    # one seed and one batch: nothing is resampled, the "interval" is a point
    resampled = n_seeds > 1 or n_batches > 1
    word = apply_rule(rule, ci) if resampled and np.isfinite(low) and np.isfinite(high) else "inconclusive"
    entry = {"pde": pde, "model": model, "estimate": est, "low": low, "high": high,
             "n_seeds": n_seeds, "n_batches": n_batches,
             "verdict": str(word), "rule": r.text(), "paper": r.paper_note or r.claim}
    if units is not None:
        entry["needed"] = needed_for_rule(rule, units, estimate=est, verdict=str(word))
    return entry


def symmetry_findings(studies: dict, *, n_resamples: int = 1000, random_state: int = 0) -> dict:
    """`{rule: [entry per (pde, model)]}` for `studies` {(pde, model): study Dataset}: the D4
    rules only for their PDE (ns_d4_broken on NS, ce_d4_within_25pct on CE)."""
    out: dict = {r: [] for r in FINDINGS}
    for (pde, model), ds in studies.items():
        for rule in FINDINGS:
            if (rule == "ns_d4_broken" and pde != "NS") or (rule == "ce_d4_within_25pct" and pde != "CE"):
                continue
            ci = finding_interval(ds, rule, n_resamples=n_resamples, random_state=random_state)
            out[rule].append(finding_entry(ci, rule, pde=pde, model=model,
                                           units=finding_units(ds, rule)))
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
