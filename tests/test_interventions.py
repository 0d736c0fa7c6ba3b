"""The interventions study: the pure analysis on synthetic data against direct
computations, and the cached stage at the smoke profile."""
from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

from pdeinf.analysis import interventions as ai
from pdeinf.errors import InputError

C, T = 3, 5
CLASSES = ["a", "b", "c"]


def _pi(rng, lead: dict) -> xr.DataArray:
    """Random raw pi with leading dims `lead` (name -> size), positive diagonal."""
    shape = (*lead.values(), T, C, T, C)
    values = rng.normal(size=shape)
    flat = values.reshape(*lead.values(), T * C, T * C)
    flat += 3.0 * np.eye(T * C)  # some positive diagonal (R finite)
    coords = {k: np.arange(v) for k, v in lead.items()}
    coords.update(t_resp=np.arange(T), t_pert=np.arange(T), c_resp=CLASSES, c_pert=CLASSES)
    return xr.DataArray(values, dims=(*lead, "t_resp", "c_resp", "t_pert", "c_pert"), coords=coords)


def _matrix(pi: xr.DataArray, **sel) -> np.ndarray:
    """The flat N x N matrix (n = c * T + t) of one leading index."""
    one = pi.isel(sel).transpose("c_resp", "t_resp", "c_pert", "t_pert").values
    return one.reshape(C * T, C * T)


def test_cross_time_ratio_matches_direct_sum():
    rng = np.random.default_rng(0)
    pi = _pi(rng, {"seed": 2, "batch": 3})
    r = ai.cross_time_ratio(pi)
    for s in range(2):
        for b in range(3):
            m = _matrix(pi, seed=s, batch=b)
            for c in range(C):
                block = m[c * T:(c + 1) * T, c * T:(c + 1) * T]
                off = sum(block[i, j] for i in range(T) for j in range(T) if i != j)
                diag = sum(block[i, i] for i in range(T))
                assert r.isel(seed=s, batch=b, **{"class": c}).item() == pytest.approx(off / diag)


def test_lag_medians_and_class_matrix_match_direct_loops():
    rng = np.random.default_rng(1)
    pi = _pi(rng, {"batch": 2})
    curves = ai.lag_medians(pi, max_lag=2)
    cms = ai.class_matrices(pi, lag=1)
    for b in range(2):
        m = _matrix(pi, batch=b)
        std = m / np.std(m, axis=1, ddof=1, keepdims=True)
        for lag in (-2, 0, 1, 2):
            intra, inter = [], []
            for n in range(C * T):
                for k in range(C * T):
                    if n % T - k % T == lag:
                        (intra if n // T == k // T else inter).append(std[n, k])
            got = curves.isel(batch=b).sel(dt=lag)
            assert got.sel(pair="intra").item() == pytest.approx(np.median(intra))
            assert got.sel(pair="inter").item() == pytest.approx(np.median(inter))
        for cr in range(C):
            for cp in range(C):
                vals = [std[cr * T + t, cp * T + t - 1] for t in range(1, T)]
                assert cms.isel(batch=b, c_resp=cr, c_pert=cp).item() == pytest.approx(np.median(vals))


def test_r_agrees_with_the_monitor_record():
    from pdeinf.influence.monitor import coherence_record

    pi = _pi(np.random.default_rng(2), {"batch": 1})
    rec = coherence_record(_matrix(pi, batch=0), CLASSES)
    r = ai.cross_time_ratio(pi).isel(batch=0)
    lag1 = ai.lag_medians(pi, max_lag=1).isel(batch=0).sel(dt=1)
    assert np.allclose([rec[f"R[{c}]"] for c in CLASSES], r.values)
    assert rec["intra_lag1"] == pytest.approx(lag1.sel(pair="intra").item())
    assert rec["inter_lag1"] == pytest.approx(lag1.sel(pair="inter").item())


def test_rollout_error_is_the_mean_cumulative_sum():
    rng = np.random.default_rng(3)
    steps = 4
    values = rng.uniform(0.1, 1.0, size=(2, C, steps, steps))  # batch, class, start, horizon
    start, hor = np.arange(steps)[:, None], np.arange(1, steps + 1)[None, :]
    values[..., start + hor > steps] = np.nan
    roll = xr.DataArray(values, dims=("batch", "class", "start", "horizon"),
                        coords={"horizon": np.arange(1, steps + 1), "start": np.arange(steps)})
    for dt in (1, 2, 4):
        got = ai.rollout_error(roll, dt)
        for b in range(2):
            per_class = [np.mean([values[b, c, s, :dt].sum() for s in range(steps - dt + 1)])
                         for c in range(C)]
            assert got.isel(batch=b).item() == pytest.approx(np.mean(per_class))
    with pytest.raises(InputError, match="dt"):
        ai.rollout_error(roll, steps + 1)


def test_select_epochs_by_each_criterion():
    epochs = [1, 5, 10, 15]
    val = xr.DataArray([[4.0, 2.0, 1.0, 1.5]], dims=("seed", "epoch"), coords={"epoch": epochs})
    r = xr.DataArray([[0.1, 0.9, 0.2, 0.95]], dims=("seed", "epoch"), coords={"epoch": epochs})
    assert ai.select_epochs(val, r, "val").item() == 10
    assert ai.select_epochs(val, r, "R").item() == 15
    # ranks from best: val (3, 2, 0, 1), R (3, 1, 2, 0): sums 6, 3, 2, 1 -> epoch 15
    assert ai.select_epochs(val, r, "R+val").item() == 15
    # tie of rank sums (epochs 10 and 15 both 2 below): lower validation SMSE wins
    r2 = xr.DataArray([[0.1, 0.2, 0.5, 0.9]], dims=("seed", "epoch"), coords={"epoch": epochs})
    # val ranks 3, 2, 0, 1 ; R ranks 3, 2, 1, 0 -> sums 6, 4, 1, 1 -> tie, val 1.0 < 1.5
    assert ai.select_epochs(val, r2, "R+val").item() == 10
    with pytest.raises(InputError, match="criterion"):
        ai.select_epochs(val, r, "loss")


def _obs(n_seeds: int, shift: float, *, rng=None) -> xr.Dataset:
    """Synthetic observables: recipe 'x' has rollout = baseline * exp(shift), R + 1."""
    rng = rng or np.random.default_rng(4)
    epochs = [1, 2, 3]
    base = rng.uniform(1.0, 3.0, size=(n_seeds, len(epochs), 2))
    roll = np.stack([base, base * np.exp(shift)])
    r = np.stack([base * 0 + 1.0 + rng.uniform(0, 0.1, base.shape),
                  base * 0 + 2.0 + rng.uniform(0, 0.1, base.shape)])
    val = rng.uniform(1.0, 2.0, size=(2, n_seeds, len(epochs)))
    dims = ("recipe", "seed", "epoch", "batch")
    coords = {"recipe": ["one-step", "x"], "seed": np.arange(n_seeds), "epoch": epochs,
              "batch": [0, 1]}
    obs = xr.Dataset({"rollout": (dims, roll), "log_rollout": (dims, np.log(roll)),
                      "R": (dims, r), "R_class": (dims + ("class",), np.repeat(r[..., None], 3, -1)),
                      "intra_lag1": (dims, r), "inter_lag1": (dims, r),
                      "val_smse": (dims[:3], val)}, coords=coords)
    obs.attrs["dt"] = 16
    return obs


@pytest.mark.parametrize("shift, word", [(-0.5, "improves"), (0.5, "worsens")])
def test_intervention_effect_and_verdict(shift, word):
    effects = ai.intervention_effects(_obs(3, shift))
    ci = effects["d_log_rollout"].sel(recipe="x")
    assert np.allclose(ci.values, shift)  # the paired difference is exactly the shift
    assert effects["verdict"].sel(recipe="x").item() == word
    rows = ai.effect_findings(effects, "CE", "unet")
    assert rows[0]["verdict"] == word and rows[0]["paper"] is None and rows[0]["n_seeds"] == 3
    # one seed: the interval omits between-seed variation -> inconclusive by rule
    one = ai.intervention_effects(_obs(1, shift))
    assert one["verdict"].sel(recipe="x").item() == "inconclusive"


def test_question_needs_disjoint_intervals():
    # R +1, rollout x exp(-0.5) everywhere; 8 seeds separate the t-intervals of the two recipes
    table = ai.recipe_table(_obs(8, -0.5))
    assert ai.raises_r_lowers_rollout(table) == ["x"]
    assert "raises R and lowers" in ai.answer_sentence(table, "CE", "unet")
    worse = ai.recipe_table(_obs(8, 0.5))
    assert ai.raises_r_lowers_rollout(worse) == []
    assert "no recipe" in ai.answer_sentence(worse, "CE", "unet")


def test_selection_comparison_matches_direct_choice():
    obs = _obs(3, 0.0)
    sel = ai.selection_comparison(obs)
    r_run = obs["R"].mean("batch")
    for recipe in ("one-step", "x"):
        diffs = []
        for s in range(3):
            v = obs["val_smse"].sel(recipe=recipe).isel(seed=s).values
            e_val = obs["epoch"].values[int(np.argmin(v))]
            e_r = obs["epoch"].values[int(np.argmax(r_run.sel(recipe=recipe).isel(seed=s).values))]
            lr = obs["log_rollout"].sel(recipe=recipe).isel(seed=s)
            diffs.append((lr.sel(epoch=e_r) - lr.sel(epoch=e_val)).values)
        got = sel["d_log_rollout"].sel(criterion="R", recipe=recipe, ci="estimate").item()
        assert got == pytest.approx(np.mean(diffs))
    frame = ai.selection_frame(sel)
    assert set(frame["recipe"]) == {"one-step", "x", "all"}
    assert set(frame["criterion"]) == {"R", "R+val"}


# ---- the cached stage ----------------------------------------------------------------
@pytest.mark.slow
def test_stage_caches_and_recomputes_only_the_damaged_task():
    from pdeinf.config import get_profile
    from pdeinf.pipeline import interventions as stage

    prof = get_profile("smoke")
    pde, model = stage.recipe_pairs(prof)[0]
    ds = stage.ensure_intervention_pair(prof, pde, model, progress=False)
    assert list(ds["recipe"].values) == list(prof.recipes)
    assert list(ds["epoch"].values) == sorted(prof.checkpoints[pde])
    assert ds.sizes["batch"] == stage.study_batches(prof)
    assert float(ds["rollout"].min()) >= 0 and np.isfinite(ds["pi"].values).all()
    # recipe runs live apart from the baseline and differ from it
    one = stage.recipe_run_dir(prof, pde, model, prof.recipes[0], prof.seeds[0])
    other = stage.recipe_run_dir(prof, pde, model, prof.recipes[1], prof.seeds[0])
    assert one != other and other.parent.name == f"recipe-{prof.recipes[1]}"
    assert not np.allclose(ds["pi"].isel(recipe=0).values, ds["pi"].isel(recipe=1).values)

    files = stage.run_study(prof, pde, model, progress=False)
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    stage.run_study(prof, pde, model, progress=False)
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps  # warm: nothing recomputed

    victim = files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a truncated copy
    damaged = os.stat(victim).st_mtime_ns
    again = stage.ensure_intervention_pair(prof, pde, model, progress=False)
    assert os.stat(victim).st_mtime_ns != damaged  # rewritten by the stage, not just by us
    changed = [f for f in files if os.stat(f).st_mtime_ns != stamps[f]]
    assert changed == [victim]
    xr.testing.assert_allclose(again["pi"], ds["pi"])
    assert np.allclose(again["rollout"].values, ds["rollout"].values, equal_nan=True)


def test_stage_rejects_a_pair_outside_the_study():
    from pdeinf.pipeline import interventions as stage

    with pytest.raises(InputError, match="recipe pairs"):
        stage.ensure_intervention_pair("smoke", "NS", "vit", progress=False)


def test_recipe_stage_refuses_an_unknown_recipe_or_pair_before_any_work(tmp_path, monkeypatch):
    """One recipe's stage: a recipe the profile does not train, or a pair outside the study,
    fails with one line naming it, before anything is trained or written."""
    from pdeinf.pipeline import interventions as stage

    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"recipes: \['nope'\] are not recipes of profile 'smoke'"):
        stage.ensure_recipe_study("smoke", "CE", "unet", "nope", progress=False)
    with pytest.raises(InputError, match="recipe pairs"):
        stage.ensure_recipe_study("smoke", "NS", "vit", "pushforward", progress=False)
    assert not any(tmp_path.rglob("*"))


@pytest.mark.slow
def test_smoke_study_holds_the_invariants(smoke_home):
    """The smoke profile's study (mathematics, not numbers of a run): R from the labelled
    dataset equals the monitor's direct computation on the flat N x N matrix; the cumulative
    rollout error grows with the horizon, per-step SMSE >= 0; intervals are ordered; selection
    by validation picks the smallest validation SMSE; ranks stay within N."""
    from pdeinf.config import get_profile
    from pdeinf.influence.monitor import coherence_record
    from pdeinf.pipeline import interventions as stage

    prof = get_profile("smoke")
    for pde, model in stage.recipe_pairs(prof):
        pair = (pde, model)
        ds = stage.ensure_intervention_pair(prof, pde, model, progress=False)
        o = ai.observables(ds)
        table = ai.recipe_table(o)
        one = ds.pi.isel(recipe=0, seed=0, epoch=0, batch=0)
        flat = one.transpose("c_resp", "t_resp", "c_pert", "t_pert").values.reshape(ds.sizes["t_resp"] * 3, -1)
        rec = coherence_record(flat, list(ds.c_resp.values))
        assert np.allclose([rec[f"R[{c}]"] for c in ds.c_resp.values],
                           o.R_class.isel(recipe=0, seed=0, epoch=0, batch=0).values), pair
        assert np.isclose(rec["intra_lag1"], float(o.intra_lag1.isel(recipe=0, seed=0, epoch=0, batch=0))), pair
        assert float(ds.rollout.min()) >= 0, pair
        assert np.all((ai.rollout_error(ds.rollout, 2) >= ai.rollout_error(ds.rollout, 1)).values), pair
        for name in ("R", "rollout", "val_smse"):
            low, high = table[name].sel(ci="low"), table[name].sel(ci="high")
            assert np.all((low <= high) | np.isnan(low)), (pair, name)  # NaN: one seed, no interval
        picked = ai.picked_epochs(o).sel(criterion="val")
        assert np.all(o.val_smse.sel(epoch=picked).values <= o.val_smse.min("epoch").values + 0.0), pair
        assert np.all((ds["rank"] <= ds.sizes["t_resp"] * ds.sizes["c_resp"]).values), pair
        lines = ai.describe_recipes(table).splitlines()
        assert len(lines) == 1 + ds.sizes["recipe"] and lines[0].startswith("final epoch")
        assert ai.describe_selection(ai.selection_comparison(o)).count("checkpoint chosen by") == 2 * (
            ds.sizes["recipe"] + 1)
