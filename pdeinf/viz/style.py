"""One visual style for every figure: sizes, fonts, colours per class / pair / variant.

Figures are built on `matplotlib.figure.Figure` directly (never pyplot state), so they work
under any backend, headless included, and are not kept alive by a global figure manager.
"""
from __future__ import annotations

from contextlib import contextmanager

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "image.cmap": "magma",
}
#: Colour-blind safe (Okabe-Ito) colours, in class order of `pdeinf.config.PDE_CLASSES`.
CLASS_COLORS = ("#0072B2", "#D55E00", "#009E73")
PAIR_COLORS = {"intra": "#0072B2", "inter": "#D55E00"}
PART_COLORS = {"diagonal": "#0072B2", "off-diagonal": "#D55E00"}
MODEL_COLORS = {"unet": "#0072B2", "vit": "#CC79A7"}
OURS_COLOR = "#000000"
PAPER_COLOR = "#E69F00"
HEATMAP_CMAP = "magma"
DIVERGING_CMAP = "RdBu_r"
#: Cells below a positive-only colour range (a sequential map's under-colour): blue, apart from
#: every shade of the red sequential maps.
NEGATIVE_COLOR = "#2166AC"
PANEL_SIZE = (3.2, 2.7)  # inches per panel


@contextmanager
def style():
    """Apply the house rcParams for the duration of a figure's construction."""
    with mpl.rc_context(RC):
        yield


def new_figure(n_rows: int = 1, n_cols: int = 1, *, size=PANEL_SIZE, squeeze: bool = False,
               **subplot_kw):
    """A Figure with a grid of axes (2-D array unless squeeze), sized per panel."""
    with style():
        fig = Figure(figsize=(size[0] * n_cols, size[1] * n_rows), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=squeeze, **subplot_kw)
    return fig, axes


def class_color(index: int) -> str:
    return CLASS_COLORS[index % len(CLASS_COLORS)]


def model_label(model: str) -> str:
    return {"unet": "UNet", "vit": "ViT"}.get(model.lower(), model)


def shared_range(arrays) -> tuple[float, float] | tuple[None, None]:
    """(min, max) over the finite values of every array (one colour range for all panels of a
    figure); (None, None) when none is finite."""
    values = [np.asarray(a, dtype=float).ravel() for a in arrays]
    values = np.concatenate(values) if values else np.empty(0)
    values = values[np.isfinite(values)]
    if not values.size:
        return None, None
    return float(values.min()), float(values.max())


def legend_below(fig: Figure, axes, *, ncol: int = 3, **kwargs):
    """One legend for the whole figure, below the panels and outside every axes (constrained
    layout makes room for it), so it never covers data. Entries of all `axes`, one per label
    (the first handle of each); None when no axes has a labelled artist."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return None
    kwargs = {"frameon": False, "fontsize": 7, **kwargs}
    return fig.legend(list(entries.values()), list(entries), loc="outside lower center",
                      ncol=min(ncol, len(entries)), **kwargs)
