"""The seed paper's figures (arXiv 2509.00024), one function each, with the paper's readings
(`pdeinf.analysis.paper_numbers`, all "≈") drawn beside ours; inputs from
`pdeinf.analysis.seed_paper`. The paper's fixed ranges (heatmaps 0..7, class matrices 0..2.5,
lag curves -0.25..7, interpolation -1..3) are extended, with a note, only when our values leave
them; a class matrix marks cells below 0 in blue, hatched. Times are 1-based as in the paper.
Titles name the figure: "[seed paper, fig. N]".
"""
from __future__ import annotations

import textwrap

import matplotlib
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pdeinf.analysis import paper_numbers as pn
from pdeinf.analysis import seed_paper as sp
from pdeinf.errors import InputError
from pdeinf.viz import style as st

SEQUENTIAL_CMAP = "Reds"  # closest matplotlib map to the paper's cmocean :amp
BRA_LABEL = {"C": "SMSE", "M": "mass", "E": "energy"}


def _tag(fig_no) -> str:
    return f"\n[seed paper, fig. {fig_no}]" if fig_no is not None else "\n[ours]"


def _name(bra: str) -> str:
    return f"H_{{{bra}C}}"


def _note(fig, text: str, width: int = 70) -> None:
    """A small caption under the figure (wrapped by hand: constrained layout keeps it in)."""
    if text:
        fig.supxlabel(textwrap.fill(text, width), fontsize=6.5, color="0.3", ha="center")


def _range_text(prefix: str, reading) -> str:
    """`"diagonal 1.5"` or `"diagonal 1.5-2"` for a paper reading (lo, hi)."""
    return f"{prefix} {reading[0]:g}" + (f"-{reading[1]:g}" if reading[1] != reading[0] else "")


def _title(what: str, bra: str, model: str, pde: str, fig_no) -> str:
    return f"${_name(bra)}$ {what} ({st.model_label(model)}, {pde}) {_tag(fig_no)}"


def _extended(values, lo: float, hi: float) -> tuple[float, float]:
    """The paper's range `lo..hi`, widened (5% margin) to hold the finite `values`."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return lo, hi
    return min(lo, float(values.min()) * 1.05), max(hi, float(values.max()) * 1.05)


def _reading(table, key, figure):
    """The paper's reading of `key` in `table` (or None) and the figure number to name."""
    paper = pn.lookup(table, key)
    return paper, figure if figure is not None else (paper or {}).get("figure")


def heatmap_figure(heat: xr.DataArray, *, pde: str, model: str, bra: str = "C",
                   figure=None) -> Figure:
    """Figs. 2, 6, 16-19, 24-25, 28-29: two-time influence, response time (y) vs perturbation
    time (x), colour range 0..7; the paper's diagonal / first off-diagonal readings in the note."""
    st.require_dims(heat, ("t_resp", "t_pert"), "heat")
    paper, fig_no = _reading(pn.HEATMAPS, (bra, pde, model), figure)
    values = heat.transpose("t_resp", "t_pert").values
    n_r, n_p = values.shape
    fig, ax = st.new_figure(size=(4.0, 3.9), title=_title("influence", bra, model, pde, fig_no))
    lo, hi = sp.HEATMAP_RANGE
    st.heatmap(ax, values, x=np.arange(1, n_p + 1), y=np.arange(1, n_r + 1), cmap=SEQUENTIAL_CMAP,
               vmin=lo, vmax=hi, label=f"standardized ${_name(bra)}$")
    ax.set(xlabel=f"perturbation time ({BRA_LABEL['C']})", ylabel=f"response time ({BRA_LABEL[bra]})")
    st.integer_ticks(ax, y=True)
    off = float(np.mean(np.r_[np.diag(values, 1), np.diag(values, -1)]))
    text = f"ours: diagonal {float(np.mean(np.diag(values))):.2f}, first off-diagonal {off:.2f}"
    if paper and paper.get("diagonal"):
        text += "; " + _range_text("paper ≈ diagonal", paper["diagonal"])
        if paper.get("off_diagonal_1"):
            text += ", " + _range_text("off-diagonal", paper["off_diagonal_1"])
    if paper and paper.get("note"):
        text += f" ({paper['note']})"
    if values.max() > hi or values.min() < lo:
        text += f"; colours saturate outside {lo:g}..{hi:g} (ours {values.min():.2g}..{values.max():.2g})"
    _note(fig, text)
    return fig


def lag_curve_figure(curve: xr.Dataset, *, pde: str, model: str, bra: str = "C",
                     figure=None) -> Figure:
    """Figs. 4, 7, 20-23, 26-27, 30-31: median over seeds (markers) with Q1..Q3 bars, intra-
    and inter-class; the paper's readings as hollow markers (bars: their reading range)."""
    st.require_dims(curve["quartiles"], ("quantile", "pair", "dt"), "curve['quartiles']")
    paper, fig_no = _reading(pn.LAG_CURVES, (bra, pde, model), figure)
    q = curve["quartiles"]
    dts = q["dt"].values
    fig, ax = st.new_figure(size=(4.0, 3.0), title=_title("extrapolation", bra, model, pde, fig_no))
    for pair, marker, shift in (("intra", "o", -0.1), ("inter", "D", 0.1)):
        med, q1, q3 = st.quartiles(q.sel(pair=pair))
        if np.isfinite(med).any():
            st.bars(ax, dts + shift, med, q1, q3, fmt=marker, ms=3.5, capsize=2, lw=1,
                    color=st.PAIR_COLORS[pair], label=f"{pair}-class (ours)")
    if paper:
        lags = sorted(paper["intra"])
        vals = np.array([paper["intra"][k] for k in lags])
        st.bars(ax, np.array(lags, float), vals.mean(axis=1), vals[:, 0], vals[:, 1], marker="o",
                capsize=0, label=f"intra, paper ≈ (fig. {paper['figure']})", **st.PAPER_KW)
        inter = paper["inter"]
        ax.axhspan(inter[0], max(inter[1], inter[0] + 0.02), color=st.PAPER_COLOR, alpha=0.25,
                   lw=0, label="inter, paper ≈")
    lo, hi = sp.LAG_RANGE
    bottom, top = _extended(q.values, lo, hi)
    st.zero_line(ax)
    ax.set(ylim=(bottom, top), xlabel="time difference Δ = τ - t",
           ylabel=f"influence ({BRA_LABEL[bra]})")
    st.integer_ticks(ax)
    ax.legend(frameon=False, fontsize=6.5)
    text = (f"markers: median over {curve.attrs.get('n_seeds', '?')} seeds of batch means "
            f"({curve.attrs.get('n_batches', '?')} batches each); bars: Q1..Q3 over seeds")
    if (top, bottom) != (hi, lo):
        text += f"; y-range extended from the paper's {lo:g}..{hi:g} to show our values"
    _note(fig, text)
    return fig


def class_matrix_figure(cm: xr.DataArray, *, pde: str, model: str, bra: str = "C",
                        figure=None) -> Figure:
    """Figs. 3, 12-15: time-averaged class transferability matrix (colour range 0..2.5),
    response class (y) vs input class (x), our values annotated with the paper's beside. The
    positive-only range is kept: a negative cell gets the under-colour (`style.NEGATIVE_COLOR`)
    and a hatch, the colour bar an extension below 0, the note the count of negative cells."""
    st.require_dims(cm, ("c_resp", "c_pert"), "cm")
    paper, fig_no = _reading(pn.CLASS_MATRICES, (bra, pde, model), figure)
    values = cm.transpose("c_resp", "c_pert").values
    classes_r, classes_p = ([str(c) for c in cm[d].values] for d in ("c_resp", "c_pert"))
    fig, ax = st.new_figure(size=(4.4, 3.8), title=_title("transferability", bra, model, pde, fig_no))
    lo, hi = sp.CLASS_RANGE
    negative = np.isfinite(values) & (values < lo)

    def text(i, j):
        cr, cp = classes_r[i], classes_p[j]
        if paper and i == j and i < len(paper["diagonal"]):
            sat = "≥" if cr in paper["saturated"] else "≈"
            return f"{values[i, j]:.2f}\n(paper {sat}{paper['diagonal'][i]:g})"
        if paper and i != j and (cr, cp) in paper["cells"]:
            return f"{values[i, j]:.2f}\n(paper ≈{paper['cells'][(cr, cp)]:g})"
        return f"{values[i, j]:.2f}"

    for i, j in zip(*np.nonzero(negative)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                               edgecolor="white", lw=0))
    cmap = matplotlib.colormaps[SEQUENTIAL_CMAP].with_extremes(under=st.NEGATIVE_COLOR)
    image = st.matrix(ax, values, text=text, dark=lambda i, j: negative[i, j] or values[i, j] > 0.6 * hi,
                      fontsize=6.5, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
    fig.colorbar(image, ax=ax, shrink=0.85, label=f"standardized ${_name(bra)}$",
                 extend="min" if negative.any() else "neither")
    ax.set_xticks(range(len(classes_p)), [c.split("-", 1)[-1] for c in classes_p])
    ax.set_yticks(range(len(classes_r)), [c.split("-", 1)[-1] for c in classes_r])
    ax.set(xlabel=f"input class ({BRA_LABEL['C']})", ylabel=f"response class ({BRA_LABEL[bra]})")
    notes = []
    if paper:
        off = paper["off_diagonal"]
        notes.append(f"paper ≈ off-diagonal {off[0]:g}-{off[1]:g} (fig. {paper['figure']}); "
                     f"entry = mean over all time pairs, then over (seed, batch)")
    if negative.any():
        notes.append(f"{int(negative.sum())} negative cell(s): blue, hatched (below the paper's "
                     f"{lo:g}..{hi:g})")
    _note(fig, "; ".join(notes))
    return fig


def similarity_figure(curves: dict, lengths: dict | None = None, *, pde: str,
                      figure=None) -> Figure:
    """Figs. 5, 32, 33: Ĥ against the scaled input distance (log x), median over seeds of the
    per-seed smoothing curves with Q1..Q3 bars, UNet and ViT overlaid; our zero crossings
    (dashed, with their t-interval over seeds shaded) and the paper's readings."""
    if not curves:
        raise InputError("curves: need at least one model's similarity_curves")
    paper, fig_no = _reading(pn.SIMILARITY, pde, figure)
    fig, ax = st.new_figure(size=(4.2, 3.1), title=f"$H_{{CC}}$ interpolation ({pde}) {_tag(fig_no)}")
    for k, (model, c) in enumerate(curves.items()):
        st.require_dims(c["quartiles"], ("quantile", "point"), f"curves[{model!r}]['quartiles']")
        color = st.model_color(model)
        st.bars(ax, c["d"].values * (1.0 + 0.02 * (k - 0.5)), *st.quartiles(c["quartiles"]),
                fmt="o" if model == "unet" else "s", ms=3, capsize=2, lw=1, color=color,
                label=f"{st.model_label(model)} (ours)")
        est, low, high = st.ci_parts(lengths[model]) if lengths and model in lengths else [np.nan] * 3
        if np.isfinite(est):
            ax.axvline(est, color=color, ls="--", lw=0.8)
            if np.isfinite(low) and np.isfinite(high):
                ax.axvspan(low, high, color=color, alpha=0.12, lw=0)
    if paper:
        d0, near = paper["near"]
        for model, v in near.items():
            ax.plot([d0], [v], marker="o" if model == "unet" else "s",
                    label=f"{st.model_label(model)}, paper ≈", **{**st.PAPER_KW, "ms": 7})
        lo_x, hi_x = paper["crossing"]
        if hi_x <= lo_x:  # a single reading: a short bar around it
            lo_x, hi_x = lo_x / 1.08, hi_x * 1.08
        ax.hlines(0.0, lo_x, hi_x, color=st.PAPER_COLOR, lw=6, alpha=0.7,
                  label="paper zero crossing ≈")
    st.zero_line(ax)
    ax.set(xscale="log", xlabel="input difference d (SMSE-scaled)", ylabel="influence (SMSE)",
           ylim=_extended(np.concatenate([c["quartiles"].values.ravel() for c in curves.values()]),
                          *sp.SIMILARITY_RANGE))
    ax.legend(frameon=False, fontsize=6.5)
    methods = sorted({str(m) for c in curves.values() for m in c["method"].values})
    _note(fig, "curves: " + "; ".join(methods) + ". Dashed: our zero crossing (shade: 95% "
               "t-interval over seeds).")
    return fig


def _box(median, iqr, whiskers, label) -> dict:
    """A `bxp` box from log10 readings: median, (q1, q3), (whisker low, high)."""
    return {"med": 10 ** median, "q1": 10 ** iqr[0], "q3": 10 ** iqr[1], "whislo": 10 ** whiskers[0],
            "whishi": 10 ** whiskers[1], "fliers": [], "label": label}


def ntk_box_figure(boxes: dict, *, pde: str, figure=None) -> Figure:
    """Figs. 8, 34, 35: box plot of λ_max(J Jᵀ + λ) per (seed, batch) (log y), median / IQR box,
    1.5 IQR whiskers, outliers hidden; the paper's box beside each model's (orange)."""
    if not boxes:
        raise InputError("boxes: need at least one model's ntk_box")
    fig, ax = st.new_figure(size=(3.6, 3.0), title="")
    stats, positions, colors, fig_no = [], [], [], figure
    for k, (model, box) in enumerate(boxes.items()):
        stats.append(_box(box["median"], (box["q1"], box["q3"]), (box["whislo"], box["whishi"]),
                          f"{st.model_label(model)}\n(ours, n={box['n']})"))
        positions.append(2 * k)
        colors.append(st.model_color(model))
        paper = pn.lookup(pn.NTK_TOP_EIGENVALUE, (pde, model))
        if paper:
            fig_no = fig_no if fig_no is not None else paper["figure"]
            stats.append(_box(paper["median"], paper["iqr"], paper["whiskers"] or paper["iqr"],
                              f"{st.model_label(model)}\n(paper ≈)"))
            positions.append(2 * k + 0.8)
            colors.append(st.PAPER_COLOR)
    art = ax.bxp(stats, positions=positions, showfliers=False, patch_artist=True, widths=0.6)
    for patch, color in zip(art["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.55)
    for med in art["medians"]:
        med.set_color("black")
    ax.set(yscale="log", ylabel=r"largest eigenvalue of $JJ^T + \lambda$",
           title=f"NTK top eigenvalue ({pde}) {_tag(fig_no)}")
    ax.tick_params(axis="x", labelsize=6.5)
    return fig


def validation_figure(quartiles: dict, *, pde: str, figure=None) -> Figure:
    """Figs. 9-11: validation SMSE vs epoch (log y), median over seeds with the Q1..Q3 band,
    per model; the paper's epoch-1 readings as hollow markers, its final readings (epoch 150 /
    100, beyond our epochs) as dotted horizontal lines."""
    if not quartiles:
        raise InputError("quartiles: need at least one model's validation_quartiles")
    fig, ax = st.new_figure(size=(4.0, 3.0), title="")
    fig_no = figure
    for model, q in quartiles.items():
        if not isinstance(q, pd.DataFrame) or not {"epoch", "median", "q25", "q75"} <= set(q):
            raise InputError(f"quartiles[{model!r}]: expected validation_quartiles' DataFrame")
        color, name = st.model_color(model), st.model_label(model)
        st.band(ax, q["epoch"], q["median"], q["q25"], q["q75"], color=color, alpha=0.25,
                marker="o", ms=3, label=f"{name} (ours, {int(q['n_seeds'].iloc[0])} seeds)")
        paper = pn.lookup(pn.VALIDATION, (pde, model))
        if paper:
            fig_no = fig_no if fig_no is not None else paper["figure"]
            ax.plot([1], [10 ** paper["first"]], marker="o" if model == "unet" else "s",
                    color=color, mfc="none", ls="none", label=f"{name}, paper ≈ epoch 1")
            ax.axhline(10 ** paper["last"], color=color, ls=":", lw=0.9,
                       label=f"{name}, paper ≈ epoch {paper['last_epoch']}")
    ax.set(yscale="log", xlabel="epoch", ylabel="validation error (SMSE)",
           title=f"validation SMSE ({pde}) {_tag(fig_no)}")
    ax.legend(frameon=False, fontsize=6.5)
    return fig


def stamp_regime(fig: Figure, cards) -> Figure:
    """Stamp the regime of each (PDE, model) the figure shows (`RegimeCard.stamp`) with
    `style.stamp`; a figure not made with the seed paper's full-space estimator says so."""
    cards = list(cards)
    if not cards:
        raise InputError("cards: no regime card to stamp")
    lines = [f"regime {c.pde}-{c.model}: {c.stamp()}" for c in cards]
    if any(c.estimator != "full-space" for c in cards):
        lines.append("not the seed paper's full-space estimator: the follow-up's exact subspace one")
    return st.stamp(fig, lines)
