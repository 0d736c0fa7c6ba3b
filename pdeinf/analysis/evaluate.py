"""One function turns a finding's rule and its per-seed data into a record, and one pass
adjusts a table of records for multiplicity and gives each its two-part verdict.

A record answers two questions against its rule (`pdeinf.analysis.registry.FINDING_RULES`):
the **direction** (the Holm-adjusted one-sample t-test over seed means, adjusted within the
record's layer: "paper side", "other side" or "undecided") and, where the paper gives a number,
the **size** (ours against it as a ratio or difference, TOST against the rule's band: "within
band", "smaller" / "larger" or "undetermined"). The verdict words (`LABELS`, and the rules' own
`direction_words`) and their table are docs/method.md sections 10-11. Every record carries its
per-seed values, failed-unit count, raw and adjusted p, and the seeds a decisive direction would
need at its measured batches (`statistics.seeds_needed`).
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pdeinf.analysis import registry
from pdeinf.analysis.registry import FindingRule
from pdeinf.analysis.statistics import (
    MAX_FAILED_SHARE,
    POWER,
    as_seed_batch,
    fisher_z,
    holm,
    seed_interval,
    seeds_needed,
    summarize_seeds,
    t_test_p,
    tost_p,
)
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
#: Labels that settle the direction (a decisive verdict).
DECISIVE = (REPRODUCED, SMALLER, LARGER, SIZE_UNDECIDED, DIRECTION_ONLY, CONTRADICTED)


def paper_number(rule: FindingRule, key: str | None) -> float | None:
    """The rule's paper number for `key` ("PDE-model", "PDE", "model", "PDE-model dt=k")."""
    if key is None or key not in rule.paper_values:
        return None
    return float(rule.paper_values[key])


#: Scales the per-seed values are analysed on: "linear", or "fisher-z" for correlations
#: (the t-interval of atanh(r), reported back on the r scale).
SCALES = ("linear", "fisher-z")


def _forward(values: np.ndarray, scale: str) -> np.ndarray:
    return values if scale == "linear" else fisher_z(values)


def _backward(values, scale: str):
    return values if scale == "linear" else np.tanh(values)


def _size_band(rule: FindingRule, paper: float) -> tuple[float, float]:
    """The declared band on the scale of the statistic itself."""
    lo, hi = rule.size_band
    bounds = (lo * paper, hi * paper) if rule.size_kind == "ratio" else (paper + lo, paper + hi)
    return min(bounds), max(bounds)


def _relative(value: float, paper: float, kind: str) -> float:
    return value / paper if kind == "ratio" else value - paper


def size_part(rule: FindingRule, paper: float | None, work: np.ndarray, interval,
              scale: str = "linear") -> dict | None:
    """Ours against the paper's number: {"kind", "value", "low", "high", "band", "tost_p",
    "result"}; None where the rule declares no size or the paper gives no number.

    work: the per-unit values on the analysis scale; interval: (estimate, low, high) on the
    statistic's scale. The equivalence test runs on the analysis scale with the band mapped
    there (so a correlation's band is tested on Fisher's z)."""
    if paper is None or rule.size_kind is None:
        return None
    if rule.size_kind == "ratio" and paper == 0.0:
        raise InputError(f"{rule.name}: a ratio size part needs a non-zero paper number")
    band = _size_band(rule, paper)
    p = tost_p(work, *(float(_forward(np.array(v), scale)) for v in band))
    value, low, high = interval
    # below the band is toward the null for a finding on the upper side, away from it otherwise
    below, above = ("smaller", "larger") if rule.paper_sign > 0 else ("larger", "smaller")
    if not math.isfinite(p):
        result = "undetermined"
    elif p < ALPHA:
        result = "within band"
    elif high < band[0]:
        result = below
    elif low > band[1]:
        result = above
    else:
        result = "undetermined"
    ends = sorted(_relative(v, paper, rule.size_kind) for v in (low, high))
    return {"kind": rule.size_kind, "value": _relative(value, paper, rule.size_kind),
            "low": ends[0], "high": ends[1], "band": list(rule.size_band), "tost_p": p,
            "result": result}


def _direction(rule: FindingRule, estimate: float, p_adjusted: float) -> str:
    if not (math.isfinite(p_adjusted) and math.isfinite(estimate)) or p_adjusted >= ALPHA:
        return "undecided"
    return "paper side" if (estimate - rule.null) * rule.paper_sign > 0 else "other side"


def label(direction: str, size: dict | None, estimable: bool,
          words: tuple[str, str] | None = None) -> str:
    """The two-part verdict word of a direction and a size part (module docstring); `words`
    replace the paper-side / other-side labels of rules that declare them."""
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
    """The record of finding `name` from its per-seed data.

    values: `[seeds, batches]` (or `[seeds]`) of the rule's statistic, one value per unit of
    replication (NaN for a failed unit), or a DataArray of dims (seed[, batch]); the finding's estimate is the mean of the seed means
    (with `scale="fisher-z"`, of correlations: tanh of the mean of atanh). key: which paper
    number of the rule applies (see `paper_number`). extra: labels kept in the record (dt,
    recipe, cls, note, seeds: the seed labels).

    The verdict here uses the unadjusted p-value; `adjust_records` recomputes it with Holm's
    adjustment over a table. Fields: finding, layer, pde, model, estimate, low, high, interval,
    per_seed, n_seeds, n_batches, n_failed, null, p, p_adjusted, direction, paper, size,
    verdict, rule, estimable, needed ({"n_seeds", "n_batches", "power", "variance_bound"}).
    """
    if scale not in SCALES:
        raise InputError(f"scale: expected one of {SCALES}, got {scale!r}")
    rule = registry.rule(name)
    raw = as_seed_batch(_seed_batch_order(values), f"{name} values")
    summary = summarize_seeds(raw)
    if scale == "fisher-z" and np.any(np.abs(raw[np.isfinite(raw)]) > 1.0):
        raise InputError(f"{name} values: a correlation lies outside [-1, 1]")
    work = _forward(raw, scale)
    null = float(_forward(np.array(rule.null), scale))
    interval = tuple(float(_backward(v, scale)) for v in seed_interval(work, LEVEL))
    estimate, low, high = interval
    estimable = math.isfinite(low) and math.isfinite(high)
    paper = paper_number(rule, key)
    size = size_part(rule, paper, work, interval, scale) if estimable else None
    n_seeds, n_batches = summary.design
    work_estimate = float(_forward(np.array(estimate), scale))
    needed = seeds_needed(work, work_estimate - null, level=LEVEL) if estimable else None
    record = {
        "finding": name, "layer": rule.layer, "pde": pde, "model": model,
        "estimate": estimate, "low": low, "high": high,
        "interval": INTERVAL_METHOD + (" of Fisher's z, back-transformed"
                                       if scale == "fisher-z" else ""),
        "per_seed": [float(v) for v in summary.seed_means],
        "n_seeds": int(n_seeds), "n_batches": int(n_batches), "n_failed": summary.n_failed,
        "null": float(rule.null), "p": t_test_p(work, null), "paper": paper, "size": size,
        "rule": rule.text(), "estimable": estimable,
        "needed": {"n_seeds": needed, "n_batches": int(n_batches), "power": POWER,
                   "variance_bound": "upper 80% confidence bound of the seed spread"},
        **extra,
    }
    record["p_adjusted"] = record["p"]
    if summary.failed_share > MAX_FAILED_SHARE:
        record["note"] = (f"{summary.n_failed} of {summary.n_units} units failed "
                          f"(> {MAX_FAILED_SHARE:.1%}): not estimable")
    return _decide(record, rule, estimable)


def _seed_batch_order(values):
    """The values of a DataArray of dims (seed[, batch]) in that order; other input as is."""
    if not isinstance(values, xr.DataArray):
        return values
    order = [d for d in ("seed", "batch") if d in values.dims]
    if set(values.dims) - set(order):
        raise InputError(f"values: expected dims (seed[, batch]), got {values.dims}")
    return values.transpose(*order).values


def evaluate_units(name: str, units: xr.DataArray, **kwargs) -> dict:
    """`evaluate_finding` of per-unit values (dims seed[, batch]) with their seed labels
    (`seeds`: ints where the labels are integers)."""
    seeds = [int(s) if np.issubdtype(type(s), np.integer) else str(s)
             for s in units["seed"].values.tolist()]
    return evaluate_finding(name, units, seeds=seeds, **kwargs)


def _decide(record: dict, rule: FindingRule, estimable: bool) -> dict:
    estimate = record.get("estimate")
    p_adjusted = record.get("p_adjusted")
    record["direction"] = _direction(rule, math.nan if estimate is None else estimate,
                                     math.nan if p_adjusted is None else p_adjusted)
    record["verdict"] = label(record["direction"], record.get("size"), estimable,
                              rule.direction_words)
    return record


def adjust_records(records: list[dict]) -> list[dict]:
    """Holm-adjust the direction p-values within each layer and recompute every verdict.

    records: `evaluate_finding` records (those without a `p` are returned unchanged). Returns
    new dicts in the same order."""
    out = [dict(r) for r in records]
    layers = {r["layer"] for r in out if "p" in r}
    for layer in layers:
        idx = [i for i, r in enumerate(out) if "p" in r and r["layer"] == layer]
        p = np.array([np.nan if out[i]["p"] is None else out[i]["p"] for i in idx], dtype=float)
        for i, q in zip(idx, holm(p)):
            out[i]["p_adjusted"] = float(q)
            _decide(out[i], registry.rule(out[i]["finding"]), bool(out[i]["estimable"]))
            out[i]["family_size"] = int(np.isfinite(p).sum())
    return out


def describe_record(rec: dict) -> str:
    """One line: finding, where, estimate [95% t-interval] over S x B, the two-part verdict,
    the paper's number and the size ratio, adjusted p, the seeds a decisive direction needs."""
    where = "-".join(str(v) for v in (rec.get("pde"), rec.get("model")) if v)
    extra = f" class {rec['cls']}" if rec.get("cls") else ""
    extra += f" dt={rec['dt']}" if rec.get("dt") is not None else ""
    interval = ("no interval" if rec["low"] is None or not math.isfinite(rec["low"])
                else f"95% CI {rec['low']:.3g} .. {rec['high']:.3g}")
    paper = ""
    if rec.get("paper") is not None:
        paper = f"; paper {rec['paper']:.3g}"
        size = rec.get("size")
        if size and size.get("value") is not None and math.isfinite(size["value"]):
            word = "ratio" if size["kind"] == "ratio" else "difference"
            paper += f" ({word} {size['value']:.2g}, band {size['band'][0]:g}..{size['band'][1]:g})"
    p_adj = rec.get("p_adjusted")
    p_text = "" if p_adj is None or not math.isfinite(p_adj) else f"; adjusted p {p_adj:.2g}"
    need = (rec.get("needed") or {}).get("n_seeds")
    need_text = f"; a decisive direction needs {need} x {rec['n_batches']}" if need else ""
    return (f"{rec['finding']} [{where}{extra}]: {rec['estimate']:.3g} ({interval}; "
            f"{rec['n_seeds']} seeds x {rec['n_batches']} batches) -> {rec['verdict'].upper()}"
            f"{paper}{p_text}{need_text}")


def finding_lines(findings) -> list[str]:
    """`describe_record` of every record, in order: `findings` is a list of records or
    {name: record or [records]}."""
    groups = findings.values() if isinstance(findings, dict) else [findings]
    return [describe_record(rec) for recs in groups
            for rec in (recs if isinstance(recs, list) else [recs])]
