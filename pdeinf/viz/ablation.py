"""Figures of notebook 14: the findings forest plot and the model-departure ablation [ours]."""
from __future__ import annotations

import math

import numpy as np

from pdeinf.errors import InputError
from pdeinf.viz.style import PAPER_KW, ci_parts, interval, new_figure

VERDICT_COLORS = {"reproduced": "#009E73", "same direction, smaller": "#56B4E9",
                  "same direction, larger": "#0072B2", "same direction, size inconclusive": "#CC79A7",
                  "direction only: same direction": "#E69F00", "contradicted": "#D55E00",
                  "inconclusive": "#7F7F7F", "not estimable": "#BBBBBB"}
CONFIG_COLORS = ("#0072B2", "#CC79A7", "#E69F00", "#56B4E9")


def _number(x) -> float:
    """A finding's number as a float; NaN for a missing one (None)."""
    return float(x) if isinstance(x, (int, float)) else math.nan


def _row_label(row: dict) -> str:
    extra = f" class {row['cls']}" if row.get("cls") else ""
    extra += f" dt={row['dt']}" if row.get("dt") is not None else ""
    extra += f" {row['recipe']}" if row.get("recipe") else ""
    return f"{row['finding']}{extra} — {row['pde']}/{row['model']}"


def findings_forest(findings: dict, *, title: str | None = None):
    """Forest plot of every finding row (`pipeline.findings.collect_findings`): our estimate
    with its 95% interval, coloured by verdict; the rule's null as a grey tick; the paper's
    number as an orange diamond where it gives one. One x axis (each statistic's own units)."""
    rows = findings.get("findings") if isinstance(findings, dict) else None
    if rows is None:
        raise InputError("findings: expected the dict of collect_findings (with 'findings')")
    n = max(len(rows), 1)
    fig, ax = new_figure(size=(7.5, 0.9 + 0.24 * n), title="")
    for i, r in enumerate(rows):
        y = n - 1 - i
        interval(ax, y, *(_number(r[k]) for k in ("estimate", "low", "high")), horizontal=True,
                 marker="o", ms=4, color=VERDICT_COLORS.get(r["verdict"], "#000000"))  # ours: black
        ax.plot(r.get("null", 0.0), y, "|", color="#555555", ms=9)
        if math.isfinite(_number(r.get("paper_value"))):
            ax.plot(r["paper_value"], y, "D", **{**PAPER_KW, "ms": 4, "mew": 1.0})
    ax.axvline(0.0, color="#999999", lw=0.6, ls="--")
    ax.set_yticks(range(n))
    ax.set_yticklabels([_row_label(r) for r in reversed(rows)] if rows else [""], fontsize=6)
    ax.set(ylim=(-0.7, n - 0.3), xlabel="statistic of the finding's rule (its own units; null = grey tick)")
    handles = [ax.plot([], [], "o-", color=c, label=v)[0] for v, c in VERDICT_COLORS.items()]
    handles.append(ax.plot([], [], "D", **{**PAPER_KW, "mew": 1.0}, label="paper's number")[0])
    handles.append(ax.plot([], [], "|", color="#555555", ms=9, label="null of the rule")[0])
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6,
              frameon=False)
    if not rows:
        ax.text(0.5, 0.5, "no findings recorded yet", transform=ax.transAxes, ha="center")
    ax.set_title(title or f"[ours] Every finding: our estimate and 95% interval, coloured by "
                 f"verdict (profile {findings.get('profile')})\npaper's numbers: seed paper "
                 f"and follow-up readings (docs/method.md)", fontsize=8)
    return fig


def ablation_figure(tables: dict, *, title: str | None = None):
    """One panel per finding: per (PDE-model, configuration) the change from the baseline with
    its paired 95% t-interval over seeds, and the baseline's seed spread as a grey band (+-1 std
    about 0). tables: {(pde, model): `analysis.ablation.ablation_table`}."""
    if not tables:
        raise InputError("tables: no ablation table to draw")
    first = next(iter(tables.values()))
    finds = [str(f) for f in first["finding"].values]
    cols = min(len(finds), 3)
    rows = math.ceil(len(finds) / cols)
    fig, axes = new_figure(rows, cols, size=(3.0, 2.4))
    for k, f in enumerate(finds):
        ax = axes[k // cols, k % cols]
        labels, x = [], 0
        for (pde, model), table in tables.items():
            base = table.attrs.get("baseline", str(table["config"].values[0]))
            std = float(table["seed_std"].sel(finding=f, config=base))
            configs = [str(c) for c in table["config"].values if c != base]
            start = x
            for j, c in enumerate(configs):
                marker = "s" if bool(table["exceeds_noise"].sel(finding=f, config=c)) else "o"
                interval(ax, x, *(float(v) for v in ci_parts(table["change"].sel(finding=f, config=c))),
                         marker=marker, ms=5, color=CONFIG_COLORS[j % len(CONFIG_COLORS)])
                labels.append(f"{c}\n{pde}/{model}")
                x += 1
            if math.isfinite(std):
                ax.fill_between([start - 0.4, x - 0.6], -std, std, color="#cccccc", alpha=0.6,
                                lw=0)
        ax.axhline(0.0, color="#555555", lw=0.7, ls="--")
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, fontsize=6)
        ax.set_xlim(-0.6, max(len(labels) - 0.4, 0.6))
        ax.set_title(f, fontsize=8)
        ax.set_ylabel("change from baseline")
    for k in range(len(finds), rows * cols):
        axes[k // cols, k % cols].set_visible(False)
    n_seeds, n_batches = first.attrs.get("n_seeds"), first.attrs.get("n_batches")
    fig.suptitle(title or (f"[ours] Model-departure ablation: change of each finding (95% paired "
                           f"interval; grey: baseline seed std; square: exceeds noise; "
                           f"{n_seeds} seeds x {n_batches} batches)"), fontsize=8)
    return fig
