"""Figures draw exactly the analysis numbers they are given; report writes complete files."""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.figure import Figure
from test_analysis import make_rollouts, make_sweep

from pdeinf.analysis import coherence as co
from pdeinf.errors import InputError
from pdeinf.pipeline import report
from pdeinf.viz import figures as vf


@pytest.fixture(scope="module")
def sweep():
    return make_sweep(noise=0.8, inter=0.3, rng_seed=3)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    return tmp_path


def test_heatmap_figure_shows_the_heatmap_values(sweep):
    heat = co.temporal_heatmap(sweep)
    fig = vf.heatmap_figure(heat)
    assert isinstance(fig, Figure)
    image = fig.axes[0].images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), heat.values)
    assert "standardized" in fig.axes[1].get_ylabel()  # the colour bar names the normalisation


def test_horizon_figure_plots_medians_and_marks_lag(sweep):
    curve = co.horizon_curve(sweep)
    fig = vf.horizon_figure(curve, lag=3)
    lines = fig.axes[0].get_lines()
    medians = {line.get_label(): line.get_ydata() for line in lines if "class" in line.get_label()}
    np.testing.assert_allclose(medians["intra-class"], curve.sel(pair="intra", quantile=0.5))
    np.testing.assert_allclose(medians["inter-class"], curve.sel(pair="inter", quantile=0.5))
    assert any(np.all(np.asarray(line.get_xdata()) == 3) for line in lines)  # the lag marker


def test_class_matrix_figure_annotates_every_entry(sweep):
    cm = co.class_matrix(sweep)
    fig = vf.class_matrix_figure(cm)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [f"{v:.2g}" for v in cm.values.ravel()]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(cm["c_resp"].values)


def test_rollout_link_figure_draws_all_published_values_and_intervals(sweep):
    from pdeinf.analysis import followup as fu

    ratio = co.rollout_ratio(sweep).values
    rollouts = make_rollouts(sweep, ratio)
    rollouts = rollouts + 0.01 * xr.DataArray(
        np.random.default_rng(1).standard_normal(rollouts.shape), dims=rollouts.dims)
    link = co.rollout_link(sweep, rollouts)
    stats, why = fu.rollout_statistics(link, n_permutations=20)
    assert why == ""
    paper = co.paper_rollout_correlation("CE", "vit")
    fig = vf.rollout_link_figure(link, paper=paper, stats=stats)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    published = lines["follow-up (published)"]
    np.testing.assert_array_equal(published.get_xdata(), np.arange(1, 17))
    np.testing.assert_array_equal(published.get_ydata(), paper.values)
    np.testing.assert_allclose(lines["ours"].get_ydata(), link["correlation"].values)
    np.testing.assert_allclose(lines["ours: Pearson"].get_ydata(),
                               stats["pearson"].sel(ci="estimate").values)
    assert fig.axes[0].get_title().startswith("[follow-up")
    assert fig.axes[1].get_title().startswith("[ours]")
    within = {line.get_label(): line for line in fig.axes[1].get_lines()}
    np.testing.assert_allclose(within["class means removed"].get_ydata(),
                               stats["within_class_pooled"].sel(ci="estimate").values)
    # without intervals (a design too small for them) the figure still draws ours and theirs
    small = vf.rollout_link_figure(link, paper=paper, stats=None)
    assert {"ours", "follow-up (published)"} <= {
        line.get_label() for line in small.axes[0].get_lines()}


def test_dynamics_figures_are_labelled_and_draw_the_estimates(sweep):
    from pdeinf.analysis import followup as fu

    ci = fu.dynamics_intervals(sweep)
    fig = vf.dynamics_intervals_figure(ci)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["diagonal"].get_ydata(),
                               ci.sel(quantity="diagonal", ci="estimate").values)
    assert fig.axes[0].get_title().startswith("[ours]")


def test_follow_up_layer_titles_do_not_claim_figures_the_follow_up_lacks(sweep):
    # the follow-up's figures are its symmetry figures: the dynamics, spectrum, metric-variant
    # and conservation-bra figures (files 08_*, 10_*) are ours on its recipe
    recipe = "[ours; follow-up recipe]"
    maps = co.variant_heatmaps(sweep)
    titles = [vf.dynamics_figure(co.dynamics(sweep)).axes[0].get_title(),
              *(ax.get_title() for ax in vf.spectrum_figure(co.spectrum(sweep)).axes[:2]),
              vf.conservation_figure(maps)._suptitle.get_text()]
    # as notebooks 08 and 10 build their titles
    for key in ("dynamics", "spectrum", "variants", "conservation"):
        fig = vf.variant_heatmaps_figure(maps, title=f"{vf.FOLLOWUP_LABELS[key]} CE unet: metrics")
        titles.append(fig._suptitle.get_text())
    for title in titles:
        assert title.startswith(recipe), title
        assert "[follow-up," not in title, title


def _images(fig):
    return [image for ax in fig.axes for image in ax.images]


def _one_colorbar(fig, n_panels):
    assert len(fig.axes) == n_panels + 1  # the panels and a single colour bar
    assert hasattr(fig.axes[-1], "_colorbar")


def test_variant_heatmaps_share_one_colour_range_and_one_colour_bar(sweep):
    maps = co.variant_heatmaps(sweep)
    maps = maps.copy(data=maps.values * np.array([1.0, 10.0])[:, None, None])  # unlike ranges
    maps[0, 0, 0] = np.nan
    maps[1, 0, 0] = np.inf
    finite = maps.values[np.isfinite(maps.values)]
    for fig in (vf.variant_heatmaps_figure(maps, title="metrics"), vf.conservation_figure(maps)):
        images = _images(fig)
        assert len(images) == maps.sizes["variant"]
        for image in images:
            assert (image.norm.vmin, image.norm.vmax) == (finite.min(), finite.max())
        assert len({image.get_cmap().name for image in images}) == 1
        _one_colorbar(fig, len(images))
    # per-panel ranges stay available on request
    own = vf.variant_heatmaps_figure(maps, shared_scale=False)
    assert len({image.norm.vmax for image in _images(own)}) == 2


def test_class_matrix_with_negative_cells_is_centred_on_zero(sweep):
    # any negative cell switches to a diverging map symmetric about 0
    cm = co.class_matrix(sweep)
    cm = cm - float(cm.mean())
    image = vf.class_matrix_figure(cm).axes[0].images[0]
    assert image.get_cmap().name == vf.st.DIVERGING_CMAP
    assert image.norm.vmin == -image.norm.vmax == -float(np.abs(cm.values).max())
    assert image.norm(0.0) == 0.5


def test_seed_paper_class_matrix_draws_negative_cells_apart_from_zero(hn_classes):
    # the paper's colour range 0..2.5 stays; a negative cell gets the under-colour and a hatch
    from matplotlib.colors import to_rgba

    from pdeinf.viz import seed_paper as vs

    fig = vs.class_matrix_figure(hn_classes, pde="CE", model="vit")
    ax = fig.axes[0]
    image = ax.images[0]
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 2.5)
    cmap = image.get_cmap()
    assert cmap(image.norm(-0.2)) == to_rgba(vf.st.NEGATIVE_COLOR)
    assert cmap(image.norm(-0.2)) != cmap(image.norm(0.0))
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert [(p.get_x() + 0.5, p.get_y() + 0.5) for p in hatched] == [(2.0, 1.0)]  # the cell (1, 2)
    assert fig.axes[1]._colorbar.extend == "min"
    assert "negative" in fig._supxlabel.get_text()


@pytest.fixture()
def hn_classes():
    classes = ["CE-RP", "CE-CRP", "CE-RPUI"]
    values = np.array([[1.3, 0.1, 0.05], [0.0, 1.0, -0.3], [0.1, 0.2, 1.7]])
    return xr.DataArray(values, dims=("c_resp", "c_pert"),
                        coords={"c_resp": classes, "c_pert": classes})


D4 = ("e", "r", "r2", "r3", "s", "sr", "sr2", "sr3")


def _symmetry_study(rng_seed, scale=1.0, n_seeds=3, n_batches=2, n=6):
    rng = np.random.default_rng(rng_seed)
    labels = [*D4, "shift(1,0)"]
    k = np.arange(len(labels), dtype=float)[None, None, :, None]
    shape = (n_seeds, n_batches, len(labels), n)
    shifts = [0, 2, 4, 6]
    return xr.Dataset(
        {"equivariance": (("seed", "batch", "element", "example"),
                          10 ** (k / 4) * np.exp(0.05 * rng.standard_normal(shape))),
         "orbit_diagonal": (("seed", "batch", "element", "example"),
                            5.0 - 0.5 * k + 0.1 * rng.standard_normal(shape)),
         "shift_landscape": (("seed", "batch", "shift_y", "shift_x"),
                             scale * rng.uniform(1.0, 1.1, (n_seeds, n_batches, 4, 4)))},
        coords={"seed": np.arange(n_seeds) + 10, "batch": np.arange(n_batches),
                "element": labels, "example": np.arange(n), "d4": list(D4),
                "shift_y": shifts, "shift_x": shifts})


@pytest.fixture(scope="module")
def studies():
    return {("NS", "unet"): _symmetry_study(0), ("NS", "vit"): _symmetry_study(1, scale=30.0),
            ("CE", "unet"): _symmetry_study(2, scale=3.0)}


def _drawn(fig):
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. constrained layout giving up
        canvas.draw()
    return canvas.get_renderer()


def test_d4_figures_put_one_legend_outside_the_panels(studies):
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from pdeinf.viz import symmetry as vsym

    for fig in (vsym.d4_equivariance_figure(studies), vsym.d4_orbit_figure(studies)):
        renderer = _drawn(fig)
        assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
        assert all(ax.get_legend() is None for ax in fig.axes)
        assert len(fig.legends) == 1
        box = fig.legends[0].get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
            assert not box.overlaps(ax.get_tightbbox(renderer))  # tick labels and axis labels too
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert {"[ours] UNet", "[ours] ViT"} <= set(labels) and len(labels) == len(set(labels))
    labels = [t.get_text() for t in vsym.d4_equivariance_figure(studies).legends[0].get_texts()]
    assert {"[follow-up] NS up to ~1e4", "[follow-up] CE within ~25%"} <= set(labels)


def test_shift_landscape_panels_share_one_colour_range(studies):
    from pdeinf.viz import symmetry as vsym

    fig = vsym.shift_landscape_figure(studies)
    logs = [np.log10(ds["shift_landscape"].median(("seed", "batch")).values)
            for ds in studies.values()]
    lo, hi = min(v.min() for v in logs), max(v.max() for v in logs)
    images = _images(fig)
    assert len(images) == len(studies)
    for image in images:
        assert image.norm.vmin == pytest.approx(lo) and image.norm.vmax == pytest.approx(hi)
    _one_colorbar(fig, len(studies))
    _drawn(fig)


def test_every_figure_renders(sweep, home):
    heat_maps = co.variant_heatmaps(sweep)
    rollouts = make_rollouts(sweep, np.ones((2, 3, 3)) * 0.5)
    rollouts = rollouts + xr.DataArray(np.arange(1, 17), dims="horizon", coords={"horizon": rollouts["horizon"]})
    history = pd.DataFrame({"seed": [10, 10, 35, 35], "epoch": [1, 2, 1, 2],
                            "train_loss": [1.0, 0.5, 1.2, 0.6], "val_loss": [1.1, 0.7, 1.3, 0.8]})
    traj = np.random.default_rng(0).standard_normal((17, 4, 8, 8))
    figs = {
        "dynamics": vf.dynamics_figure(co.dynamics(sweep)),
        "spectrum": vf.spectrum_figure(co.spectrum(sweep)),
        "similarity": vf.similarity_figure(co.similarity(sweep)),
        "variants": vf.variant_heatmaps_figure(heat_maps, shared_scale=True),
        "conservation": vf.conservation_figure(heat_maps),
        "snapshots": vf.snapshots_figure({"CE-RP": traj, "CE-CRP": traj}, channel=0),
        "losses": vf.loss_curves_figure({"unet": history, "vit": history}),
        "rollout": vf.rollout_error_figure({"unet": rollouts}),
        "explorer": vf.explorer_figure(co.horizon_curve(sweep), co.temporal_heatmap(sweep),
                                       co.class_matrix(sweep, lag=2), lag=2),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure), name
        written = report.save_figure(fig, f"test_{name}")
        assert [p.suffix for p in written] == [".png", ".pdf"]
        assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert written[1].read_bytes()[:5] == b"%PDF-"
    leftovers = [p.name for p in (home / "figures").iterdir() if ".tmp" in p.name]
    assert leftovers == []
    # the spectrum panel draws the median eigenvalue per mode: the planted rank-5..8 spectra
    spec_lines = figs["spectrum"].axes[0].get_lines()
    assert all(np.all(np.diff(line.get_ydata()) <= 0) for line in spec_lines)


def test_figures_reject_wrong_input():
    with pytest.raises(InputError, match="heat"):
        vf.heatmap_figure(xr.DataArray(np.zeros((3, 3)), dims=("a", "b")))
    with pytest.raises(InputError, match="samples"):
        vf.snapshots_figure({"CE-RP": np.zeros((3, 8, 8))})
    with pytest.raises(InputError, match="histories"):
        vf.loss_curves_figure({"unet": pd.DataFrame({"epoch": [1]})})


def test_write_results_is_json_safe_and_tabulated(home):
    path = report.write_results("03_temporal_coherence", {
        "ratio": np.float64(1.5), "missing": math.nan, "inf": np.inf, "flag": np.bool_(True),
        "count": np.int64(7), "curve": np.array([1.0, np.nan]),
        "paper": {("CE", "vit"): {1: -0.65}},
    })
    data = json.loads(path.read_text())
    assert data["missing"] is None and data["inf"] is None
    assert data["curve"] == [1.0, None]
    assert data["flag"] is True and data["count"] == 7
    assert data["paper"] == {"CE/vit": {"1": -0.65}}
    report.write_results("04_class_coherence", {"diag": 2.0})
    table = report.results_table()
    assert set(table["notebook"]) == {"03_temporal_coherence", "04_class_coherence"}
    row = table[(table["notebook"] == "03_temporal_coherence") & (table["key"] == "paper.CE/vit.1")]
    assert float(row["value"].iloc[0]) == -0.65
    assert report.read_results("04_class_coherence") == {"diag": 2.0}
    assert [p.name for p in (home / "results").iterdir() if ".tmp" in p.name] == []


def test_a_set_figure_folder_keeps_committed_figures_untouched(home, tmp_path, monkeypatch):
    """With `$PDEINF_FIGURE_DIR` set (as `make check-notebooks` sets it), figures of the committed
    profile go there and nothing is written into figures/."""
    scratch = tmp_path / "scratch"
    monkeypatch.setenv(report.FIGURE_DIR_VARIABLE, str(scratch))
    written = report.save_figure(Figure(), "check", profile="faithful")
    assert written == [scratch / "check.png", scratch / "check.pdf"]
    assert all(p.is_file() for p in written) and not (home / "figures").exists()
    monkeypatch.setenv(report.FIGURE_DIR_VARIABLE, "scratch/relative")
    assert report.save_figure(Figure(), "check", formats=("png",)) == [home / "scratch/relative/check.png"]
    monkeypatch.setenv(report.FIGURE_DIR_VARIABLE, str(written[0]))  # a file, not a folder
    with pytest.raises(InputError, match=f"check.png: not a folder .*{report.FIGURE_DIR_VARIABLE}"):
        report.save_figure(Figure(), "other")
    assert sorted(p.name for p in scratch.iterdir() if p.is_file()) == ["check.pdf", "check.png"]  # nothing half-written
    monkeypatch.delenv(report.FIGURE_DIR_VARIABLE)
    assert report.save_figure(Figure(), "check", profile="faithful")[0] == home / "figures" / "check.png"


def test_report_rejects_bad_names_and_values(home):
    with pytest.raises(InputError, match="name"):
        report.save_figure(Figure(), "../escape")
    with pytest.raises(InputError, match="notebook"):
        report.write_results("a/b", {})
    with pytest.raises(InputError, match="JSON"):
        report.write_results("x", {"bad": object()})
    assert not (home / "results" / "x.json").exists()
    (home / "results").mkdir(exist_ok=True)
    (home / "results" / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        report.results_table()


def test_a_long_stamp_wraps_inside_the_figure_and_keeps_every_word():
    """A regime stamp longer than the figure is wide is wrapped: the saved figure keeps about
    its width (a tight bounding box is not widened by the stamp) and no word is lost."""
    import io

    from pdeinf.viz import style

    words = [f"word{i}" for i in range(60)]
    widths = []
    for lines in ([], [" ".join(words), "second line"]):
        fig = Figure(figsize=(3, 2), layout="constrained")
        fig.add_subplot().plot([0, 1], [0, 1])
        if lines:
            style.stamp(fig, lines)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=50, bbox_inches="tight")
        widths.append(matplotlib.image.imread(io.BytesIO(buffer.getvalue())).shape[1])
    text = fig._suptitle.get_text()
    assert text.split() == words + ["second", "line"] and text.count("\n") >= 2
    # at 50 dpi the 3-inch figure is 150 px (155 with its tight padding); unwrapped, the stamp
    # alone would be about 1,000 px wide
    assert widths[1] <= 1.1 * 150 + 10


def test_a_stamp_keeps_the_figures_own_title_above_it_and_stays_inside_the_figure():
    import io

    from pdeinf.viz import style

    fig = Figure(figsize=(3, 2), layout="constrained")
    fig.add_subplot().plot([0, 1], [0, 1])
    fig.suptitle("Regime ladder [ours]")
    style.stamp(fig, ["regime CE-vit: P/M 1.14"])
    assert fig._suptitle.get_text().split("\n") == ["Regime ladder [ours]", "regime CE-vit: P/M 1.14"]
    fig.suptitle("A title")
    style.stamp(fig, [" ".join(f"word{i}" for i in range(60))])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50, bbox_inches="tight")
    assert fig._suptitle.get_text().startswith("A title\n")
    assert matplotlib.image.imread(io.BytesIO(buffer.getvalue())).shape[1] <= 1.1 * 150 + 10
