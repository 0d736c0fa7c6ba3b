"""A finding's rule and its per-seed data -> a record; one pass adjusts a table of records for
multiplicity and gives each its two-part verdict (docs/method.md sections 10-11).

The **direction** is the Holm-adjusted (within the record's layer) one-sample t-test over seed
means: "paper side", "other side" or "undecided". The **size**, where the paper gives a number,
is ours against it (ratio or difference, TOST against the rule's band): "within band",
"smaller" / "larger" or "undetermined". Rules are `pdeinf.analysis.registry.FINDING_RULES`.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pdeinf.analysis import registry
from pdeinf.analysis import statistics as st
from pdeinf.analysis.registry import FindingRule
from pdeinf.errors import InputError

ALPHA = 0.05
LEVEL = 0.95
INTERVAL_METHOD = "t over seed means (S - 1 df)"

REPRODUCED = "reproduced"
SMALLER = "same direction, smaller"
LARGER = "same direction, larger"
SIZE_UNDECIDED = "same direction, size inconclusive"
DIRECTION_ONLY = "direction only: same direction"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_ESTIMABLE = "not estimable"
LABELS = (REPRODUCED, SMALLER, LARGER, SIZE_UNDECIDED, DIRECTION_ONLY, CONTRADICTED,
          INCONCLUSIVE, NOT_ESTIMABLE)
#: Every word a record's verdict can take: LABELS and the rules' own direction words.
VERDICT_WORDS = LABELS + tuple(dict.fromkeys(
    w for r in registry.FINDING_RULES.values() for w in (r.direction_words or ())))
#: Scales the per-seed values are analysed on: "linear", or "fisher-z" for correlations
#: (the t-interval of atanh(r), reported back on the r scale).
SCALES = ("linear", "fisher-z")


def _forward(values: np.ndarray, scale: str) -> np.ndarray:
    return values if scale == "linear" else st.fisher_z(values)


def size_part(rule: FindingRule, paper: float | None, work: np.ndarray, interval,
              scale: str = "linear") -> dict | None:
    """Ours against the paper's number: {"kind", "value", "low", "high", "band", "tost_p",
    "result"}, None without a size rule or paper number. work: per-unit values on the analysis
    scale (where the TOST runs); interval: (estimate, low, high) on the statistic's scale."""
    if paper is None or rule.size_kind is None:
        return None
    ratio = rule.size_kind == "ratio"
    if ratio and paper == 0.0:
        raise InputError(f"{rule.name}: a ratio size part needs a non-zero paper number")
    lo, hi = rule.size_band
    band = sorted((lo * paper, hi * paper) if ratio else (paper + lo, paper + hi))
    p = st.tost_p(work, *(float(_forward(np.array(v), scale)) for v in band))
    value, low, high = interval
    # below the band is toward the null for a finding on the upper side, away from it otherwise
    below, above = ("smaller", "larger") if rule.paper_sign > 0 else ("larger", "smaller")
    result = "undetermined" if not math.isfinite(p) else (
        "within band" if p < ALPHA else below if high < band[0] else above if low > band[1]
        else "undetermined")
    ends = sorted(v / paper if ratio else v - paper for v in (low, high))
    return {"kind": rule.size_kind, "value": value / paper if ratio else value - paper,
            "low": ends[0], "high": ends[1], "band": list(rule.size_band), "tost_p": p,
            "result": result}


def label(direction: str, size: dict | None, estimable: bool,
          words: tuple[str, str] | None = None) -> str:
    """The two-part verdict word of a direction and a size part; `words` replace the
    paper-side / other-side labels of rules that declare them."""
    if not estimable:
        return NOT_ESTIMABLE
    if direction not in ("paper side", "other side"):
        return INCONCLUSIVE
    if words is not None:
        return words[0] if direction == "paper side" else words[1]
    if direction == "other side":
        return CONTRADICTED
    if size is None:
        return DIRECTION_ONLY
    return {"within band": REPRODUCED, "smaller": SMALLER, "larger": LARGER}.get(
        size["result"], SIZE_UNDECIDED)


def evaluate_finding(name: str, values, *, key: str | None = None, pde: str = "",
                     model: str = "", scale: str = "linear", **extra) -> dict:
    """The record of finding `name` from `values`, its statistic per unit of replication
    (`[seeds, batches]`, `[seeds]` or a DataArray of dims (seed[, batch]); NaN = failed unit).
    The estimate is the mean of the seed means (fisher-z: tanh of the mean of atanh); `key`
    picks the rule's paper number ("PDE-model", "PDE", "model", "PDE-model dt=k"); `extra`
    labels are kept (dt, recipe, cls, note, seeds). Fields: finding, layer, pde, model,
    estimate, low, high, interval, per_seed, n_seeds, n_batches, n_failed, null, p, p_adjusted
    (= p until `adjust_records`), direction, paper, size, verdict, rule, estimable, needed."""
    if scale not in SCALES:
        raise InputError(f"scale: expected one of {SCALES}, got {scale!r}")
    rule = registry.rule(name)
    if isinstance(values, xr.DataArray):
        order = [d for d in ("seed", "batch") if d in values.dims]
        if set(values.dims) - set(order):
            raise InputError(f"values: expected dims (seed[, batch]), got {values.dims}")
        values = values.transpose(*order).values
    raw = st.as_seed_batch(values, f"{name} values")
    summary = st.summarize_seeds(raw)
    if scale == "fisher-z" and np.any(np.abs(raw[np.isfinite(raw)]) > 1.0):
        raise InputError(f"{name} values: a correlation lies outside [-1, 1]")
    work = _forward(raw, scale)
    null = float(_forward(np.array(rule.null), scale))
    estimate, low, high = interval = tuple(float(v if scale == "linear" else np.tanh(v))
                                           for v in st.seed_interval(work, LEVEL))
    estimable = math.isfinite(low) and math.isfinite(high)
    paper = float(rule.paper_values[key]) if key is not None and key in rule.paper_values else None
    n_seeds, n_batches = summary.design
    needed = (st.seeds_needed(work, float(_forward(np.array(estimate), scale)) - null, level=LEVEL)
              if estimable else None)
    record = {
        "finding": name, "layer": rule.layer, "pde": pde, "model": model,
        "estimate": estimate, "low": low, "high": high,
        "interval": INTERVAL_METHOD + (" of Fisher's z, back-transformed" if scale == "fisher-z" else ""),
        "per_seed": [float(v) for v in summary.seed_means],
        "n_seeds": int(n_seeds), "n_batches": int(n_batches), "n_failed": summary.n_failed,
        "null": float(rule.null), "p": st.t_test_p(work, null), "paper": paper,
        "size": size_part(rule, paper, work, interval, scale) if estimable else None,
        "rule": rule.text(), "estimable": estimable,
        "needed": {"n_seeds": needed, "n_batches": int(n_batches), "power": st.POWER,
                   "variance_bound": "upper 80% confidence bound of the seed spread"},
        **extra,
    }
    record["p_adjusted"] = record["p"]
    if summary.failed_share > st.MAX_FAILED_SHARE:
        record["note"] = (f"{summary.n_failed} of {summary.n_units} units failed "
                          f"(> {st.MAX_FAILED_SHARE:.1%}): not estimable")
    return _decide(record, rule, estimable)


def evaluate_units(name: str, units: xr.DataArray, **kwargs) -> dict:
    """`evaluate_finding` of per-unit values (dims seed[, batch]) with their seed labels
    (`seeds`: ints where the labels are integers)."""
    seeds = [int(s) if np.issubdtype(type(s), np.integer) else str(s)
             for s in units["seed"].values.tolist()]
    return evaluate_finding(name, units, seeds=seeds, **kwargs)


def _decide(record: dict, rule: FindingRule, estimable: bool) -> dict:
    """Set the record's direction and verdict from its estimate and adjusted p."""
    estimate, p_adjusted = (math.nan if record.get(k) is None else record[k]
                            for k in ("estimate", "p_adjusted"))
    if not (math.isfinite(p_adjusted) and math.isfinite(estimate)) or p_adjusted >= ALPHA:
        record["direction"] = "undecided"
    else:
        record["direction"] = ("paper side" if (estimate - rule.null) * rule.paper_sign > 0
                               else "other side")
    record["verdict"] = label(record["direction"], record.get("size"), estimable,
                              rule.direction_words)
    return record


def adjust_records(records: list[dict]) -> list[dict]:
    """New dicts of `records` (same order) with the direction p-values Holm-adjusted within
    each layer and every verdict recomputed; records without a `p` are copied unchanged."""
    out = [dict(r) for r in records]
    for layer in {r["layer"] for r in out if "p" in r}:
        idx = [i for i, r in enumerate(out) if "p" in r and r["layer"] == layer]
        p = np.array([np.nan if out[i]["p"] is None else out[i]["p"] for i in idx], dtype=float)
        for i, q in zip(idx, st.holm(p)):
            out[i]["p_adjusted"] = float(q)
            _decide(out[i], registry.rule(out[i]["finding"]), bool(out[i]["estimable"]))
            out[i]["family_size"] = int(np.isfinite(p).sum())
    return out


def finding_lines(findings) -> list[str]:
    """One line per record (`findings`: a list of records or {name: record or [records]}):
    finding, where, estimate [95% t-interval] over S x B, the verdict, the paper's number and
    the size, adjusted p, the seeds a decisive direction needs."""
    groups = findings.values() if isinstance(findings, dict) else [findings]
    lines = []
    for rec in (r for recs in groups for r in (recs if isinstance(recs, list) else [recs])):
        where = "-".join(str(v) for v in (rec.get("pde"), rec.get("model")) if v)
        where += (f" class {rec['cls']}" if rec.get("cls") else "") + (
            f" dt={rec['dt']}" if rec.get("dt") is not None else "")
        interval = ("no interval" if rec["low"] is None or not math.isfinite(rec["low"])
                    else f"95% CI {rec['low']:.3g} .. {rec['high']:.3g}")
        tail, size = "", rec.get("size")
        if rec.get("paper") is not None:
            tail = f"; paper {rec['paper']:.3g}"
            if size and size.get("value") is not None and math.isfinite(size["value"]):
                word = "ratio" if size["kind"] == "ratio" else "difference"
                tail += f" ({word} {size['value']:.2g}, band {size['band'][0]:g}..{size['band'][1]:g})"
        p_adj, need = rec.get("p_adjusted"), (rec.get("needed") or {}).get("n_seeds")
        tail += "" if p_adj is None or not math.isfinite(p_adj) else f"; adjusted p {p_adj:.2g}"
        tail += f"; a decisive direction needs {need} x {rec['n_batches']}" if need else ""
        lines.append(f"{rec['finding']} [{where}]: {rec['estimate']:.3g} ({interval}; "
                     f"{rec['n_seeds']} seeds x {rec['n_batches']} batches) -> "
                     f"{rec['verdict'].upper()}{tail}")
    return lines
