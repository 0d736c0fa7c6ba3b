"""One visual style and the plot primitives every figure is made of.

Figures are `matplotlib.figure.Figure` objects (never pyplot state), so they work under any
backend. Primitives: `heatmap`, `band` (a lag curve with its band), `matrix` (a class matrix),
`bars` (markers with interval bars), `interval` (one row of an interval forest), `paper_line` /
`PAPER_KW` (the papers' readings), `legend_below` and `stamp` (regime / estimator lines above
everything, never over a title).
"""
from __future__ import annotations

import math
import textwrap
from contextlib import contextmanager

import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pdeinf.errors import InputError

RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": False, "figure.dpi": 110, "savefig.dpi": 150,
    "savefig.bbox": "tight", "image.cmap": "magma",
}
#: Colour-blind safe (Okabe-Ito) colours, in class order of `pdeinf.config.PDE_CLASSES`.
CLASS_COLORS = ("#0072B2", "#D55E00", "#009E73")
PAIR_COLORS = {"intra": "#0072B2", "inter": "#D55E00"}
PART_COLORS = {"diagonal": "#0072B2", "off-diagonal": "#D55E00"}
MODEL_COLORS = {"unet": "#0072B2", "vit": "#CC79A7"}
OURS_COLOR = "#000000"
PAPER_COLOR = "#E69F00"
#: The papers' readings as points: hollow orange markers.
PAPER_KW = {"color": PAPER_COLOR, "mfc": "none", "ms": 6, "mew": 1.2, "ls": "none"}
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


def new_figure(n_rows: int = 1, n_cols: int = 1, *, size=PANEL_SIZE, title: str | None = None,
               **subplot_kw):
    """A Figure with a 2-D array of axes, sized per panel; with `title`, a single panel titled
    so: `(fig, ax)`."""
    with style():
        fig = Figure(figsize=(size[0] * n_cols, size[1] * n_rows), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False, **subplot_kw)
    if title is not None:
        axes[0, 0].set_title(title)
        return fig, axes[0, 0]
    return fig, axes


def class_color(index: int) -> str:
    return CLASS_COLORS[index % len(CLASS_COLORS)]


def model_color(model, default: str = "grey") -> str:
    return MODEL_COLORS.get(str(model), default)


def model_label(model: str) -> str:
    return {"unet": "UNet", "vit": "ViT"}.get(model.lower(), model)


def integer_ticks(*axes, y: bool = False) -> None:
    """Integer-only major ticks along x (and y)."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if y:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def require_dims(obj, dims, name: str) -> None:
    """InputError unless `obj` is an xarray object holding every dim of `dims`."""
    if not isinstance(obj, (xr.DataArray, xr.Dataset)) or any(d not in obj.dims for d in dims):
        raise InputError(f"{name}: expected an xarray object with dims {tuple(dims)}")


def ci_parts(ci) -> tuple:
    """`(estimate, low, high)` of an interval array with a `ci` dim, as numpy values."""
    return tuple(np.asarray(ci.sel(ci=c).values, dtype=float) for c in ("estimate", "low", "high"))


def quartiles(q) -> tuple:
    """`(median, q1, q3)` of an array with a `quantile` dim (0.25, 0.5, 0.75), numpy values."""
    return tuple(np.asarray(q.sel(quantile=p).values, dtype=float) for p in (0.5, 0.25, 0.75))


def band(ax, x, mid, lo, hi, *, color, label=None, alpha: float = 0.2, **line):
    """The line `mid` over `x` on a shaded band `lo..hi` (no band edge); returns the line."""
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0)
    return ax.plot(x, mid, color=color, label=label, **line)[0]


def bars(ax, x, mid, lo, hi, **kwargs):
    """Markers at `mid` with asymmetric bars down to `lo` and up to `hi` (NaN-safe)."""
    mid, lo, hi = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (mid, lo, hi))
    return ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], **kwargs)


def interval(ax, pos, mid, low, high, *, horizontal: bool = False, lw: float = 1.6, **point):
    """One row of an interval forest at `pos`: the line `low..high` (only when both ends are
    finite) under the marker at `mid` (only when finite); `point`: the marker's plot keywords
    (marker, ms, color; the line takes the colour). `horizontal`: values along x, rows along y."""
    def xy(values):
        return (values, [pos] * len(values)) if horizontal else ([pos] * len(values), values)

    if math.isfinite(low) and math.isfinite(high):
        ax.plot(*xy([low, high]), color=point.get("color"), lw=lw)
    if math.isfinite(mid):
        ax.plot(*xy([mid]), ls="none", **point)


def zero_line(ax) -> None:
    ax.axhline(0.0, color="grey", lw=0.5)


def paper_line(ax, value, label=None, *, vertical: bool = False, lw: float = 1.0, **kwargs):
    """A published value as a dashed orange reference line."""
    return (ax.axvline if vertical else ax.axhline)(value, color=PAPER_COLOR, ls="--", lw=lw,
                                                    label=label, **kwargs)


def heatmap(ax, values, *, x=None, y=None, half: float = 0.5, label="", colorbar: bool = True,
            shrink: float = 0.85, **imshow):
    """`values` `[y, x]` as an image (origin lower, nearest), cells centred on `x`, `y` (each
    `half` wide on either side), with a colour bar named `label` unless not `colorbar`."""
    if x is not None:
        imshow["extent"] = (x[0] - half, x[-1] + half, y[0] - half, y[-1] + half)
    image = ax.imshow(values, **{"origin": "lower", "interpolation": "nearest", **imshow})
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=shrink, label=label)
    return image


def matrix(ax, values, *, text, dark, fontsize: float = 7, **imshow):
    """`values` `[rows, cols]` as an image with each cell annotated `text(i, j)`, in white
    where `dark(i, j)` (the dark end of the colour map), else black. Returns the image."""
    image = ax.imshow(values, **imshow)
    for i, j in np.ndindex(values.shape):
        ax.text(j, i, text(i, j), ha="center", va="center", fontsize=fontsize,
                color="white" if dark(i, j) else "black")
    return image


def shared_range(arrays) -> tuple[float, float] | tuple[None, None]:
    """(min, max) over the finite values of every array (one colour range for all panels of a
    figure); (None, None) when none is finite."""
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays] or [[]])
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else (None, None)


def legend_below(fig: Figure, axes, *, ncol: int = 3, **kwargs):
    """One legend for the whole figure, below (outside) every panel: one entry per label of
    all `axes`; None when no axes has a labelled artist."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return None
    kwargs = {"frameon": False, "fontsize": 7, **kwargs}
    return fig.legend(list(entries.values()), list(entries), loc="outside lower center",
                      ncol=min(ncol, len(entries)), **kwargs)


#: Average width of a character of the stamp's 6-point font, in points (wrapping estimate).
STAMP_CHAR_WIDTH_PT = 3.4


def stamp(fig: Figure, lines) -> Figure:
    """Write `lines` (regime, estimator) small and grey as the figure's suptitle, each wrapped to
    the figure's width: constrained layout keeps every panel and its title below it, so a stamp
    never covers a title nor widens the saved figure. A figure's own suptitle stays first."""
    title = fig._suptitle.get_text().strip() if fig._suptitle is not None else ""
    fontsize = 7 if title else 6
    width = max(30, int(fig.get_figwidth() * 72 / (STAMP_CHAR_WIDTH_PT * fontsize / 6)))
    wrapped = [part for line in lines for part in (textwrap.wrap(line, width) or [""])]
    heading = [part for line in title.splitlines() for part in textwrap.wrap(line, width)]
    fig.suptitle("\n".join(heading + wrapped), x=0.01, ha="left", fontsize=fontsize,
                 color="0.1" if title else "0.3")
    return fig
