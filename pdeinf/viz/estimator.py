"""Figures of the estimator study (notebook 12), one function per question, all [ours].
Inputs are the tables of `pdeinf.analysis.estimator` (xarray / dicts)."""
from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from pdeinf.analysis.estimator import FINDINGS, ROUND_OFF, standardize
from pdeinf.errors import InputError
from pdeinf.viz import style as st

TAG = "[ours]"
LABELS = {"offdiagonal_mass": "off-diagonal mass", "lag1_gap": "lag-1 intra - inter (median)",
          "temporal_decay": "decay |dt|=1 - |dt|>=3", "class_locked": "class diag - off-diag"}


def _finding_axes(ax, f: str, xlabel: str) -> None:
    ax.set_xscale("log")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel(xlabel)
    ax.set_title(LABELS[f], fontsize=7)


def fullspace_sweep_figure(table: xr.Dataset, *, reference_lambda: float, paper_rtol: float,
                           title: str = "") -> Figure:
    """Question 1: each finding of the full-space estimator against lambda (at the paper's
    rtol, top row) and against the Krylov tolerance (at the reference lambda, bottom row). A
    filled marker converged, a hollow one hit maxiter; each point is annotated with its
    largest iteration (sweep) count and largest final relative residual."""
    if "findings" not in table or "lambda" not in table:
        raise InputError("table: expected `pdeinf.analysis.estimator.fullspace_table` output")
    fig, axes = st.new_figure(2, len(FINDINGS), size=(3.0, 2.6))
    rows = ((table["rtol"].values == paper_rtol, "lambda", f"lambda (rtol {paper_rtol:g})"),
            (np.isclose(table["lambda"].values, reference_lambda), "rtol",
             f"Krylov rtol (lambda {reference_lambda:g})"))
    for r, (mask, xvar, xlabel) in enumerate(rows):
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(table[xvar].values[idx])]
        for k, f in enumerate(FINDINGS):
            ax = axes[r, k]
            xs, ys = table[xvar].values[idx], table["findings"].sel(finding=f).values[idx]
            ax.plot(xs, ys, color="0.6", lw=0.8)
            for i, x, y in zip(idx, xs, ys):
                conv = bool(table["converged"].values[i])
                ax.plot([x], [y], marker="o", ms=6, color=st.OURS_COLOR, ls="none",
                        mfc=st.OURS_COLOR if conv else "none")
                note = (f"it {int(table['iterations_max'].values[i])}\n"
                        f"res {float(table['residual_max'].values[i]):.1e}" + ("" if conv else "\nmaxiter"))
                ax.annotate(note, (x, y), fontsize=5.5, xytext=(3, 3), textcoords="offset points")
            if f != "offdiagonal_mass":
                ax.axhline(0, color="0.8", lw=0.6)
            _finding_axes(ax, f, xlabel)
    axes[0, 0].plot([], [], "o", color=st.OURS_COLOR, label="converged")
    axes[0, 0].plot([], [], "o", mfc="none", color=st.OURS_COLOR, label="hit maxiter")
    axes[0, 0].legend(frameon=False, fontsize=6)
    fig.suptitle(f"{title} full-space estimator vs lambda and Krylov tolerance {TAG}".strip())
    return fig


def _as_drawn(values) -> np.ndarray:
    """Values at least `ROUND_OFF`, to 4 significant digits (NaN stays NaN)."""
    floored = np.maximum(np.asarray(values, dtype=np.float64), ROUND_OFF)
    return np.vectorize(lambda v: float(f"{v:.4g}"))(floored)


def limit_figure(limits: dict, pm_rows: list[dict] | None = None) -> Figure:
    """Question 2: the lambda -> 0 limit on tiny float64 models. Per case: max |Pi_out - I| and
    max |Pi_out - projection onto range(J)| (dense), the off-diagonal mass of H from the dense
    J and from the Krylov solver, the mass of the projection limit (dashed). Last panel: P/M
    of the profile's models and of the paper's (docs/method.md section 4), against P/M = 1.
    Values below `ROUND_OFF` are float64 round-off, drawn on the shaded floor at `ROUND_OFF`,
    and every value is drawn to 4 significant digits (a mark on these axes resolves about 10 %),
    so digits that depend on the thread count and the BLAS never move a pixel."""
    fig, axes = st.new_figure(1, len(limits) + (1 if pm_rows else 0), size=(3.4, 2.9))
    for ax, (case, ds) in zip(axes[0], limits.items()):
        lam = ds["lambda"].values
        drawn = {name: _as_drawn(ds[name].values) for name in ds.data_vars}
        ax.plot(lam, drawn["distance_identity"], "s-", color="#0072B2", label="max|Pi_out - I|")
        ax.plot(lam, drawn["distance_projection"], "^-", color="#009E73", label="max|Pi_out - proj|")
        ax.plot(lam, drawn["mass_dense"], "o-", color=st.OURS_COLOR, label="mass H (dense)")
        ax.plot(lam, drawn["mass_krylov"], "x", ms=9, mew=1.5, color="#D55E00", label="mass H (Krylov)")
        ax.axhline(drawn["mass_limit"], ls="--", color="0.5", lw=0.8, label="mass of limit")
        ax.axhspan(ROUND_OFF / 10, ROUND_OFF, color="0.92", lw=0, label=f"round-off (<{ROUND_OFF:.0e})")
        ax.set(xscale="log", yscale="log", xlabel="lambda", ylim=(ROUND_OFF / 10, None),
               title=f"{case}: P={ds.attrs['P']}, M={ds.attrs['M']}, rank J={ds.attrs['rank_J']}")
        ax.invert_xaxis()
        ax.legend(frameon=False, fontsize=6)
    if pm_rows:
        ax = axes[0, -1]
        y = np.arange(len(pm_rows))
        ax.barh(y + 0.2, [r["P/M_batch"] for r in pm_rows], 0.2, color=st.OURS_COLOR,
                label="ours, N=48 batch")
        ax.barh(y, [r["P/M_subset"] for r in pm_rows], 0.2, color="0.6", label="ours, study subset")
        lo, hi = np.array([[float(v) for v in r["paper_P/M"].split("-")[:2]] for r in pm_rows]).T
        ax.barh(y - 0.2, np.subtract(hi, lo), 0.2, left=lo, color=st.PAPER_COLOR, label="seed paper")
        ax.axvline(1.0, color="k", ls="--", lw=0.8)
        ax.set_yticks(y, [f"{r['pde']}-{r['model']}" for r in pm_rows])
        ax.set(xscale="log", xlabel="P / M", title="which side of P = M")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels 1, 2, 5 per decade: none overlap
        ax.legend(frameon=False, fontsize=6)
    fig.suptitle(f"lambda -> 0: identity (P > M) vs projection onto range(J) (P < M) {TAG}")
    return fig


def subspace_sensitivity_figure(sub: xr.Dataset, *, energy_tol: float, damping: float,
                                title: str = "") -> Figure:
    """Question 3: each finding of the subspace estimator against its energy tolerance (top,
    at `damping`) and damping (bottom, at `energy_tol`): one thin line per seed, the seed mean
    thick; the follow-up's defaults marked."""
    fig, axes = st.new_figure(2, len(FINDINGS), size=(3.0, 2.5))
    for r, (var, dim, default) in enumerate((("by_energy", "energy_tol", energy_tol),
                                             ("by_damping", "damping", damping))):
        da = sub[var]
        for k, f in enumerate(FINDINGS):
            ax, x = axes[r, k], da[dim].values
            for s in da["seed"].values:
                ax.plot(x, da.sel(seed=s, finding=f), color="0.6", lw=0.7, marker=".")
            ax.plot(x, da.sel(finding=f).mean("seed"), color=st.OURS_COLOR, lw=1.6, marker="o",
                    label="seed mean")
            st.paper_line(ax, default, "follow-up default", vertical=True, lw=0.8)
            _finding_axes(ax, f, dim)
    axes[0, 0].legend(frameon=False, fontsize=6)
    fig.suptitle(f"{title} subspace estimator: energy tolerance and damping {TAG}".strip())
    return fig


def side_by_side_figure(fs_pi, sub_pi, sbs: dict, ablations: dict, *, title: str = "") -> Figure:
    """Question 4: (a) standardized off-diagonal entries, full-space vs subspace, same batch;
    (b) each finding under both estimators (SMSE bra, and mass bra where present); (c) the
    change of each finding under each estimator convention (95% interval over seeds) beside
    the seed spread of the baseline (grey band, +-1 std)."""
    fig, axes = st.new_figure(1, 3, size=(3.6, 3.1))
    ax, ax_b, ax_c = axes[0]
    a, b = standardize(fs_pi), standardize(sub_pi)
    off = ~np.eye(a.shape[0], dtype=bool)
    ax.scatter(a[off], b[off], s=6, color=st.OURS_COLOR, alpha=0.6)
    e = sbs["smse"]["entries"]
    ax.set(xlabel="full-space Ĥ (lambda 1e-4, paper rtol)", ylabel="subspace Ĥ (follow-up defaults)")
    ax.set_title(f"(a) off-diagonal entries: Pearson {e['pearson_offdiagonal']:.2f}, "
                 f"Spearman {e['spearman_offdiagonal']:.2f}", fontsize=7)
    x = np.arange(len(FINDINGS))
    width = 0.8 / (2 * len(sbs))
    for j, (bra, rec) in enumerate(sbs.items()):
        t = rec["table"]
        for i, (col, color) in enumerate(zip(list(t.columns[:2]), (st.OURS_COLOR, "0.6"))):
            ax_b.bar(x + (2 * j + i - len(sbs) + 0.5) * width, t[col].values, width, color=color,
                     hatch="//" if j else None, edgecolor="w" if j else color,
                     label=f"{col}, {bra} bra")
    ax_b.axhline(0, color="k", lw=0.6)
    ax_b.set_xticks(x, [LABELS[f] for f in FINDINGS], rotation=30, ha="right", fontsize=6)
    ax_b.legend(frameon=False, fontsize=6)
    ax_b.set_title("(b) findings, same batch", fontsize=8)
    for j, (name, abl) in enumerate(ablations.items()):
        ch, spread_all = abl["change"], abl["seed_spread"]
        for i, f in enumerate([str(f) for f in ch["finding"].values] if "finding" in ch.dims else [name]):
            one = ch.sel(finding=f) if "finding" in ch.dims else ch
            ypos = j * (len(FINDINGS) + 1) + i
            spread = float(spread_all.sel(finding=f) if "finding" in spread_all.dims else spread_all)
            if np.isfinite(spread):
                ax_c.fill_betweenx([ypos - 0.4, ypos + 0.4], -spread, spread, color="0.85")
            st.interval(ax_c, ypos, *(float(v) for v in st.ci_parts(one)), horizontal=True,
                        marker="o", ms=4, color=st.class_color(j))
            ax_c.annotate(f"{name}: {LABELS.get(f, f)}", (0, ypos), fontsize=5.5, xytext=(2, 4),
                          textcoords="offset points")
    ax_c.axvline(0, color="k", lw=0.6)
    ax_c.set_yticks([])
    ax_c.set_xlabel("change of the number (convention - baseline)")
    ax_c.set_title("(c) estimator conventions vs seed spread (grey)", fontsize=8)
    fig.suptitle(f"{title} full-space vs subspace on the same batch {TAG}".strip())
    return fig
