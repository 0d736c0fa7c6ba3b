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
    published = lines["follow-up (published, method.md §6)"]
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
    assert {"ours", "follow-up (published, method.md §6)"} <= {
        line.get_label() for line in small.axes[0].get_lines()}


def test_dynamics_figures_are_labelled_and_draw_the_estimates(sweep):
    from pdeinf.analysis import followup as fu

    ci = fu.dynamics_intervals(sweep)
    fig = vf.dynamics_intervals_figure(ci)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["diagonal"].get_ydata(),
                               ci.sel(quantity="diagonal", ci="estimate").values)
    assert fig.axes[0].get_title().startswith("[ours]")
    assert vf.dynamics_figure(co.dynamics(sweep)).axes[0].get_title().startswith("[follow-up")
    assert vf.spectrum_figure(co.spectrum(sweep)).axes[0].get_title().startswith("[follow-up")
    assert vf.conservation_figure(co.variant_heatmaps(sweep))._suptitle.get_text().startswith(
        "[follow-up")


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
