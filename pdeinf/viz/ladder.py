"""The regime ladder figure (ours; `pdeinf.analysis.ladder`)."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from pdeinf.analysis.ladder import AXES, AXIS_WORDS, STATISTICS
from pdeinf.errors import InputError
from pdeinf.viz.style import bars, legend_below, new_figure, paper_line

ESTIMATOR_STYLE = {"full-space": {"color": "#000000", "marker": "o"},
                   "subspace": {"color": "#0072B2", "marker": "s"}}
STATISTIC_LABELS = {"ridge": "lag-0 ridge (dt 0 / |dt| 1)",
                    "decay": "decay (|dt| 1 minus |dt| 8)",
                    "class_locked": "class locking (diag - off)",
                    "log10_ntk": "log10 top NTK eigenvalue"}
AXIS_LABELS = {"progress": "checkpoint epoch", "width": "P / M",
               "data": "training trajectories per class"}


def ladder_figure(summary: pd.DataFrame, *, own: dict | None = None,
                  paper_ridge: float | None = None, title: str = "") -> Figure:
    """Rows = statistics, columns = axes. Each panel: the mean over seeds per rung and estimator
    with its 95% t-interval (bars), the paper's ridge (dashed), the profile's own rung (grey
    line). The width axis is drawn against P / M; capacity and data on log scales."""
    missing = {"axis", "value", "estimator", "statistic", "estimate", "low", "high",
               "p_over_m"} - set(summary.columns)
    if missing:
        raise InputError(f"summary: missing column(s) {sorted(missing)}")
    fig, axes = new_figure(len(STATISTICS), len(AXES), size=(3.0, 2.1))
    for j, axis in enumerate(AXES):
        for i, stat in enumerate(STATISTICS):
            ax = axes[i, j]
            part = summary[(summary.axis == axis) & (summary.statistic == stat)]
            for k, (estimator, style) in enumerate(ESTIMATOR_STYLE.items()):
                rows = part[part.estimator == estimator].sort_values("value")
                if rows.empty or (stat == "log10_ntk" and k):  # the NTK does not depend on it
                    continue
                x = rows["p_over_m"] if axis == "width" else rows["value"]
                bars(ax, x, rows["estimate"], rows["low"], rows["high"], capsize=2, lw=1, ms=3,
                     label=estimator if stat != "log10_ntk" else "either estimator", **style)
            if own and axis in own:
                x_own = part[(part.value == own[axis])]["p_over_m"].iloc[0] \
                    if axis == "width" and not part.empty else own[axis]
                ax.axvline(x_own, color="0.7", lw=0.8, zorder=0)
            if stat == "ridge" and paper_ridge is not None:
                paper_line(ax, paper_ridge, "paper")
            _rung_ticks(ax, part["p_over_m"] if axis == "width" else part["value"],
                        log=axis != "progress")
            if i == len(STATISTICS) - 1:
                ax.set_xlabel(AXIS_LABELS[axis])
            if j == 0:
                ax.set_ylabel(STATISTIC_LABELS[stat])
            if i == 0:
                ax.set_title(AXIS_WORDS[axis], fontsize=8)
    legend_below(fig, axes.ravel(), ncol=4)
    if title:
        fig.suptitle(title)
    return fig


def _rung_ticks(ax, values, *, log: bool) -> None:
    """Ticks at the rungs' x values only, written plainly (no 2 x 10^0 minor labels)."""
    ticks = sorted({float(v) for v in values})
    if log:
        ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
