"""Figures of the symmetry study (follow-up section 7 + Lie derivative), one function each.

Inputs: the study Datasets (`pdeinf.symmetry.study`, leading `seed` dim) keyed by (pde, model).
Equivariance errors are the ratio SMSE(f(g.x), g.y) / SMSE(f(x), y); orbit influence is the
standardized diagonal H_g[n, n]; Lie norms per grid cell (x, y) or per radian (rotation). The
follow-up's published ranges (docs/method.md section 7) are drawn as named references.
"""
from __future__ import annotations

import numpy as np

from pdeinf.errors import InputError
from pdeinf.symmetry import summary as sm
from pdeinf.viz import style as st

__all__ = ["axis_check_figure", "d4_equivariance_figure", "d4_orbit_figure", "lie_epochs_figure",
           "lie_layers_figure", "shift_figure", "shift_landscape_figure", "symmetry_panel_figure",
           "translation_landscape_figure"]

#: The follow-up's ranges (docs/method.md section 7): NS D4 errors up to ~1e4, CE within ~25%,
#: translations within a few percent (5% is ours).
PAPER_RANGES = {"NS": 1e4, "CE": 1.25, "shift": 1.05}


def _pdes(studies: dict) -> list[str]:
    if not isinstance(studies, dict) or not studies:
        raise InputError("studies: expected a non-empty dict {(pde, model): study Dataset}")
    return list(dict.fromkeys(p for p, _ in studies))


def _label(key) -> str:
    return f"{key[0]} {st.model_label(key[1])}"


def _per_pde(studies: dict, points, *, xlabel: str, ylabel: str, title: str):
    """One panel per PDE, per model medians with quartile bars at each group element:
    `points(ds) -> (labels, (median, q1, q3))`; `title` formatted with the PDE."""
    pdes = _pdes(studies)
    fig, axes = st.new_figure(1, len(pdes), size=(3.8, 2.9))
    for ax, pde in zip(axes[0], pdes):
        models = [m for p, m in studies if p == pde]
        for i, model in enumerate(models):
            labels, parts = points(studies[pde, model])
            st.bars(ax, np.arange(len(labels)) + 0.12 * (i - (len(models) - 1) / 2), *parts, fmt="o",
                    ms=4, color=st.model_color(model, "k"), capsize=2,
                    label=f"[ours] {st.model_label(model)}")
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title.format(pde=pde))
    return fig, axes[0]


def d4_equivariance_figure(studies: dict, *, variable: str = "equivariance"):
    """Per PDE: the follow-up aggregate (median over seeds of the per-seed Q3, bars = quartiles
    over seeds) of the equivariance ratio per D4 element, per model, log scale, with the
    follow-up's range dashed; one legend below the panels. [follow-up D4 figures], our numbers."""
    ours = variable == "equivariance"

    def points(ds):
        labels = sm.d4_labels(ds) if ours else [str(d) for d in ds["d4"].values if str(d) != "e"]
        coord = "element" if ours else "d4"
        agg = sm.aggregate_equivariance(ds[variable].sel({coord: labels}).rename({coord: "element"}))
        return labels, [agg[k].values for k in ("median", "q1", "q3")]

    fig, axes = _per_pde(studies, points, xlabel="D4 element g",
                         ylabel="SMSE(f(g.x), g.y) / SMSE(f(x), y)",
                         title="{pde}: D4 equivariance error" + ("" if ours else " (authors' axes)")
                         + "\n[ours; follow-up range dashed]")
    for ax, pde in zip(axes, _pdes(studies)):
        if pde in PAPER_RANGES:
            word = "up to ~1e4" if pde == "NS" else "within ~25%"
            st.paper_line(ax, PAPER_RANGES[pde], f"[follow-up] {pde} {word}")
        ax.axhline(1.0, color="0.6", lw=0.6)
        ax.set_yscale("log")
    st.legend_below(fig, axes)
    return fig


def d4_orbit_figure(studies: dict):
    """Per PDE: orbit-influence diagonal H_g[n, n] (median, quartile bars over seeds x batches x
    examples) per group element (identity and D4), per model; one legend below the panels.
    [ours, as the follow-up's orbit figures]"""
    def points(ds):
        labels = ["e", *sm.d4_labels(ds)]
        return labels, st.quartiles(sm.orbit_quartiles(ds).sel(element=labels))

    fig, axes = _per_pde(studies, points, xlabel="group element g",
                         ylabel="standardized $H_g[n, n]$",
                         title="{pde}: D4 orbit influence [ours]\n"
                               "(follow-up: suppressed where equivariance breaks)")
    st.legend_below(fig, axes)
    return fig


def shift_figure(studies: dict):
    """Rows: PDEs; left: equivariance ratio over every circular shift along y (H) and x (W)
    (median over seeds of the per-seed Q3), with the follow-up's 'few percent' band; right:
    orbit influence diagonal at the profile's shifts and the identity. [ours; follow-up Figs. 3-4]"""
    pdes = _pdes(studies)
    fig, axes = st.new_figure(len(pdes), 2, size=(3.8, 2.7))
    for row, pde in zip(axes, pdes):
        for model in [m for p, m in studies if p == pde]:
            ds = studies[(pde, model)]
            color = st.model_color(model, "k")
            curve = ds["shift_axis_error"].quantile(0.75, dim=("batch", "example")).median("seed")
            q = sm.orbit_quartiles(ds)
            for k, (axis, ls, marker) in enumerate((("y", "-", "o"), ("x", ":", "s"))):
                c = curve.sel(axis=axis)
                row[0].plot(c["shift"].values, c.values, ls=ls, color=color,
                            label=f"[ours] {st.model_label(model)}, along {axis}")
                labels = [lab for lab in sm.shift_labels(ds)
                          if (lab.endswith(",0)") if axis == "y" else lab.startswith("shift(0,"))]
                shifts = [0] + [int(lab[6:-1].split(",")[k]) for lab in labels]
                st.bars(row[1], shifts, *st.quartiles(q.sel(element=["e", *labels])), fmt=marker + "-",
                        ms=4, color=color, capsize=2, label=f"{st.model_label(model)}, along {axis}")
        row[0].axhspan(1 / PAPER_RANGES["shift"], PAPER_RANGES["shift"], color=st.PAPER_COLOR,
                       alpha=0.25, label="[follow-up] within a few percent")
        row[0].set(yscale="log", xlabel="circular shift (grid cells)", ylabel="equivariance ratio (Q3)",
                   title=f"{pde}: shift equivariance error\n[ours; follow-up band]")
        row[1].set(xlabel="circular shift (grid cells)", ylabel="standardized $H_g[n, n]$",
                   title=f"{pde}: shift orbit influence [ours]")
        for ax in row:
            ax.legend(loc="best", fontsize=6)
    return fig


def shift_landscape_figure(studies: dict):
    """Per (pde, model): log10 of the equivariance ratio (median over seeds and batches of the
    Q3 over examples) on the 2D grid of circular shifts (a along y, b along x), every panel on
    one colour range with one colour bar. [ours; the follow-up's shift landscape]"""
    fig, axes = st.new_figure(1, len(studies), size=(3.0, 2.8))
    lands = [ds["shift_landscape"].median(("seed", "batch")).transpose("shift_y", "shift_x")
             for ds in studies.values()]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = [np.log10(land.values) for land in lands]
    lo, hi = st.shared_range(logs)
    images = []
    for ax, key, land, values in zip(axes[0], studies, lands, logs):
        xs = land["shift_x"].values
        step = int(xs[1] - xs[0]) if len(xs) > 1 else 1
        images.append(st.heatmap(ax, values, x=xs, y=land["shift_y"].values, half=step / 2,
                                 colorbar=False, cmap=st.HEATMAP_CMAP, aspect="equal", vmin=lo,
                                 vmax=hi))
        ax.set(xlabel="shift along x (cells)", ylabel="shift along y (cells)",
               title=f"{_label(key)}: shift landscape [ours]")
    if images:
        fig.colorbar(images[0], ax=list(axes[0]), label="log10 ratio (Q3)")
    return fig


def translation_landscape_figure(studies: dict, n: int):
    """Per (pde, model) one row: orbit influence H_g[n, n] along each axis vs the signed shift
    (as the follow-up's Figs. 5, 6, 11, 14), then on the box grid of joint shifts the median
    orbit influence (Figs. 8, 15, 18, 19) and log10 Q3 equivariance ratio (Figs. 7, 16, 17, 20),
    on colour ranges shared across rows."""
    land = {key: sm.translation_landscape(ds, n) for key, ds in studies.items()}
    keys = [k for k in land if land[k]["box"] > 0]
    if not keys:
        raise InputError("studies: no study holds a box grid of joint shifts (profile symmetry_box)")
    fig, axes = st.new_figure(len(keys), 3, size=(3.1, 2.6))
    inf_all = np.concatenate([land[k]["box_influence"].ravel() for k in keys])
    err_all = np.log10(np.concatenate([land[k]["box_error"].ravel() for k in keys]))
    for row, key in zip(axes, keys):
        data, name = land[key], f"{key[0]}-{st.model_label(key[1])}"
        for axis, ls in (("y", "-"), ("x", ":")):
            xs, q = data["axis"][axis]
            st.band(row[0], xs, q[1], q[0], q[2], color=st.model_color(key[1], "k"), alpha=0.15,
                    ls=ls, label=f"along {axis}")
        row[0].set(xlabel="signed circular shift (grid cells)", ylabel="standardized $H_g[n, n]$")
        row[0].set_title(f"{name}: influence along the axes\n"
                         "[ours; follow-up recipe, its Figs. 5, 6, 11, 14]")
        row[0].legend(loc="best", fontsize=6)
        for ax, values, every, what in (
                (row[1], data["box_influence"], inf_all, "median $H_g[n, n]$"),
                (row[2], np.log10(data["box_error"]), err_all, "log10 equivariance ratio (Q3)")):
            st.heatmap(ax, values, shrink=0.8, vmin=np.nanmin(every), vmax=np.nanmax(every),
                       cmap=st.HEATMAP_CMAP)
            ax.set(xlabel="shift b along x", ylabel="shift a along y")
            ax.set_title(f"{name}: box grid [ours; follow-up recipe]\n{what}", fontsize=8)
    return fig


def axis_check_figure(studies: dict):
    """Left: the axis-assignment residual (NS divergence, CE continuity) with the PDESpec
    assignment and with the swap, per PDE. Right: D4 equivariance ratio under our axis
    convention and the authors' (which negates the vectors for r, r3, s, sr2 on our data).
    [ours; follow-up convention check]"""
    pdes = _pdes(studies)
    fig, axes = st.new_figure(1, 2, size=(3.8, 2.9))
    ax, width = axes[0, 0], 0.35
    for i, pde in enumerate(pdes):
        check = next(studies[k] for k in studies if k[0] == pde)["axis_check"]
        for j, (name, color) in enumerate((("ours", "#0072B2"), ("swapped", "#D55E00"))):
            ax.bar(i + (j - 0.5) * width, np.median(check.sel(assignment=name).values.ravel()),
                   width, color=color, label=name if i == 0 else None)
    ax.set_xticks(np.arange(len(pdes)),
                  [f"{p}\n({'continuity' if p == 'CE' else 'divergence'})" for p in pdes])
    ax.set(yscale="log", ylabel="relative residual", title="axis assignment:\nPDESpec vs swapped [ours]")
    ax.legend()
    ax = axes[0, 1]
    for key, ds in studies.items():
        d4 = [str(d) for d in ds["d4"].values]
        marker = "o" if key[0] == "NS" else "s"
        for var, mfc, what in (("equivariance", "none", "ours"),
                               ("equivariance_authors", None, "authors' axes")):
            da = ds[var].sel(element=d4) if var == "equivariance" else ds[var]
            ax.plot(np.arange(8), da.quantile(0.75, dim=("batch", "example")).median("seed").values,
                    marker, color=st.model_color(key[1], "k"), mfc=mfc, label=f"{_label(key)} {what}")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(8), d4)
    ax.set(xlabel="D4 element (authors' axes flip v on r, r3, s, sr2)", ylabel="equivariance ratio (Q3)",
           title="our vs the authors' axis convention\n[ours; follow-up code]")
    ax.legend(fontsize=5, ncol=2)
    return fig


def lie_layers_figure(studies: dict):
    """Left: median Lie-derivative norm per generator and (pde, model) (bars: quartiles over
    seeds x batches x examples). Right: share of each hooked module in the x-translation Lie
    derivative (Gruver et al. 2023), per (pde, model). [ours; beyond both papers]"""
    keys = list(studies)
    fig, axes = st.new_figure(1, 2, size=(4.4, 3.0))
    ax, width = axes[0, 0], 0.8 / len(keys)
    for k, key in enumerate(keys):
        q = studies[key]["lie_norm"].quantile([0.25, 0.5, 0.75], dim=("seed", "batch", "example"))
        med, q1, q3 = st.quartiles(q)
        ax.bar(np.arange(med.size) + (k - (len(keys) - 1) / 2) * width, med, width,
               yerr=[med - q1, q3 - med], label=_label(key), capsize=2)
    gens = [str(g) for g in studies[keys[0]]["generator"].values]
    ax.set_xticks(np.arange(len(gens)), gens)
    ax.set(yscale="log", ylabel="RMS Lie derivative (per cell / per rad)",
           title="Lie derivative norm per generator [ours]")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    for key in keys:
        share = sm.layer_shares(studies[key])
        ax.plot(np.arange(share.sizes["layer"]), share.values, "o-", ms=3,
                label=f"{_label(key)} ({share.sizes['layer'] - 1} modules)")
    ax.set(xlabel="hooked module (forward order; last = remainder)", ylabel="share of |L_x f|",
           title="layer-wise Lie derivative, x translation [ours]")
    ax.legend(fontsize=6)
    return fig


def lie_epochs_figure(studies: dict):
    """Across checkpoints, per (pde, model): left, median Lie norm of x translation and rotation;
    right, the orbit diagonal of the worst D4 element and of shift(1,0) relative to the
    identity's. Does the model become more equivariant, and does orbit influence follow? [ours]"""
    fig, axes = st.new_figure(1, 2, size=(3.8, 2.9))
    for key, ds in studies.items():
        tr = sm.epoch_trends(ds)
        ep = tr["epoch"].values
        style = {"ls": "-" if key[0] == "NS" else "--", "color": st.model_color(key[1], "k"), "ms": 3}
        for generator, marker in (("x", "o"), ("rotation", "^")):
            axes[0, 0].plot(ep, tr["lie"].sel(generator=generator).values, marker=marker,
                            label=f"{_label(key)}, {generator}", **style)
        for t, marker in (("worst_d4", "o"), ("shift1", "s")):
            rel = tr["orbit_relative"].sel(tracked=t).values
            ok = np.isfinite(rel)  # epochs without orbit influence (profile's symmetry_orbit_epochs)
            axes[0, 1].plot(ep[ok], rel[ok], marker=marker, label=f"{_label(key)}, {t}", **style)
    axes[0, 0].set(yscale="log", xlabel="checkpoint epoch", ylabel="median RMS Lie derivative",
                   title="Lie norm across training [ours]")
    axes[0, 1].axhline(1.0, color="0.6", lw=0.6)
    axes[0, 1].set(xlabel="checkpoint epoch", ylabel="$H_g[n,n]$ / $H_e[n,n]$ (median)",
                   title="orbit influence across training [ours]")
    for ax in axes[0]:
        ax.legend(fontsize=5)
    return fig


def symmetry_panel_figure(ds, element: str, *, title: str = ""):
    """The explorer's symmetry panel for one (pde, model) study and one `element` label: left,
    per-example equivariance ratio for every element (grey) with `element` highlighted;
    right, orbit diagonal H_g[n, n] against the identity's H_e[n, n] per example. [ours]"""
    labels = [str(e) for e in ds["element"].values]
    if element not in labels:
        raise InputError(f"element: {element!r} not in the study ({labels})")
    fig, axes = st.new_figure(1, 2, size=(3.6, 2.8))
    ax, ax_o = axes[0]
    eqv = ds["equivariance"].transpose("element", ...).values.reshape(len(labels), -1)
    for i, lab in enumerate(labels):
        hot = lab == element
        ax.plot(np.full(eqv.shape[1], i), eqv[i], ".", ms=3 if hot else 2,
                color=st.OURS_COLOR if hot else "0.7")
    ax.axhspan(1 / PAPER_RANGES["shift"], PAPER_RANGES["shift"], color=st.PAPER_COLOR, alpha=0.2,
               label="[follow-up] few % band")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=60, fontsize=6)
    ax.set(ylabel="equivariance ratio per example", title=f"equivariance error, {element} highlighted")
    ax.legend(fontsize=6)
    d = ds["orbit_diagonal"]
    x, y = d.sel(element="e").values.ravel(), d.sel(element=element).values.ravel()
    ax_o.plot(x, y, ".", ms=3, color=st.OURS_COLOR)
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    ax_o.plot(lim, lim, color="0.6", lw=0.6)
    ax_o.set(xlabel="$H_e[n, n]$ (identity)", ylabel=f"$H_g[n, n]$, g = {element}",
             title="orbit vs self influence")
    if title:
        fig.suptitle(f"{title} [ours]")
    return fig
