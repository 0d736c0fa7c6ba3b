"""Figures of the symmetry study (follow-up section 7 + Lie derivative), one function each.

Inputs are the study Datasets (`pdeinf.symmetry.study`, leading `seed` dim) keyed by
(pde, model), and summaries of `pdeinf.symmetry.summary`. Equivariance errors are the
dimensionless ratio SMSE(f(g.x), g.y) / SMSE(f(x), y); orbit influence is the standardized
diagonal H_g[n, n]; Lie norms per grid cell (x, y) or per radian (rotation). The follow-up's
published ranges (docs/method.md section 7) are drawn as dashed references and named.
"""
from __future__ import annotations

import numpy as np

from pdeinf.errors import InputError
from pdeinf.symmetry import summary as sm
from pdeinf.viz import style as st

__all__ = ["axis_check_figure", "d4_equivariance_figure", "d4_orbit_figure", "lie_epochs_figure",
           "lie_layers_figure", "shift_figure", "shift_landscape_figure", "symmetry_panel_figure",
           "translation_landscape_figure"]

#: The follow-up's ranges (text; docs/method.md section 7): NS D4 errors up to ~1e4, CE within ~25%,
#: translations within a few percent (5% is ours).
PAPER_RANGES = {"NS": 1e4, "CE": 1.25, "shift": 1.05}


def _pdes(studies: dict) -> list[str]:
    if not isinstance(studies, dict) or not studies:
        raise InputError("studies: expected a non-empty dict {(pde, model): study Dataset}")
    return list(dict.fromkeys(p for p, _ in studies))


def _errorbars(ax, xs, agg, color, label, offset):
    """Medians with quartile bars; `agg` has `median`, `q1`, `q3`."""
    st.bars(ax, np.asarray(xs) + offset, *(agg[k].values for k in ("median", "q1", "q3")), fmt="o",
            ms=4, color=color, capsize=2, label=label)


def d4_equivariance_figure(studies: dict, *, variable: str = "equivariance"):
    """Per PDE: the follow-up aggregate (median over seeds of the per-seed Q3, bars = quartiles
    over seeds) of the equivariance ratio per D4 element, per model, log scale, with the
    follow-up's range dashed; one legend below the panels. [follow-up D4 figures] with our
    numbers."""
    pdes = _pdes(studies)
    fig, axes = st.new_figure(1, len(pdes), size=(3.8, 2.9))
    for ax, pde in zip(axes[0], pdes):
        pairs = [(p, m) for p, m in studies if p == pde]
        for i, (_, model) in enumerate(pairs):
            ds = studies[(pde, model)]
            labels = sm.d4_labels(ds) if variable == "equivariance" else \
                [str(d) for d in ds["d4"].values if str(d) != "e"]
            coord = "element" if variable == "equivariance" else "d4"
            agg = sm.aggregate_equivariance(ds[variable].sel({coord: labels}).rename({coord: "element"}))
            _errorbars(ax, np.arange(len(labels)), agg, st.MODEL_COLORS.get(model, "k"),
                       f"[ours] {st.model_label(model)}", 0.12 * (i - (len(pairs) - 1) / 2))
        ref = PAPER_RANGES.get(pde)
        if ref is not None:
            word = "up to ~1e4" if pde == "NS" else "within ~25%"
            ax.axhline(ref, color=st.PAPER_COLOR, ls="--", lw=1, label=f"[follow-up] {pde} {word}")
        ax.axhline(1.0, color="0.6", lw=0.6)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set(xlabel="D4 element g", ylabel="SMSE(f(g.x), g.y) / SMSE(f(x), y)")
        conv = "" if variable == "equivariance" else " (authors' axes)"
        ax.set_title(f"{pde}: D4 equivariance error{conv}\n[ours; follow-up range dashed]")
    st.legend_below(fig, axes[0])
    return fig


def d4_orbit_figure(studies: dict):
    """Per PDE: orbit-influence diagonal H_g[n, n] (median, quartile bars over seeds x batches x
    examples) per group element (identity and D4), per model; one legend below the panels.
    [ours, as the follow-up's orbit figures]"""
    pdes = _pdes(studies)
    fig, axes = st.new_figure(1, len(pdes), size=(3.8, 2.9))
    for ax, pde in zip(axes[0], pdes):
        pairs = [(p, m) for p, m in studies if p == pde]
        for i, (_, model) in enumerate(pairs):
            ds = studies[(pde, model)]
            labels = ["e", *sm.d4_labels(ds)]
            st.bars(ax, np.arange(len(labels)) + 0.12 * (i - (len(pairs) - 1) / 2),
                    *st.quartiles(sm.orbit_quartiles(ds).sel(element=labels)), fmt="o", ms=4,
                    color=st.MODEL_COLORS.get(model, "k"), capsize=2, label=f"[ours] {st.model_label(model)}")
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set(xlabel="group element g", ylabel="standardized $H_g[n, n]$",
               title=f"{pde}: D4 orbit influence [ours]\n(follow-up: suppressed where equivariance breaks)")
    st.legend_below(fig, axes[0])
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
            color = st.MODEL_COLORS.get(model, "k")
            curve = ds["shift_axis_error"].quantile(0.75, dim=("batch", "example")).median("seed")
            for axis, ls in (("y", "-"), ("x", ":")):
                c = curve.sel(axis=axis)
                row[0].plot(c["shift"].values, c.values, ls=ls, color=color,
                            label=f"[ours] {st.model_label(model)}, along {axis}")
            q = sm.orbit_quartiles(ds)
            for axis, marker in (("y", "o"), ("x", "s")):
                labels = [lab for lab in sm.shift_labels(ds)
                          if (lab.endswith(",0)") if axis == "y" else lab.startswith("shift(0,"))]
                shifts = [0] + [int(lab[6:-1].split(",")[0 if axis == "y" else 1]) for lab in labels]
                st.bars(row[1], shifts, *st.quartiles(q.sel(element=["e", *labels])), fmt=marker + "-",
                        ms=4, color=color, capsize=2, label=f"{st.model_label(model)}, along {axis}")
        row[0].axhspan(1 / PAPER_RANGES["shift"], PAPER_RANGES["shift"], color=st.PAPER_COLOR, alpha=0.25,
                       label="[follow-up] within a few percent")
        row[0].set(yscale="log", xlabel="circular shift (grid cells)", ylabel="equivariance ratio (Q3)",
                   title=f"{pde}: shift equivariance error\n[ours; follow-up band]")
        row[0].legend(loc="best", fontsize=6)
        row[1].set(xlabel="circular shift (grid cells)", ylabel="standardized $H_g[n, n]$",
                   title=f"{pde}: shift orbit influence [ours]")
        row[1].legend(loc="best", fontsize=6)
    return fig


def shift_landscape_figure(studies: dict):
    """Per (pde, model): log10 of the equivariance ratio (median over seeds and batches of the
    Q3 over examples) on the 2D grid of circular shifts (a along y, b along x), every panel on
    one colour range (the finite values of all panels) with one colour bar. [ours; the
    follow-up's shift landscape]"""
    keys = list(studies)
    fig, axes = st.new_figure(1, len(keys), size=(3.0, 2.8))
    lands = [studies[key]["shift_landscape"].median(("seed", "batch")).transpose("shift_y", "shift_x")
             for key in keys]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = [np.log10(land.values) for land in lands]
    lo, hi = st.shared_range(logs)
    images = []
    for ax, key, land, values in zip(axes[0], keys, lands, logs):
        ys, xs = land["shift_y"].values, land["shift_x"].values
        step = int(xs[1] - xs[0]) if len(xs) > 1 else 1
        images.append(ax.imshow(values, origin="lower", cmap=st.HEATMAP_CMAP, aspect="equal",
                                vmin=lo, vmax=hi, extent=(xs[0] - step / 2, xs[-1] + step / 2,
                                                          ys[0] - step / 2, ys[-1] + step / 2)))
        ax.set(xlabel="shift along x (cells)", ylabel="shift along y (cells)",
               title=f"{key[0]} {st.model_label(key[1])}: shift landscape [ours]")
    if images:
        fig.colorbar(images[0], ax=list(axes[0]), label="log10 ratio (Q3)")
    return fig


def translation_landscape_figure(studies: dict, n: int):
    """Per (pde, model) one row: orbit influence H_g[n, n] along each axis against the signed
    circular shift (median, quartile band over seeds x batches x examples), then the box grid
    of joint shifts (a, b) = 0..box: median orbit influence and median over seeds of the Q3
    equivariance ratio (log10), on shared colour ranges across rows. The follow-up's recipe on
    our models: axis influence as its Figs. 5, 6, 11, 14; box influence as Figs. 8, 15, 18, 19;
    box error as Figs. 7, 16, 17, 20."""
    land = {key: sm.translation_landscape(ds, n) for key, ds in studies.items()}
    keys = [k for k in land if land[k]["box"] > 0]
    if not keys:
        raise InputError("studies: no study holds a box grid of joint shifts (profile symmetry_box)")
    fig, axes = st.new_figure(len(keys), 3, size=(3.1, 2.6))
    inf_all = np.concatenate([land[k]["box_influence"].ravel() for k in keys])
    err_all = np.log10(np.concatenate([land[k]["box_error"].ravel() for k in keys]))
    inf_range = (np.nanmin(inf_all), np.nanmax(inf_all))
    err_range = (np.nanmin(err_all), np.nanmax(err_all))
    for row, key in zip(axes, keys):
        pde, model = key
        data = land[key]
        color = st.MODEL_COLORS.get(model, "k")
        for name, ls in (("y", "-"), ("x", ":")):
            xs, q = data["axis"][name]
            st.band(row[0], xs, q[1], q[0], q[2], color=color, alpha=0.15, ls=ls, label=f"along {name}")
        row[0].set(xlabel="signed circular shift (grid cells)", ylabel="standardized $H_g[n, n]$")
        row[0].set_title(f"{pde}-{st.model_label(model)}: influence along the axes\n"
                         "[ours; follow-up recipe, its Figs. 5, 6, 11, 14]")
        row[0].legend(loc="best", fontsize=6)
        for ax, values, (lo, hi), what, cmap in (
                (row[1], data["box_influence"], inf_range, "median $H_g[n, n]$", st.HEATMAP_CMAP),
                (row[2], np.log10(data["box_error"]), err_range, "log10 equivariance ratio (Q3)",
                 st.HEATMAP_CMAP)):
            im = ax.imshow(values, origin="lower", vmin=lo, vmax=hi, cmap=cmap)
            ax.set(xlabel="shift b along x", ylabel="shift a along y")
            ax.set_title(f"{pde}-{st.model_label(model)}: box grid [ours; follow-up recipe]\n{what}",
                         fontsize=8)
            fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def axis_check_figure(studies: dict):
    """Left: the axis-assignment residual (NS divergence, CE continuity) with the PDESpec
    assignment and with the swap, per PDE. Right: D4 equivariance ratio under our axis
    convention and the authors' (which negates the vectors for r, r3, s, sr2 on our data).
    [ours; follow-up convention check]"""
    pdes = _pdes(studies)
    fig, axes = st.new_figure(1, 2, size=(3.8, 2.9))
    width = 0.35
    for i, pde in enumerate(pdes):
        ds = next(studies[k] for k in studies if k[0] == pde)
        check = ds["axis_check"]
        for j, (name, color) in enumerate((("ours", "#0072B2"), ("swapped", "#D55E00"))):
            vals = check.sel(assignment=name).values.ravel()
            axes[0, 0].bar(i + (j - 0.5) * width, np.median(vals), width, color=color,
                           label=name if i == 0 else None)
    axes[0, 0].set_xticks(np.arange(len(pdes)), [f"{p}\n({'continuity' if p == 'CE' else 'divergence'})"
                                                 for p in pdes])
    axes[0, 0].set(yscale="log", ylabel="relative residual",
                   title="axis assignment:\nPDESpec vs swapped [ours]")
    axes[0, 0].legend()
    ax = axes[0, 1]
    for k, key in enumerate(studies):
        ds = studies[key]
        d4 = [str(d) for d in ds["d4"].values]
        ours = ds["equivariance"].sel(element=d4).quantile(0.75, dim=("batch", "example")).median("seed")
        theirs = ds["equivariance_authors"].quantile(0.75, dim=("batch", "example")).median("seed")
        color = st.MODEL_COLORS.get(key[1], "k")
        marker = "o" if key[0] == "NS" else "s"
        ax.plot(np.arange(8), ours.values, marker, color=color, mfc="none",
                label=f"{key[0]} {st.model_label(key[1])} ours")
        ax.plot(np.arange(8), theirs.values, marker, color=color,
                label=f"{key[0]} {st.model_label(key[1])} authors' axes")
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
    ax = axes[0, 0]
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        q = studies[key]["lie_norm"].quantile([0.25, 0.5, 0.75], dim=("seed", "batch", "example"))
        med, q1, q3 = st.quartiles(q)
        ax.bar(np.arange(med.size) + (k - (len(keys) - 1) / 2) * width, med, width, yerr=[med - q1, q3 - med],
               label=f"{key[0]} {st.model_label(key[1])}", capsize=2)
    gens = [str(g) for g in studies[keys[0]]["generator"].values]
    ax.set_xticks(np.arange(len(gens)), gens)
    ax.set(yscale="log", ylabel="RMS Lie derivative (per cell / per rad)",
           title="Lie derivative norm per generator [ours]")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    for key in keys:
        share = sm.layer_shares(studies[key])
        ax.plot(np.arange(share.sizes["layer"]), share.values, "o-", ms=3,
                label=f"{key[0]} {st.model_label(key[1])} ({share.sizes['layer'] - 1} modules)")
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
        color = st.MODEL_COLORS.get(key[1], "k")
        ls = "-" if key[0] == "NS" else "--"
        lab = f"{key[0]} {st.model_label(key[1])}"
        axes[0, 0].plot(ep, tr["lie"].sel(generator="x").values, ls, color=color, marker="o", ms=3,
                        label=f"{lab}, x")
        axes[0, 0].plot(ep, tr["lie"].sel(generator="rotation").values, ls, color=color, marker="^",
                        ms=3, label=f"{lab}, rotation")
        for t, marker in (("worst_d4", "o"), ("shift1", "s")):
            rel = tr["orbit_relative"].sel(tracked=t).values
            ok = np.isfinite(rel)  # epochs without orbit influence (profile's symmetry_orbit_epochs)
            axes[0, 1].plot(ep[ok], rel[ok], ls, color=color, marker=marker, ms=3, label=f"{lab}, {t}")
    axes[0, 0].set(yscale="log", xlabel="checkpoint epoch", ylabel="median RMS Lie derivative",
                   title="Lie norm across training [ours]")
    axes[0, 0].legend(fontsize=5)
    axes[0, 1].axhline(1.0, color="0.6", lw=0.6)
    axes[0, 1].set(xlabel="checkpoint epoch", ylabel="$H_g[n,n]$ / $H_e[n,n]$ (median)",
                   title="orbit influence across training [ours]")
    axes[0, 1].legend(fontsize=5)
    return fig


def symmetry_panel_figure(ds, element: str, *, title: str = ""):
    """The explorer's symmetry panel for one (pde, model) study and one `element` label: left,
    per-example equivariance ratio for every element (grey) with `element` highlighted;
    right, orbit diagonal H_g[n, n] against the identity's H_e[n, n] per example. [ours]"""
    labels = [str(e) for e in ds["element"].values]
    if element not in labels:
        raise InputError(f"element: {element!r} not in the study ({labels})")
    fig, axes = st.new_figure(1, 2, size=(3.6, 2.8))
    eqv = ds["equivariance"].transpose("element", ...).values.reshape(len(labels), -1)
    ax = axes[0, 0]
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
    ax = axes[0, 1]
    d = ds["orbit_diagonal"]
    x, y = d.sel(element="e").values.ravel(), d.sel(element=element).values.ravel()
    ax.plot(x, y, ".", ms=3, color=st.OURS_COLOR)
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    ax.plot(lim, lim, color="0.6", lw=0.6)
    ax.set(xlabel="$H_e[n, n]$ (identity)", ylabel=f"$H_g[n, n]$, g = {element}",
           title="orbit vs self influence")
    if title:
        fig.suptitle(f"{title} [ours]")
    return fig
