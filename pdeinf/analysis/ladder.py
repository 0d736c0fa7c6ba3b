"""The regime ladder (ours): the seed paper's headline statistics (`STATISTICS`, docs/method.md
section 8) along `AXES` (training progress, model width, training data), both estimators on every
rung. A ladder table has one row per (rung, estimator, seed) (`COLUMNS`); intervals are 95%
t-intervals over seeds. Pure.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd

from pdeinf.analysis.statistics import interval_side, seed_interval
from pdeinf.errors import InputError

AXES: tuple[str, ...] = ("progress", "width", "data")
STATISTICS: tuple[str, ...] = ("ridge", "decay", "class_locked", "log10_ntk")
ESTIMATORS: tuple[str, ...] = ("full-space", "subspace")
#: The columns of a ladder table (one row per rung, estimator and seed).
COLUMNS: tuple[str, ...] = ("axis", "value", "estimator", "seed", "p_over_m", "train_per_class",
                            "optimizer_steps", "val_smse", *STATISTICS)
AXIS_WORDS = {"progress": "training progress (optimizer steps)",
              "width": "capacity (P/M at equal data and steps)",
              "data": "training trajectories per class (at equal steps)"}


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    """`table` if it holds the ladder columns and known axes / estimators, else InputError."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"table: missing column(s) {missing}")
    unknown = set(table["axis"]) - set(AXES) | set(table["estimator"]) - set(ESTIMATORS)
    if unknown:
        raise InputError(f"table: unknown axis or estimator {sorted(map(str, unknown))}")
    return table


def summarize(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (axis, value, estimator, statistic): mean over seeds with its t-interval, n_seeds, per_seed
    and the rung's p_over_m, train_per_class, optimizer_steps."""
    check_table(table)
    rows = []
    for (axis, value, estimator), group in table.groupby(["axis", "value", "estimator"], sort=False):
        group = group.sort_values("seed")
        first = group.iloc[0]
        for stat in STATISTICS:
            values = group[stat].to_numpy(dtype=np.float64)
            est, low, high = seed_interval(values, level=level)
            rows.append({"axis": axis, "value": value, "estimator": estimator, "statistic": stat,
                         "estimate": est, "low": low, "high": high, "n_seeds": len(group),
                         "per_seed": [float(v) for v in values], "p_over_m": float(first["p_over_m"]),
                         "train_per_class": int(first["train_per_class"]),
                         "optimizer_steps": int(first["optimizer_steps"])})
    return pd.DataFrame(rows)


def paired_change(table: pd.DataFrame, axis: str, statistic: str = "ridge", estimator: str = "full-space",
                  level: float = 0.95) -> dict:
    """First-to-last-rung change of `statistic` along `axis`, paired by seed, with its t-interval."""
    check_table(table)
    part = table[(table["axis"] == axis) & (table["estimator"] == estimator)]
    if part.empty:
        raise InputError(f"axis: no rungs of {axis!r} with the {estimator} estimator")
    values = sorted(part["value"].unique())
    first, last = (part[part["value"] == v].set_index("seed")[statistic] for v in (values[0], values[-1]))
    return {"first": float(values[0]), "last": float(values[-1]), **_paired_by_seed(last, first, level)}


def _paired_by_seed(a: pd.Series, b: pd.Series, level: float) -> dict:
    """`a - b` (Series by seed) on the common seeds with its t-interval (NaN without one)."""
    common = sorted(set(a.index) & set(b.index))
    diff = (a.loc[common] - b.loc[common]).to_numpy(dtype=np.float64)
    est, low, high = seed_interval(diff, level=level) if common else (math.nan,) * 3
    return {"estimate": est, "low": low, "high": high, "n_seeds": len(common)}


def estimator_change(table: pd.DataFrame, axis: str, value, statistic: str = "ridge",
                     level: float = 0.95) -> dict:
    """Full-space minus subspace `statistic` on one rung, paired by seed (t-interval)."""
    check_table(table)
    part = table[(table["axis"] == axis) & (table["value"] == value)]
    full, sub = (part[part["estimator"] == e].set_index("seed")[statistic] for e in ESTIMATORS)
    out = _paired_by_seed(full, sub, level)
    if not out["n_seeds"]:
        raise InputError(f"rung {axis}={value}: no seed with both estimators")
    return out


def axis_sentence(table: pd.DataFrame, axis: str, *, paper_ridge: float | None = None, reference=None) -> str:
    """One sentence: the lag-0 ridge along `axis` and the estimators on the `reference` rung."""
    change = paired_change(table, axis)
    summary = summarize(table[(table["axis"] == axis)])
    ridge = summary[(summary["statistic"] == "ridge")
                    & (summary["estimator"] == "full-space")].sort_values("value")
    finite = math.isfinite(change["low"]) and math.isfinite(change["high"])
    direction = {1: "rises", -1: "falls", 0: "shows no change its interval can resolve",
                 None: "cannot be told apart (too few seeds for an interval)"}[
        interval_side(change["low"], change["high"]) if finite else None]
    text = (f"Along {AXIS_WORDS[axis]}, the lag-0 ridge (full-space) {direction}: "
            f"{ridge['estimate'].iloc[0]:.3g} at {_value_words(axis, change['first'])} to "
            f"{ridge['estimate'].iloc[-1]:.3g} at {_value_words(axis, change['last'])} (paired change "
            f"{change['estimate']:+.3g}, 95% CI "
            f"[{change['low']:+.3g}, {change['high']:+.3g}], {change['n_seeds']} seeds)")
    ref = change["last"] if reference is None else reference
    with contextlib.suppress(InputError):  # no seed with both estimators on that rung
        est = estimator_change(table, axis, ref)
        text += (f"; at {_value_words(axis, ref)} the full-space estimator gives "
                 f"{est['estimate']:+.3g} [{est['low']:+.3g}, {est['high']:+.3g}] against the "
                 "subspace one")
    if paper_ridge is not None:
        text += f"; the paper reads {paper_ridge:.3g}"
    return text + "."


def _value_words(axis: str, value) -> str:
    if axis in ("progress", "width"):
        return f"{'epoch' if axis == 'progress' else 'width'} {int(value)}"
    return f"{int(value)} trajector{'y' if int(value) == 1 else 'ies'} per class"
