"""The model-departure ablation: the pure table on synthetic data with known answers, and the
cached stage at the smoke profile."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pdeinf.errors import InputError

CLASSES = ("A", "B", "C")


def _synthetic(n_seeds=3, n_batches=2, n_t=16, rng=0):
    """Baseline: a banded (time-local) SPD matrix per batch, random rollouts and validation."""
    gen = np.random.default_rng(rng)
    c, t = len(CLASSES), n_t
    lag = np.abs(np.subtract.outer(np.arange(t), np.arange(t)))
    band = np.exp(-lag / 2.0)
    pis = np.empty((n_seeds, n_batches, t, c, t, c))
    for s in range(n_seeds):
        for b in range(n_batches):
            g = gen.normal(size=(c * t, 4 * c * t)) * 0.3
            m = g @ g.T / g.shape[1] + np.kron(np.eye(c), band) * (1 + 0.1 * gen.normal())
            pis[s, b] = m.reshape(c, t, c, t).transpose(1, 0, 3, 2)
    roll = gen.lognormal(size=(n_seeds, c, n_batches, t, t))
    val = 10 ** gen.normal(-2, 0.1, size=n_seeds)
    return pis, roll, val


def _dataset(configs: dict):
    """configs: {name: (pi, rollout, val)} -> the stage's layout."""
    names = list(configs)
    pi = np.stack([configs[n][0] for n in names])
    roll = np.stack([configs[n][1] for n in names])
    val = np.stack([configs[n][2] for n in names])
    s, b, t = pi.shape[1], pi.shape[2], pi.shape[3]
    return xr.Dataset(
        {"pi": (("config", "seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert"), pi),
         "rollout": (("config", "seed", "class", "batch", "start", "horizon"), roll),
         "val_smse": (("config", "seed"), val)},
        coords={"config": names, "seed": [10, 35, 42][:s] if s <= 3 else np.arange(s),
                "batch": np.arange(b), "t_resp": np.arange(t), "t_pert": np.arange(t),
                "c_resp": list(CLASSES), "c_pert": list(CLASSES), "class": list(CLASSES),
                "start": np.arange(roll.shape[-2]), "horizon": np.arange(1, roll.shape[-1] + 1)})


def _inter_gap_dense(pi):
    """Independent reference: per (seed, batch) row-standardize the N x N matrix (n = c T + t,
    ddof 1), mean over intra-class entries at |dt| = 1 minus over inter-class ones."""
    s, b, t, c = pi.shape[:4]
    out = np.empty((s, b))
    cls = np.repeat(np.arange(c), t)
    tim = np.tile(np.arange(t), c)
    lag1 = np.abs(np.subtract.outer(tim, tim)) == 1
    same = np.equal.outer(cls, cls)
    for i in range(s):
        for j in range(b):
            m = pi[i, j].transpose(1, 0, 3, 2).reshape(c * t, c * t)
            m = m / m.std(axis=1, ddof=1, keepdims=True)
            out[i, j] = m[lag1 & same].mean() - m[lag1 & ~same].mean()
    return out


def _link_dense(pi, roll):
    """R = (block sum - trace) / trace of each class's intra block; error = median over starts
    of the one-step error; both flattened over (seed, class, batch)."""
    s, b, _, c = pi.shape[:4]
    r = np.empty((s, c, b))
    for i in range(s):
        for j in range(b):
            for k in range(c):
                block = pi[i, j, :, k, :, k]
                r[i, k, j] = (block.sum() - np.trace(block)) / np.trace(block)
    err = np.median(roll[..., 0], axis=-1)
    return r, err


def test_identical_configuration_changes_nothing():
    from pdeinf.analysis.ablation import FINDINGS, ablation_table

    pis, roll, val = _synthetic()
    table = ablation_table(_dataset({"baseline": (pis, roll, val), "same": (pis, roll, val)}))
    assert list(table["finding"].values) == list(FINDINGS)
    ch = table["change"].sel(config="same")
    np.testing.assert_allclose(ch.values, 0.0, atol=1e-12)
    assert not table["exceeds_noise"].any()
    np.testing.assert_allclose(table["value"].sel(config="same"), table["value"].sel(config="baseline"))


def test_values_match_dense_references_and_known_changes():
    from pdeinf.analysis.ablation import ablation_table, table_records

    pis, roll, val = _synthetic()
    other, roll2, _ = _synthetic(rng=1)
    ds = _dataset({"baseline": (pis, roll, val),
                   "scaled": (3.0 * pis, roll, 10.0 * val),  # standardization / R scale-free
                   "other": (other, roll2, val)})
    table = ablation_table(ds)
    gap = _inter_gap_dense(pis)
    assert float(table["value"].sel(finding="inter_below_intra", config="baseline")) == \
        pytest.approx(gap.mean(), rel=1e-10)
    assert float(table["seed_std"].sel(finding="inter_below_intra", config="baseline")) == \
        pytest.approx(gap.mean(axis=1).std(ddof=1), rel=1e-10)
    r, err = _link_dense(pis, roll)
    per_seed = [np.corrcoef(r[i].ravel(), err[i].ravel())[0, 1] for i in range(3)]
    assert float(table["value"].sel(finding="rollout_link_negative", config="baseline")) == \
        pytest.approx(np.mean(per_seed), rel=1e-10)
    assert float(table["seed_std"].sel(finding="rollout_link_negative", config="baseline")) == \
        pytest.approx(np.std(per_seed, ddof=1), rel=1e-10)
    # scaling Pi leaves every influence finding unchanged; x10 validation SMSE is +1 decade
    scaled = table["change"].sel(config="scaled")
    np.testing.assert_allclose(scaled.sel(finding=["inter_below_intra", "temporal_decay",
                                                   "class_locked", "rollout_link_negative"]),
                               0.0, atol=1e-9)
    np.testing.assert_allclose(scaled.sel(finding="validation_smse"), 1.0, atol=1e-12)
    assert bool(table["exceeds_noise"].sel(finding="validation_smse", config="scaled"))
    assert not bool(table["exceeds_noise"].sel(finding="inter_below_intra", config="scaled"))
    # the change of another configuration is the paired difference of the two values
    d = table["change"].sel(config="other", ci="estimate")
    np.testing.assert_allclose(d, table["value"].sel(config="other")
                               - table["value"].sel(config="baseline"), atol=1e-12)
    ci = table["change"].sel(config="other")
    assert (ci.sel(ci="low") <= ci.sel(ci="high")).all()
    rows = table_records(table, pde="CE", model="unet")
    assert len(rows) == 2 * 5 and {r["config"] for r in rows} == {"scaled", "other"}


def test_one_seed_one_batch_gives_no_interval():
    from pdeinf.analysis.ablation import ablation_table, describe_table

    pis, roll, val = _synthetic(n_seeds=1, n_batches=1)
    table = ablation_table(_dataset({"baseline": (pis, roll, val),
                                     "alt": (2 * pis + 1e-3, roll, val * 3)}))
    assert np.isnan(table["change"].sel(ci=["low", "high"])).all()
    assert np.isnan(table["seed_std"]).all() and not table["exceeds_noise"].any()
    assert all("cannot be told from noise" in line
               for line in describe_table(table, pde="CE", model="unet"))


def test_bad_input_is_named():
    from pdeinf.analysis.ablation import ablation_table

    pis, roll, val = _synthetic(n_seeds=2, n_batches=2)
    ds = _dataset({"baseline": (pis, roll, val)})
    with pytest.raises(InputError, match="missing variable 'val_smse'"):
        ablation_table(ds.drop_vars("val_smse"))
    with pytest.raises(InputError, match=r"ds\['pi'\]: dims"):
        ablation_table(ds.assign(pi=ds["pi"].isel(config=0)))


def test_configurations_and_pairs():
    import dataclasses

    from pdeinf.config import get_profile
    from pdeinf.pipeline import ablation as ab

    smoke = get_profile("smoke")
    assert ab.configurations(smoke) == ["increment", "pdeinf"]
    assert ab.ablation_profile(smoke, "pdeinf").model_variant == "pdeinf"
    assert ab.ablation_profile(smoke, "increment").residual is True
    # a profile already trained as increments has no separate "increment" configuration
    assert ab.configurations(dataclasses.replace(smoke, residual=True)) == ["pdeinf"]
    assert ab.ablation_pairs(smoke) == [("CE", "unet")]
    paper = get_profile("paper")
    assert len(ab.ablation_pairs(paper)) == len(paper.pdes) * len(paper.models)
    with pytest.raises(InputError, match="unknown ablation"):
        ab.ablation_profile(smoke, "bigger")


@pytest.mark.slow
def test_stage_caches_and_recomputes_only_what_is_stale(smoke_home):
    """At smoke: the stage trains both configurations, computes one task per (config, seed),
    reuses them on a rerun, and recomputes exactly a corrupted task."""
    import torch

    from pdeinf.pipeline import ablation as ab
    from pdeinf.pipeline.common import final_epoch
    from pdeinf.pipeline.influence import ensure_influence

    ds = ab.ensure_ablation_pair("smoke", "CE", "unet", progress=False)
    assert list(ds["config"].values) == ["baseline", "increment", "pdeinf"]
    n = ds.sizes["t_resp"] * ds.sizes["c_resp"]
    mats = ds["pi"].transpose("config", "seed", "batch", "c_resp", "t_resp", "c_pert", "t_pert")
    mats = mats.values.reshape(*mats.shape[:3], n, n)
    # the SMSE Gauss-Newton influence G^T (G G^T + lambda)^-1 G is symmetric PSD
    np.testing.assert_allclose(mats, np.swapaxes(mats, -1, -2), atol=1e-8 * np.abs(mats).max())
    assert np.linalg.eigvalsh((mats + np.swapaxes(mats, -1, -2)) / 2).min() > -1e-8 * np.abs(mats).max()
    assert np.isfinite(ds["rollout"].sel(horizon=1).values).all()
    base = ensure_influence("smoke", "CE", "unet", metric="gauss-newton", observable="smse",
                            progress=False).sel(epoch=final_epoch(ab.as_profile("smoke"), "CE"))
    np.testing.assert_array_equal(ds["pi"].sel(config="baseline").values,
                                  base["pi"].transpose(*ds["pi"].dims[1:]).values)
    for name, field, want in (("increment", "residual", True), ("pdeinf", "model_variant",
                                                                "pdeinf")):
        ckpt = ab.paths.checkpoint_path(ab.run_dir("smoke", name, "CE", "unet", 10),
                                        final_epoch(ab.as_profile("smoke"), "CE"))
        assert torch.load(ckpt, map_location="cpu", weights_only=True)["config"][field] == want
    files = [ab.task_file("smoke", "CE", "unet", name, 10) for name in ("increment", "pdeinf")]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = ab.ensure_ablation_pair("smoke", "CE", "unet", progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    xr.testing.assert_identical(again, ds)
    with xr.open_dataset(files[1], engine="h5netcdf") as one:
        bad = one.load()
    bad["val_smse"] = bad["val_smse"] + 1.0  # edited without a new checksum: corrupt
    from pdeinf.atomic import write_netcdf

    write_netcdf(bad, files[1])
    stamp_bad = files[1].stat().st_mtime_ns
    fixed = ab.ensure_ablation_pair("smoke", "CE", "unet", progress=False)
    assert files[0].stat().st_mtime_ns == stamps[0]
    assert files[1].stat().st_mtime_ns != stamp_bad
    xr.testing.assert_allclose(fixed, ds)
