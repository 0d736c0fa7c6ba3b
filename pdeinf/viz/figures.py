"""One function per figure, from the objects of `pdeinf.analysis.coherence`, the pipeline's
rollout errors and training histories, or raw snapshots. Time axes are snapshot indices;
influence is dimensionless (its normalisation named in the colour-bar / axis label)."""
from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from pdeinf.errors import InputError
from pdeinf.viz import style as st

#: Our figures made with a follow-up recipe (docs/method.md section 6) that the follow-up itself
#: does not show: its figures are those of the symmetry study (docs/method.md section 7).
FOLLOWUP_RECIPE_LABEL = "[ours; follow-up recipe]"
#: Title labels of the figures of the follow-up layer, by study (recipes: docs/method.md
#: section 6 and the authors' scripts dynamics.jl, eig.jl, pcs.jl, mass.jl, energy.jl).
FOLLOWUP_LABELS = {"dynamics": FOLLOWUP_RECIPE_LABEL, "spectrum": FOLLOWUP_RECIPE_LABEL,
                   "rollout": "[follow-up, rollout-link fig.]", "variants": FOLLOWUP_RECIPE_LABEL,
                   "conservation": FOLLOWUP_RECIPE_LABEL}
OURS_LABEL = "[ours]"
QUARTILES = [0.25, 0.5, 0.75]


def _influence_label(obj) -> str:
    norm = obj.attrs.get("normalization", "")
    return {"standard": "standardized influence", "none": "raw influence",
            "cosine": "cosine influence"}.get(norm, f"influence ({norm})" if norm else "influence")


def _title(obj, default: str) -> str:
    variant = obj.attrs.get("variant")
    return f"{default} [{variant}]" if variant else default


def _quiet(reduce, values, **kwargs):
    """A NaN-ignoring numpy reduction; an all-NaN slice gives NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(values, **kwargs)


def _draw_heatmap(ax, heat: xr.DataArray, *, vmin=None, vmax=None, colorbar=True, lag=None):
    values = heat.transpose("t_resp", "t_pert").values
    t_resp, t_pert = heat["t_resp"].values, heat["t_pert"].values
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    colours = {"cmap": st.HEATMAP_CMAP, "vmin": lo, "vmax": hi}
    if lo < 0 < hi and abs(lo) > 0.1 * hi:  # signed data: centre the colours on zero
        colours = {"cmap": st.DIVERGING_CMAP, "norm": TwoSlopeNorm(0.0, lo, hi)}
    image = st.heatmap(ax, values, x=t_pert, y=t_resp, aspect="equal", colorbar=colorbar,
                       label=_influence_label(heat), **colours)
    ax.set(xlabel="perturbation time $t_m$", ylabel="response time $t_n$")
    st.integer_ticks(ax, y=True)
    if lag is not None:
        ts = np.array([t_pert[0], t_pert[-1]], dtype=float)
        extent = image.get_extent()
        ax.plot(ts, ts + lag, color="white", lw=0.8, ls="--")
        ax.set(xlim=extent[:2], ylim=extent[2:])
    return image


def heatmap_figure(heat: xr.DataArray, *, title: str | None = None, vmin=None, vmax=None) -> Figure:
    """Item 1: temporal coherence heatmap, response time vs perturbation time."""
    st.require_dims(heat, ("t_resp", "t_pert"), "heat")
    fig, ax = st.new_figure(size=(3.6, 3.0), title=title or _title(heat, "temporal coherence"))
    _draw_heatmap(ax, heat, vmin=vmin, vmax=vmax)
    return fig


def _draw_horizon(ax, curve: xr.DataArray, *, lag=None):
    for pair in curve["pair"].values:
        st.band(ax, curve["dt"].values, *st.quartiles(curve.sel(pair=pair)), alpha=0.25,
                color=st.PAIR_COLORS.get(str(pair), "grey"), marker="o", ms=2.5, lw=1.2,
                label=f"{pair}-class")
    if lag is not None:
        ax.axvline(lag, color="black", lw=0.8, ls="--")
    st.zero_line(ax)
    ax.set(xlabel=r"$\Delta t = t_n - t_m$", ylabel=_influence_label(curve))
    st.integer_ticks(ax)
    ax.legend(frameon=False)


def horizon_figure(curve: xr.DataArray, *, title: str | None = None, lag: int | None = None
                   ) -> Figure:
    """Item 2: influence vs time lag, medians with quartile bands, intra vs inter class."""
    st.require_dims(curve, ("pair", "quantile", "dt"), "curve")
    fig, ax = st.new_figure(size=(3.8, 2.8), title=title or _title(curve, "temporal decay"))
    _draw_horizon(ax, curve, lag=lag)
    return fig


def _draw_class_matrix(ax, cm: xr.DataArray):
    """Sequential colours for a matrix without negative entries; with any negative entry a
    diverging map on a range symmetric about 0, so that the sign of every cell shows."""
    values = cm.transpose("c_resp", "c_pert").values
    finite = values[np.isfinite(values)]
    signed = bool(finite.size) and finite.min() < 0
    bound = float(np.abs(finite).max()) if signed else None
    middle = 0.5 * (finite.min() + finite.max()) if finite.size else 0.0
    # white on the dark ends: both ends of the diverging map, the low end of magma
    dark = ((lambda i, j: abs(values[i, j]) > 0.6 * bound) if signed
            else (lambda i, j: not values[i, j] > middle))
    colours = ({"cmap": st.DIVERGING_CMAP, "vmin": -bound, "vmax": bound} if signed
               else {"cmap": st.HEATMAP_CMAP})
    image = st.matrix(ax, values, text=lambda i, j: f"{values[i, j]:.2g}", dark=dark,
                      origin="upper", **colours)
    labels_r, labels_p = [str(c) for c in cm["c_resp"].values], [str(c) for c in cm["c_pert"].values]
    ax.set_xticks(range(len(labels_p)), labels_p, rotation=30, ha="right")
    ax.set_yticks(range(len(labels_r)), labels_r)
    ax.set(xlabel="perturbing class", ylabel="response class")
    ax.figure.colorbar(image, ax=ax, shrink=0.85, label=_influence_label(cm))


def class_matrix_figure(cm: xr.DataArray, *, title: str | None = None) -> Figure:
    """Item 3: 3x3 class matrix (response class vs perturbing class)."""
    st.require_dims(cm, ("c_resp", "c_pert"), "cm")
    fig, ax = st.new_figure(size=(3.6, 3.0), title=title or _title(
        cm, f"class coherence (lag {cm.attrs.get('lag', 0)})"))
    _draw_class_matrix(ax, cm)
    return fig


def dynamics_figure(dyn: xr.DataArray, *, title: str | None = None) -> Figure:
    """Item 4: mean diagonal vs off-diagonal influence across checkpoints (log scale)."""
    st.require_dims(dyn, ("part", "quantile", "epoch"), "dyn")
    fig, ax = st.new_figure(size=(3.8, 2.8), title=title or _title(
        dyn, f"{FOLLOWUP_LABELS['dynamics']} training dynamics"))
    for part in dyn["part"].values:
        st.band(ax, dyn["epoch"].values, *st.quartiles(dyn.sel(part=part)), alpha=0.25,
                color=st.PART_COLORS.get(str(part), "grey"), marker="o", ms=3, label=str(part))
    values = dyn.values[np.isfinite(dyn.values)]
    if values.size and values.min() > 0:
        ax.set_yscale("log")
    elif values.size:
        ax.set_yscale("symlog", linthresh=max(1e-12, float(np.min(np.abs(values[values != 0]),
                                                                  initial=1.0))))
    ax.set(xlabel="epoch", ylabel=f"mean {_influence_label(dyn)}")
    st.integer_ticks(ax)
    ax.legend(frameon=False)
    return fig


def spectrum_figure(spec: xr.Dataset, *, title: str | None = None) -> Figure:
    """Item 5: eta_hat eigenvalues (median per mode over seeds x batches) per checkpoint,
    and the condition number vs epoch."""
    st.require_dims(spec, ("seed", "epoch", "batch", "mode"), "spec")
    fig, axes = st.new_figure(1, 2, size=(3.4, 2.8))
    ax, ax_cond = axes[0]
    epochs = spec["epoch"].values
    cmap = matplotlib.colormaps["viridis"]
    for k, epoch in enumerate(epochs):
        eig = spec["eigenvalues"].sel(epoch=epoch).values.reshape(-1, spec.sizes["mode"])
        med = _quiet(np.nanmedian, eig, axis=0)  # modes beyond every rank: NaN
        keep = np.isfinite(med) & (med > 0)
        ax.plot(np.arange(1, keep.sum() + 1), med[keep], color=cmap(k / max(1, len(epochs) - 1)),
                lw=1.2, label=f"epoch {epoch}")
    ax.set(yscale="log", xlabel="mode", ylabel=r"eigenvalue of $\hat\eta$",
           title=title or f"{FOLLOWUP_LABELS['spectrum']} spectrum of the metric")
    ax.legend(frameon=False, fontsize=7)
    cond = spec["condition_number"].transpose("epoch", ...).values.reshape(len(epochs), -1)
    q = _quiet(np.nanquantile, np.where(np.isfinite(cond), cond, np.nan), q=QUARTILES, axis=1)
    st.band(ax_cond, epochs, q[1], q[0], q[2], color=st.OURS_COLOR, marker="o", ms=3)
    ax_cond.set(yscale="log", xlabel="epoch", ylabel="condition number",
                title=f"{FOLLOWUP_LABELS['spectrum']} anisotropy")
    st.integer_ticks(ax_cond)
    return fig


def similarity_figure(sim: xr.Dataset, *, title: str | None = None) -> Figure:
    """Item 6: influence vs scaled input distance (log-spaced overlapping bins)."""
    st.require_dims(sim, ("bin",), "sim")
    rho = sim.attrs.get("spearman_rho")
    fig, ax = st.new_figure(size=(3.8, 2.8), title="")
    ok = sim["count"].values > 0
    st.band(ax, *(sim[v].values[ok] for v in ("center", "median", "q25", "q75")),
            color=st.OURS_COLOR, marker="o", ms=3)
    st.zero_line(ax)
    ax.set(xscale="log", xlabel="scaled input distance", ylabel=_influence_label(sim),
           title=(title or _title(sim, "influence vs similarity"))
           + (f" (Spearman {rho:.2f})" if rho is not None else ""))
    return fig


def _ci_band(ax, x, ci: xr.DataArray, *, color, label, **line):
    """An estimate line with its interval band; `ci` has a `ci` dim (estimate, low, high)."""
    return st.band(ax, x, *st.ci_parts(ci), color=color, label=label, marker="o", ms=3, **line)


def _correlation_axes(ax, ylabel: str, title: str) -> None:
    st.zero_line(ax)
    ax.set(ylim=(-1.05, 1.05), xlabel=r"rollout horizon $\Delta t$", ylabel=ylabel, title=title)


def rollout_link_figure(link: xr.Dataset, *, paper: dict | pd.Series | None = None,
                        stats: xr.Dataset | None = None, title: str | None = None,
                        scatter_dt: int = 1) -> Figure:
    """Item 7, the follow-up's rollout link: (a) Pearson r(R, cumulative rollout SMSE) vs dt,
    ours (with 95% band and Spearman when `stats` is given) beside the published `{dt: r}`;
    (b) [ours] the link within classes (`stats` only); (c) rollout error vs R at `scatter_dt`.
    `link`: `coherence.rollout_link`; `stats`: `rollout_stats.rollout_link_statistics` or None."""
    st.require_dims(link, ("dt",), "link")
    fig, axes = st.new_figure(1, 3, size=(3.3, 2.8))
    ax, ax_in, ax_sc = axes[0]
    dts = link["dt"].values
    if stats is not None:
        sdt = stats["dt"].values
        _ci_band(ax, sdt, stats["pearson"], color=st.OURS_COLOR, label="ours: Pearson")
        ax.plot(sdt, stats["spearman"].sel(ci="estimate").values, color="grey", ls=":",
                marker="s", ms=2.5, label="ours: Spearman")
    ax.plot(dts, link["correlation"].values, color=st.OURS_COLOR, marker="o", ms=3,
            ls="none" if stats is not None else "-", label="ours")
    if paper is not None:
        ax.plot(*zip(*sorted(dict(paper).items())), ls="--", marker="D", ms=3.5,
                color=st.PAPER_COLOR, label="follow-up (published)")
    _correlation_axes(ax, "correlation of R with rollout SMSE",
                      title or f"{FOLLOWUP_LABELS['rollout']} coherence vs rollout error")
    ax.legend(frameon=False, fontsize=7)
    _correlation_axes(ax_in, "Pearson r within classes", f"{OURS_LABEL} within-class link")
    if stats is not None:
        _ci_band(ax_in, sdt, stats["within_class_pooled"], color=st.OURS_COLOR,
                 label="class means removed")
        for k, cls in enumerate(stats["class"].values):
            ax_in.plot(sdt, stats["within_class"].sel({"class": cls, "ci": "estimate"}).values,
                       color=st.class_color(k), lw=1, label=str(cls))
        ax_in.legend(frameon=False, fontsize=6)
    else:
        ax_in.set_xlim(dts[0] - 0.5, dts[-1] + 0.5)
        ax_in.text(0.5, 0.5, "too few seeds x batches\nfor intervals", ha="center",
                   va="center", transform=ax_in.transAxes, fontsize=8)
    if scatter_dt in dts:
        for k, cls in enumerate(link["class"].values):
            ax_sc.scatter(link["ratio"].sel({"class": cls}).values.ravel(),
                          link["rollout_error"].sel({"class": cls, "dt": scatter_dt}).values.ravel(),
                          s=12, color=st.class_color(k), label=str(cls))
        ax_sc.set_yscale("log")
        ax_sc.legend(frameon=False, fontsize=7)
    norm = link.attrs.get("normalization", "none")
    ax_sc.set(xlabel="R = off-diagonal / diagonal" + (" (raw)" if norm == "none" else f" ({norm})"),
              ylabel=f"cumulative SMSE, $\\Delta t$={scatter_dt}", title=FOLLOWUP_LABELS["rollout"])
    return fig


def dynamics_intervals_figure(ci: xr.DataArray, *, title: str | None = None) -> Figure:
    """[ours] The follow-up's dynamics as means over seeds x batches with 95% t-interval bands
    over seeds (`pdeinf.analysis.followup.dynamics_intervals`): diagonal and off-diagonal (log
    scale where positive) and their ratio."""
    st.require_dims(ci, ("ci", "quantity", "epoch"), "ci")
    fig, axes = st.new_figure(1, 2, size=(3.4, 2.8))
    ax, ax_r = axes[0]
    epochs = ci["epoch"].values
    for part in ("diagonal", "off-diagonal"):
        _ci_band(ax, epochs, ci.sel(quantity=part), color=st.PART_COLORS[part], label=part)
    values = ci.sel(quantity=["diagonal", "off-diagonal"]).values
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=f"mean {_influence_label(ci)}",
           title=title or f"{OURS_LABEL} dynamics, 95% intervals")
    ax.legend(frameon=False, fontsize=7)
    _ci_band(ax_r, epochs, ci.sel(quantity="ratio"), color=st.OURS_COLOR, label="ratio")
    st.zero_line(ax_r)
    ax_r.set(xlabel="epoch", ylabel="mean off-diagonal / mean diagonal",
             title=f"{OURS_LABEL} off/diagonal ratio")
    st.integer_ticks(ax, ax_r)
    return fig


def variant_heatmaps_figure(maps: xr.DataArray, *, title: str | None = None,
                            shared_scale: bool = True) -> Figure:
    """Items 8-9: temporal heatmaps side by side, one per variant (metric or bra), on one colour
    range with one colour bar (`shared_scale=False`: each panel its own)."""
    st.require_dims(maps, ("variant", "t_resp", "t_pert"), "maps")
    names = [str(v) for v in maps["variant"].values]
    fig, axes = st.new_figure(1, len(names), size=(3.3, 2.9))
    lo, hi = st.shared_range([maps.values]) if shared_scale else (None, None)
    images = [_draw_heatmap(ax, maps.sel(variant=name), vmin=lo, vmax=hi, colorbar=not shared_scale)
              for ax, name in zip(axes[0], names)]
    for ax, name in zip(axes[0], names):
        ax.set_title(name)
    if shared_scale and images:
        fig.colorbar(images[0], ax=list(axes[0]), shrink=0.85, label=_influence_label(maps))
    if title:
        fig.suptitle(title)
    return fig


def conservation_figure(maps: xr.DataArray, *,
                        title: str = f"{FOLLOWUP_LABELS['conservation']} conservation bras"
                        ) -> Figure:
    """Item 8: heatmaps with the mass / energy drift bras (a `variant_heatmaps_figure`)."""
    return variant_heatmaps_figure(maps, title=title)


def snapshots_figure(samples: dict, *, times=(0, 4, 8, 16), channel: int = 0,
                     channel_name: str | None = None, title: str | None = None) -> Figure:
    """Data snapshots: one row per class, one column per time. `samples[class]` is one
    trajectory `[T, C, H, W]` (numpy); `channel` picks the field shown."""
    if not samples:
        raise InputError("samples: at least one class is needed")
    fig, axes = st.new_figure(len(samples), len(times), size=(1.7, 1.7))
    for i, (name, traj) in enumerate(samples.items()):
        traj = np.asarray(traj)
        if traj.ndim != 4:
            raise InputError(f"samples[{name!r}]: expected [T, C, H, W], got {traj.shape}")
        if max(times) >= traj.shape[0] or channel >= traj.shape[1]:
            raise InputError(f"samples[{name!r}]: times {times} / channel {channel} out of range")
        field = traj[list(times), channel]
        for j, t in enumerate(times):
            st.heatmap(axes[i, j], traj[t, channel], colorbar=False, cmap="viridis",
                       vmin=float(field.min()), vmax=float(field.max()))
            axes[i, j].set(xticks=[], yticks=[], title=f"t = {t}" if i == 0 else "",
                           ylabel=str(name) if j == 0 else "")
    if title or channel_name:
        fig.suptitle(title or f"snapshots: {channel_name}")
    return fig


def loss_curves_figure(histories: dict, *, title: str = "training") -> Figure:
    """Loss curves: `histories[label]` is a DataFrame with columns seed, epoch, train_loss,
    val_loss (pdeinf.pipeline.training_history); one colour per label, line style per split."""
    if not histories:
        raise InputError("histories: at least one training history is needed")
    fig, ax = st.new_figure(size=(4.2, 3.0), title=title)
    for k, (label, frame) in enumerate(histories.items()):
        missing = {"seed", "epoch", "train_loss", "val_loss"} - set(frame.columns)
        if missing:
            raise InputError(f"histories[{label!r}]: missing columns {sorted(missing)}")
        color = st.class_color(k) if len(histories) > 1 else st.OURS_COLOR
        for split, ls in (("train_loss", "-"), ("val_loss", "--")):
            per_epoch = frame.groupby("epoch")[split]
            med = per_epoch.median()
            st.band(ax, med.index, med.values, per_epoch.min(), per_epoch.max(), color=color,
                    alpha=0.15, ls=ls, label=f"{label} {split.split('_')[0]}")
    ax.set(yscale="log", xlabel="epoch", ylabel="SMSE")
    ax.legend(frameon=False, fontsize=7)
    return fig


def rollout_error_figure(rollouts: dict, *, title: str = "rollout error") -> Figure:
    """Per-step rollout SMSE vs horizon per class: `rollouts[label]` is the pipeline's
    DataArray (seed, class, trajectory, start, horizon); median and quartiles over seeds x
    trajectories x starts. One panel per label (e.g. model)."""
    if not rollouts:
        raise InputError("rollouts: at least one rollout array is needed")
    fig, axes = st.new_figure(1, len(rollouts), size=(3.4, 2.8))
    for ax, (label, da) in zip(axes[0], rollouts.items()):
        st.require_dims(da, ("seed", "class", "trajectory", "start", "horizon"),
                        f"rollouts[{label!r}]")
        horizon = np.arange(1, da.sizes["horizon"] + 1)
        for k, cls in enumerate(da["class"].values):
            values = da.sel({"class": cls}).transpose("horizon", ...).values
            q = _quiet(np.nanquantile, values.reshape(values.shape[0], -1), q=QUARTILES, axis=1)
            st.band(ax, horizon, q[1], q[0], q[2], color=st.class_color(k), label=str(cls))
        ax.set(yscale="log", xlabel="rollout step", ylabel="per-step SMSE",
               title=f"{title}: {label}")
        ax.legend(frameon=False, fontsize=7)
    return fig


def explorer_figure(curve: xr.DataArray, heat: xr.DataArray, cm: xr.DataArray, *, lag: int,
                    title: str = "") -> Figure:
    """The explorer's panel: decay curves with the lag marked, the heatmap with the lag's
    diagonal drawn, and the class matrix at that lag."""
    fig, axes = st.new_figure(1, 3, size=(3.3, 2.9))
    _draw_horizon(axes[0, 0], curve, lag=lag)
    _draw_heatmap(axes[0, 1], heat, lag=lag)
    _draw_class_matrix(axes[0, 2], cm)
    for ax, name in zip(axes[0], ("decay", "temporal coherence", f"classes at lag {lag}")):
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    return fig
