"""The regime ladder: its rungs keep optimizer steps equal along the data axis, its runs have the
width and data they claim, its measurements are the seed paper's influence of those models with
both estimators (recomputed directly), its statistics are intervals over seeds computed as
written, and a rerun computes nothing."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pdeinf.analysis import ladder as al
from pdeinf.config import get_profile
from pdeinf.errors import InputError

SMOKE = get_profile("smoke")
LADDER = SMOKE  # its ladder: CE-ViT, one more width, one more data size, one seed


def _table(rng, seeds=(1, 2, 3, 4)) -> pd.DataFrame:
    rows = []
    for axis, values in (("progress", (1, 5, 9)), ("width", (8, 16)), ("data", (1, 5))):
        for value in values:
            for estimator in al.ESTIMATORS:
                for seed in seeds:
                    rows.append({"axis": axis, "value": value, "estimator": estimator,
                                 "seed": seed, "p_over_m": value / 10, "train_per_class": 5,
                                 "optimizer_steps": 10, "val_smse": 0.1,
                                 **{s: rng.normal(value, 1.0) for s in al.STATISTICS}})
    return pd.DataFrame(rows)


def test_summary_and_paired_changes_are_t_intervals_over_seeds():
    table = _table(np.random.default_rng(0))
    summary = al.summarize(table)
    assert len(summary) == 7 * 2 * len(al.STATISTICS)
    row = summary[(summary.axis == "width") & (summary.value == 16)
                  & (summary.estimator == "subspace") & (summary.statistic == "ridge")].iloc[0]
    x = table[(table.axis == "width") & (table.value == 16) & (table.estimator == "subspace")]
    x = x.sort_values("seed")["ridge"].to_numpy()
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    assert row.estimate == pytest.approx(x.mean())
    assert (row.low, row.high) == pytest.approx((x.mean() - half, x.mean() + half))
    assert row.per_seed == pytest.approx(list(x))

    change = al.paired_change(table, "progress")
    part = table[(table.axis == "progress") & (table.estimator == "full-space")]
    d = (part[part.value == 9].sort_values("seed")["ridge"].to_numpy()
         - part[part.value == 1].sort_values("seed")["ridge"].to_numpy())
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert (change["first"], change["last"]) == (1, 9)
    assert (change["low"], change["high"]) == pytest.approx((d.mean() - half, d.mean() + half))

    est = al.estimator_change(table, "data", 5)
    part = table[(table.axis == "data") & (table.value == 5)]
    d = (part[part.estimator == "full-space"].sort_values("seed")["ridge"].to_numpy()
         - part[part.estimator == "subspace"].sort_values("seed")["ridge"].to_numpy())
    assert est["estimate"] == pytest.approx(d.mean())
    sentence = al.axis_sentence(table, "width", paper_ridge=4.65)
    assert sentence.startswith("Along capacity") and "the paper reads 4.65" in sentence


def test_sentence_says_when_one_seed_cannot_decide():
    table = _table(np.random.default_rng(1), seeds=(1,))
    assert "cannot be told apart" in al.axis_sentence(table, "data")
    with pytest.raises(InputError, match="missing column"):
        al.summarize(table.drop(columns=["ridge"]))
    with pytest.raises(InputError, match="unknown axis"):
        al.summarize(table.assign(axis="depth"))


def test_rungs_keep_steps_equal_along_the_data_axis():
    from pdeinf.pipeline.ladder import own_train_per_class, rungs, steps_per_epoch

    faithful = get_profile("faithful-full")
    own = own_train_per_class(faithful)
    full = faithful.epochs["CE"] * steps_per_epoch(faithful, own, "CE")
    data = [r for r in rungs(faithful) if r.axis == "data"]
    assert [r.value for r in data] == sorted(faithful.ladder_trajectories)
    assert max(r.value for r in data) / min(r.value for r in data) >= 16
    for r in data:
        steps = r.epochs * steps_per_epoch(faithful, r.value, "CE")
        assert full <= steps < full + steps_per_epoch(faithful, r.value, "CE")
    progress = [r.epoch for r in rungs(faithful) if r.axis == "progress"]
    assert progress == list(faithful.checkpoints["CE"])
    with pytest.raises(InputError, match="no ladder_pair"):
        rungs(get_profile("quick"))


def test_ladder_stage_trains_measures_and_caches(smoke_home):
    import xarray as xr

    from pdeinf.influence.task import seed_paper_influence
    from pdeinf.models import build, count_parameters
    from pdeinf.pipeline import ladder as pl
    from pdeinf.pipeline.influence import FileSources

    result = pl.ensure_ladder(LADDER, progress=False)
    table = pd.DataFrame(result["table"])
    assert set(table.axis) == set(al.AXES) and set(table.estimator) == set(al.ESTIMATORS)
    assert set(result["sentences"]) == set(al.AXES)
    assert json.loads(pl.ladder_path(LADDER).read_text())["pde"] == "CE"

    width = next(r for r in pl.rungs(LADDER) if r.axis == "width" and not r.own)
    data = next(r for r in pl.rungs(LADDER) if r.axis == "data" and not r.own)
    seed = LADDER.ladder_seeds[0]
    src = FileSources(LADDER, "CE", "vit", runs_root=pl.rung_runs_root(LADDER, width),
                      data_root=smoke_home / "results" / "data" / "smoke")
    net, _ = src.model(seed, width.epoch)
    assert count_parameters(net) == count_parameters(build("vit", channels=4, resolution=16,
                                                           size="smoke", width=width.value))
    data_src = FileSources(LADDER, "CE", "vit", runs_root=pl.rung_runs_root(LADDER, data),
                           data_root=smoke_home / "results" / "data" / "smoke")
    _, data_ckpt = data_src.model(seed, data.epoch)
    assert data_ckpt["config"]["n_train_transitions"] == 3 * data.value * (LADDER.t_max - 1)

    # the stored measurement is the seed paper's influence of that model, recomputed here
    batch = src.batch(seed, 0)
    direct = seed_paper_influence(net, batch.inputs, batch.targets, pde="CE", damping=LADDER.damping,
                                  rtol=LADDER.rtol_for("vit"), estimator="subspace",
                                  energy_tol=LADDER.energy_tol)
    with xr.open_dataset(pl.measurement_path(LADDER, width, seed, "subspace")) as held:
        np.testing.assert_allclose(held["H"].values, direct["H"].values, rtol=1e-5, atol=1e-7)
    row = table[(table.axis == "width") & (table.value == width.value)
                & (table.estimator == "subspace")].iloc[0]
    stats_direct = pl._statistics(direct, "CE")
    assert row.ridge == pytest.approx(stats_direct["ridge"], rel=1e-5)

    files = sorted((smoke_home / "results" / "ladder").rglob("*.nc"))
    own = [r for r in pl.rungs(LADDER) if r.own]
    distinct = len(pl.rungs(LADDER)) - len(own) + len({r.epoch for r in own})
    assert len(files) == distinct * len(LADDER.ladder_seeds) * 2  # own checkpoints measured once
    stamps = {p: p.stat().st_mtime_ns for p in files}
    pl.ensure_ladder(LADDER, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing recomputed


def test_ladder_figure_draws_every_axis_and_statistic_with_one_legend_outside():
    from pdeinf.viz.ladder import ladder_figure

    table = _table(np.random.default_rng(2))
    fig = ladder_figure(al.summarize(table), own={"progress": 9, "width": 16, "data": 5},
                        paper_ridge=4.65)
    axes = fig.axes
    assert len(axes) == len(al.STATISTICS) * len(al.AXES)
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"full-space", "subspace", "paper"} <= set(labels)
    with pytest.raises(InputError, match="missing column"):
        ladder_figure(al.summarize(table).drop(columns=["p_over_m"]))
