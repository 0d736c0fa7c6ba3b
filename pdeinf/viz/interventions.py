"""Figures of the interventions study, all "[ours]" (neither paper trains with other recipes);
inputs are the outputs of `pdeinf.analysis.interventions`."""
from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pdeinf.errors import InputError
from pdeinf.viz import style as st

#: One colour per recipe (Okabe-Ito), baseline black.
RECIPE_COLORS = {"one-step": "#000000", "pushforward": "#0072B2", "noise": "#D55E00",
                 "multistep": "#009E73", "augment": "#CC79A7", "physics": "#E69F00"}
TAG = "[ours]"


def recipe_color(recipe: str, index: int = 0) -> str:
    return RECIPE_COLORS.get(str(recipe), st.class_color(index))


def _titled(title: str, what: str) -> str:
    return f"{title} {what} {TAG}".strip()


def rollout_vs_r_figure(table: xr.Dataset, obs: xr.Dataset | None = None, *,
                        title: str = "") -> Figure:
    """Rollout SMSE at dt vs cross-time ratio R at the final checkpoint, one point per recipe
    (mean over seeds x batches with 95% t-intervals over seeds on both axes); with `obs`, the
    per-seed means as small markers."""
    st.require_dims(table, ("recipe", "ci"), "table")
    epoch = table.attrs.get("epoch")
    fig, ax = st.new_figure(size=(4.4, 3.4), title=_titled(title, f"rollout error vs R, epoch {epoch}"))
    for i, recipe in enumerate(table["recipe"].values):
        color = recipe_color(recipe, i)
        (x, x_lo, x_hi), (y, y_lo, y_hi) = (st.ci_parts(table[v].sel(recipe=recipe)) for v in ("R", "rollout"))
        ax.errorbar(x, y, xerr=[[x - x_lo], [x_hi - x]], yerr=[[y - y_lo], [y_hi - y]], fmt="o",
                    color=color, capsize=3, label=str(recipe))
        if obs is not None:
            per_seed = obs.sel(recipe=recipe, epoch=epoch).mean("batch")
            ax.scatter(per_seed["R"].values, per_seed["rollout"].values, s=12, color=color,
                       alpha=0.5, marker="x")
    ax.set(xlabel="cross-time ratio R (raw, class mean)",
           ylabel=f"cumulative rollout SMSE, dt={table.attrs.get('dt')}", yscale="log")
    ax.legend(frameon=False, fontsize=7)
    return fig


def lag_curves_figure(curves: xr.DataArray, *, title: str = "") -> Figure:
    """Standardized influence vs lag dt per recipe (mean over seeds x batches of the
    per-matrix medians, 95% interval band), intra- and inter-class panels."""
    st.require_dims(curves, ("ci", "recipe", "pair", "dt"), "curves")
    pairs = [str(p) for p in curves["pair"].values]
    fig, axes = st.new_figure(1, len(pairs), sharey=True)
    for ax, pair in zip(axes[0], pairs):
        for i, recipe in enumerate(curves["recipe"].values):
            st.band(ax, curves["dt"].values, *st.ci_parts(curves.sel(recipe=recipe, pair=pair)),
                    color=recipe_color(recipe, i), alpha=0.15, lw=1.2, label=str(recipe))
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set(xlabel="dt = t_resp - t_pert (snapshots)", title=_titled(title, f"{pair}-class"))
    axes[0, 0].set_ylabel("standardized influence (median per matrix)")
    axes[0, -1].legend(frameon=False, fontsize=7)
    return fig


def class_matrices_figure(cms: xr.DataArray, *, title: str = "") -> Figure:
    """One class matrix per recipe (mean over seeds x batches of the per-matrix medians of
    standardized influence at the matrices' lag), estimate with its interval in each cell."""
    st.require_dims(cms, ("ci", "recipe", "c_resp", "c_pert"), "cms")
    recipes = list(cms["recipe"].values)
    fig, axes = st.new_figure(1, len(recipes), size=(3.0, 2.8))
    est = cms.sel(ci="estimate")
    vmin, vmax = float(est.min()), float(est.max())
    labels = [str(c) for c in cms["c_resp"].values]
    for k, (ax, recipe) in enumerate(zip(axes[0], recipes)):
        values, lo, hi = st.ci_parts(cms.sel(recipe=recipe).transpose("ci", "c_resp", "c_pert"))
        image = st.matrix(ax, values, text=lambda i, j, v=values, lo=lo, hi=hi:
                          f"{v[i, j]:.2g}\n[{lo[i, j]:.2g}, {hi[i, j]:.2g}]",
                          dark=lambda i, j, v=values: not v[i, j] > 0.5 * (vmin + vmax),
                          fontsize=5.5, cmap=st.HEATMAP_CMAP, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels if k == 0 else [])
        ax.set_title(f"{recipe} {TAG}")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="standardized influence")
    fig.suptitle(_titled(title, f"class matrix, lag {cms.attrs.get('lag', 0)}"))
    return fig


def selection_figure(sel: xr.Dataset, *, title: str = "") -> Figure:
    """Change in log rollout SMSE at dt of the checkpoint chosen by each criterion vs the one
    minimal validation SMSE picks, per recipe (and pooled), with 95% intervals."""
    st.require_dims(sel, ("criterion", "ci", "recipe"), "sel")
    fig, ax = st.new_figure(size=(4.4, 3.0), title=_titled(title, "checkpoint selection"))
    recipes = [str(r) for r in sel["recipe"].values]
    criteria = [str(c) for c in sel["criterion"].values]
    width = 0.8 / max(len(criteria), 1)
    for k, c in enumerate(criteria):
        for i, recipe in enumerate(recipes):
            st.bars(ax, i + (k - (len(criteria) - 1) / 2) * width,
                    *st.ci_parts(sel["d_log_rollout"].sel(criterion=c, recipe=recipe)),
                    fmt="os"[k % 2], color=st.class_color(k), capsize=3, label=f"by {c}" if i == 0 else None)
    ax.axhline(0.0, color="0.6", lw=0.6)
    ax.set_xticks(range(len(recipes)), recipes, rotation=20)
    ax.set_ylabel("log rollout SMSE: chosen - val-chosen")
    ax.legend(frameon=False, fontsize=7)
    return fig


def orbit_figure(table: xr.Dataset, *, title: str = "") -> Figure:
    """Per D4 element, one-step vs augment (final checkpoint): left, the standardized
    orbit-influence diagonal H_g[n, n]; right, the log10 equivariance ratio; both the mean over
    seeds x batches of the per-batch example means with 95% t-intervals over seeds
    (`pdeinf.analysis.interventions.orbit_element_table`)."""
    st.require_dims(table, ("ci", "recipe", "element"), "table")
    for var in ("orbit", "log_equivariance"):
        if var not in table:
            raise InputError(f"table: no {var!r} variable (orbit_element_table)")
    labels = [str(e) for e in table["element"].values]
    recipes = [str(r) for r in table["recipe"].values]
    xs = np.arange(len(labels))
    fig, axes = st.new_figure(1, 2, size=(4.2, 3.0))
    panels = (("orbit", "standardized orbit influence $H_g[n, n]$", "orbit influence"),
              ("log_equivariance", "log10 SMSE(f(g.x), g.y) / SMSE(f(x), y)", "equivariance error"))
    for ax, (var, ylabel, name) in zip(axes[0], panels):
        for i, recipe in enumerate(recipes):
            st.bars(ax, xs + 0.15 * (i - (len(recipes) - 1) / 2), *st.ci_parts(table[var].sel(recipe=recipe)),
                    fmt="o", ms=4, capsize=2, color=recipe_color(recipe, i), label=f"{recipe} {TAG}")
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xticks(xs, labels)
        ax.set(xlabel="D4 element g", ylabel=ylabel,
               title=_titled(title, f"{name}, epoch {table.attrs.get('epoch')}"))
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.suptitle(f"one-step vs augment: mean over {table.attrs.get('n_seeds')} seed(s) x "
                 f"{table.attrs.get('n_batches')} batch(es), 95% t-intervals over seeds "
                 f"{TAG}", fontsize=8)
    return fig
