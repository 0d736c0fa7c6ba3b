"""The regime ladder (ours): the seed paper's headline numbers along three axes from a small,
briefly trained model to the paper's regime, with both estimators on every rung.

Axes (each rung is a set of trained models, one per seed, measured on influence batch 0):

- `progress`: the checkpoints of one training run (optimizer steps);
- `width`: the model's width (ViT embedding width / UNet base channels) at equal data and
  optimizer steps, i.e. parameters per batch output P / M;
- `data`: training trajectories per class at equal optimizer steps (fewer trajectories are
  seen more often: a model that memorizes should show a stronger lag-0 ridge with less data).

Statistics per (rung, estimator, seed) from the row-standardized matrix of the SMSE bra
(docs/method.md section 8): `ridge` (intra-class mean at dt = 0 over that at |dt| = 1, pooled
over classes: the seed paper's lag-0 ridge), `decay` (intra-class mean at |dt| = 1 minus at
|dt| = 8), `class_locked` (class-matrix diagonal minus off-diagonal mean), and, estimator-free,
`log10_ntk` (log10 of the top NTK eigenvalue). Intervals: 95% t-intervals over seeds
(`statistics.seed_interval`). Pure: tables in, tables and sentences out.
"""
from __future__ import annotations

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
    """One row per (axis, value, estimator, statistic): the mean over seeds with its t-interval
    (`seed_interval` of the [seeds, 1] values), the number of seeds and the rung's P/M, training
    trajectories per class and optimizer steps."""
    check_table(table)
    rows = []
    keys = ["axis", "value", "estimator"]
    for (axis, value, estimator), group in table.groupby(keys, sort=False):
        group = group.sort_values("seed")
        for stat in STATISTICS:
            values = group[stat].to_numpy(dtype=np.float64)[:, None]
            est, low, high = seed_interval(values, level=level)
            rows.append({"axis": axis, "value": value, "estimator": estimator, "statistic": stat,
                         "estimate": est, "low": low, "high": high, "n_seeds": len(group),
                         "per_seed": [float(v) for v in values[:, 0]],
                         "p_over_m": float(group["p_over_m"].iloc[0]),
                         "train_per_class": int(group["train_per_class"].iloc[0]),
                         "optimizer_steps": int(group["optimizer_steps"].iloc[0])})
    return pd.DataFrame(rows)


def paired_change(table: pd.DataFrame, axis: str, statistic: str = "ridge",
                  estimator: str = "full-space", level: float = 0.95) -> dict:
    """The change of `statistic` from the first to the last rung of `axis` (rungs ordered by
    value), paired by seed: `{"first", "last", "estimate", "low", "high", "n_seeds"}` with a
    t-interval over the per-seed differences (NaN bounds with fewer than 2 common seeds)."""
    check_table(table)
    part = table[(table["axis"] == axis) & (table["estimator"] == estimator)]
    if part.empty:
        raise InputError(f"axis: no rungs of {axis!r} with the {estimator} estimator")
    values = sorted(part["value"].unique())
    first, last = (part[part["value"] == v].set_index("seed")[statistic]
                   for v in (values[0], values[-1]))
    return {"first": float(values[0]), "last": float(values[-1]),
            **_paired_by_seed(last, first, level)}


def _paired_by_seed(a: pd.Series, b: pd.Series, level: float) -> dict:
    """`a - b` (Series indexed by seed) on the common seeds: {"estimate", "low", "high",
    "n_seeds"}, the t-interval over the per-seed differences (NaN without a common seed)."""
    common = sorted(set(a.index) & set(b.index))
    diff = (a.loc[common] - b.loc[common]).to_numpy(dtype=np.float64)[:, None]
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


def _direction(change: dict) -> str:
    if not (math.isfinite(change["low"]) and math.isfinite(change["high"])):
        return "cannot be told apart (too few seeds for an interval)"
    return {1: "rises", -1: "falls", 0: "shows no change its interval can resolve"}[
        interval_side(change["low"], change["high"])]


def axis_sentence(table: pd.DataFrame, axis: str, *, paper_ridge: float | None = None,
                  reference=None) -> str:
    """One sentence: how the lag-0 ridge (seed paper's estimator) moves along `axis`, with the
    paired change and its interval, and what the estimator does on the `reference` rung (the
    profile's own regime; default the axis's last rung)."""
    change = paired_change(table, axis)
    summary = summarize(table[(table["axis"] == axis)])
    ridge = summary[(summary["statistic"] == "ridge") & (summary["estimator"] == "full-space")]
    ridge = ridge.sort_values("value")
    ends = f"{ridge['estimate'].iloc[0]:.3g} at {_value_words(axis, change['first'])} to " \
           f"{ridge['estimate'].iloc[-1]:.3g} at {_value_words(axis, change['last'])}"
    text = (f"Along {AXIS_WORDS[axis]}, the lag-0 ridge (full-space) {_direction(change)}: "
            f"{ends} (paired change {change['estimate']:+.3g}, 95% CI "
            f"[{change['low']:+.3g}, {change['high']:+.3g}], {change['n_seeds']} seeds)")
    ref = change["last"] if reference is None else reference
    try:
        est = estimator_change(table, axis, ref)
        text += (f"; at {_value_words(axis, ref)} the full-space estimator gives "
                 f"{est['estimate']:+.3g} [{est['low']:+.3g}, {est['high']:+.3g}] against the "
                 "subspace one")
    except InputError:
        pass
    if paper_ridge is not None:
        text += f"; the paper reads {paper_ridge:.3g}"
    return text + "."


def _value_words(axis: str, value) -> str:
    if axis == "progress":
        return f"epoch {int(value)}"
    if axis == "width":
        return f"width {int(value)}"
    return f"{int(value)} trajector{'y' if int(value) == 1 else 'ies'} per class"
