"""The symmetry study: its per-seed computation on an exactly equivariant model (known
answers), the cached stage (rerun computes nothing; a corrupted or stale file recomputes that
seed alone), the summaries behind the verdict rules, and the explorer's symmetry tab."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import symmetry_fixtures as fixtures
import torch
import xarray as xr

from pdeinf.config import get_profile
from pdeinf.errors import InputError
from pdeinf.symmetry import study as sy
from pdeinf.symmetry import summary as sm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


Pointwise = fixtures.Pointwise
_conv_net = fixtures.conv_net
_batch = fixtures.symmetry_batch


def test_equivariant_model_has_unit_errors_equal_orbit_influence_and_zero_lie():
    models = {1: torch.nn.Sequential(Pointwise(0.5)), 2: torch.nn.Sequential(Pointwise(0.9))}
    ds = sy.symmetry_study(models, [_batch(0)], pde="NS", final_epoch=2, shifts=(1, 3))
    np.testing.assert_allclose(ds["equivariance"].values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(ds["equivariance_authors"].values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(ds["shift_axis_error"].values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(ds["shift_landscape"].values, 1.0, rtol=1e-12)
    # G_bra = G_ket for an equivariant family: every H_g equals H_e
    diag = ds["orbit_diagonal"]
    for g in ds["element"].values:
        np.testing.assert_allclose(diag.sel(element=g).values, diag.sel(element="e").values, rtol=1e-6)
    np.testing.assert_allclose(ds["orbit_diagonal_epochs"].sel(tracked="shift1").values,
                               ds["orbit_diagonal_epochs"].sel(tracked="identity").values, rtol=1e-6)
    # linear at its parameter values (b = 0): commutes with sub-pixel shifts and rotations
    assert np.abs(ds["lie_norm"].values).max() < 1e-10
    assert np.abs(ds["lie_norm_epochs"].values).max() < 1e-10
    assert list(ds["element"].values[:8]) == ["e", "r", "r2", "r3", "s", "sr", "sr2", "sr3"]
    assert list(ds["element"].values[8:]) == ["shift(1,0)", "shift(0,1)", "shift(3,0)", "shift(0,3)"]
    assert list(ds["epoch"].values) == [1, 2]


def test_nonlinear_net_breaks_equivariance_and_tracks_worst_element():
    models = {1: _conv_net(1), 3: _conv_net(3)}
    ds = sy.symmetry_study(models, [_batch(1)], pde="NS", final_epoch=3, shifts=(1,))
    eq = ds["equivariance"]
    # circular convolutions are shift-equivariant; random filters are not rotation-equivariant
    np.testing.assert_allclose(eq.sel(element=["shift(1,0)", "shift(0,1)"]).values, 1.0, rtol=1e-10)
    d4 = eq.sel(element=list(sy.D4_NON_IDENTITY))
    assert np.abs(np.log(d4.values)).max() > 1e-3
    q3 = d4.quantile(0.75, dim=("batch", "example"))
    assert sy.D4_NON_IDENTITY[int(ds["worst_d4_index"]) - 1] == str(q3["element"].values[int(np.argmax(q3.values))])
    assert ds["lie_norm"].sel(generator="x").min() > 0  # aliasing of tanh (Gruver et al.)
    assert list(ds["layer"].values) == ["0", "1", "2", "remainder"]  # conv, tanh, conv, rest
    np.testing.assert_allclose(ds["equivariance_epochs"].sel(epoch=3, tracked="worst_d4").values,
                               eq.sel(element=sy.D4_NON_IDENTITY[int(ds["worst_d4_index"]) - 1]).values[0])


def test_orbit_epochs_subset_leaves_nan_elsewhere():
    models = {e: torch.nn.Sequential(Pointwise(0.3 * e)) for e in (1, 2, 3)}
    ds = sy.symmetry_study(models, [_batch(3)], pde="NS", final_epoch=3, shifts=(1,), orbit_epochs=(1,))
    d = ds["orbit_diagonal_epochs"]
    assert np.isnan(d.sel(epoch=2).values).all()
    assert np.isfinite(d.sel(epoch=[1, 3]).values).all()
    np.testing.assert_allclose(d.sel(epoch=3).values, ds["orbit_diagonal"].sel(
        batch=0, element=["e", sy.D4_NON_IDENTITY[int(ds["worst_d4_index"]) - 1], "shift(1,0)"]).values)
    assert np.isfinite(ds["lie_norm_epochs"].values).all()
    tr = sm.epoch_trends(ds.expand_dims(seed=[0]))
    assert np.isnan(tr["orbit"].sel(epoch=2).values).all() and np.isfinite(tr["lie"].values).all()


def test_class_trajectories_and_bad_input():
    b = _batch(2)
    traj = sy.class_trajectories(b.inputs, b.targets, b.c)
    assert traj.shape == (3, 3, 2, 8, 8)
    assert torch.equal(traj[1, :2], b.inputs[2:4]) and torch.equal(traj[1, 2], b.targets[3])
    with pytest.raises(InputError, match="shifts"):
        sy.study_elements((0, 2))
    with pytest.raises(InputError, match="box"):
        sy.study_elements((1,), box=-1)
    box = sy.study_elements((1, 2), box=2)
    assert box[:8] == ["e", *sy.D4_NON_IDENTITY]
    assert box[8:] == [("shift", 1, 0), ("shift", 0, 1), ("shift", 2, 0), ("shift", 0, 2),
                       ("shift", 1, 1), ("shift", 1, 2), ("shift", 2, 1), ("shift", 2, 2)]
    with pytest.raises(InputError, match="final epoch"):
        sy.symmetry_study({1: _conv_net(0)}, [b], pde="NS", final_epoch=2, shifts=(1,))


# --------------------------------------------------------------------------- the cached stage


class FakeSources:
    def __init__(self, root):
        self.root = root
        self.loaded = []

    def checkpoint(self, seed, epoch):
        path = self.root / f"ckpt_s{seed}_e{epoch}.pt"
        if not path.is_file():
            path.write_bytes(f"{seed}-{epoch}".encode())
        return path

    def model(self, seed, epoch):
        self.loaded.append((seed, epoch))
        return _conv_net(100 * seed + epoch), {}

    def batch(self, seed, index):
        return _batch(seed + index)

    def data_key(self):
        return "fake-data"


def _profile():
    return dataclasses.replace(get_profile("smoke"), seeds=(1, 2), checkpoints={"CE": (1, 2), "NS": (1, 2)},
                               symmetry_batches=1, symmetry_shifts=(1,))


def test_stage_caches_and_recomputes_only_the_bad_seed(tmp_path):
    from pdeinf.pipeline import symmetry as ps

    prof, sources = _profile(), FakeSources(tmp_path)
    calls = []

    def counting(models, batches, **kw):
        calls.append(kw["attrs"]["seed"])
        return sy.symmetry_study(models, batches, **kw)

    run = {"sources": sources, "out_root": tmp_path / "out", "progress": False, "compute": counting}
    files = ps.run_symmetry(prof, "NS", "unet", **run)
    assert calls == [1, 2] and all(f.is_file() for f in files)
    ps.run_symmetry(prof, "NS", "unet", **run)
    assert calls == [1, 2], "a rerun recomputed a valid file"
    files[1].write_bytes(files[1].read_bytes()[:200])  # truncated: corrupt
    ps.run_symmetry(prof, "NS", "unet", **run)
    assert calls == [1, 2, 2]
    sources.checkpoint(1, 2).write_bytes(b"retrained")  # stale: the seed's checkpoint changed
    ps.run_symmetry(prof, "NS", "unet", **run)
    assert calls == [1, 2, 2, 1]
    ds = ps.load_symmetry(prof, "NS", "unet", out_root=tmp_path / "out", sources=sources)
    assert list(ds["seed"].values) == [1, 2]
    assert ds["equivariance"].dims == ("seed", "batch", "element", "example")
    assert ds["worst_d4_index"].dims == ("seed",)


def test_stage_rejects_a_flipped_value_and_missing_checkpoints(tmp_path):
    from pdeinf.atomic import write_netcdf
    from pdeinf.pipeline import symmetry as ps

    prof, sources = _profile(), FakeSources(tmp_path)
    out = tmp_path / "out"
    files = ps.run_symmetry(prof, "NS", "unet", sources=sources, out_root=out, progress=False)
    with xr.open_dataset(files[0], engine="h5netcdf") as ds:
        ds = ds.load()
    ds["equivariance"][0, 1, 0] += 1.0  # checksum no longer matches
    write_netcdf(ds, files[0])
    with pytest.raises(InputError, match="s1.nc"):
        ps.load_symmetry(prof, "NS", "unet", out_root=out)
    with pytest.raises(InputError, match="checkpoint not found"):
        ps.run_symmetry(dataclasses.replace(prof, checkpoints={"CE": (1,), "NS": (1, 7)}), "NS", "unet",
                        sources=SimpleNamespace(checkpoint=lambda s, e: tmp_path / "nope.pt"),
                        out_root=out, progress=False)


# --------------------------------------------------------------------------- summaries


def _synthetic(n_seeds=3, n_batches=2, n=5, rng_seed=0):
    """A study whose element k has equivariance ratio 10**(k / 4) (times per-seed noise) and
    orbit diagonal decreasing with k."""
    rng = np.random.default_rng(rng_seed)
    labels = ["e", *sy.D4_NON_IDENTITY, "shift(1,0)", "shift(0,1)"]
    k = np.arange(len(labels), dtype=float)
    eq = 10 ** (k[None, None, :, None] / 4) * np.exp(0.01 * rng.standard_normal((n_seeds, n_batches, len(labels), n)))
    eq[:, :, 0] = 1.0
    orbit = (5.0 - 0.3 * k)[None, None, :, None] + 0.01 * rng.standard_normal((n_seeds, n_batches, len(labels), n))
    return xr.Dataset(
        {"equivariance": (("seed", "batch", "element", "example"), eq),
         "orbit_diagonal": (("seed", "batch", "element", "example"), orbit),
         "lie_layer_norm": (("seed", "batch", "layer", "example"),
                            np.broadcast_to(np.array([1.0, 3.0])[None, None, :, None], (n_seeds, n_batches, 2, n)).copy())},
        coords={"seed": np.arange(n_seeds) + 10, "batch": np.arange(n_batches), "element": labels,
                "example": np.arange(n), "layer": ["conv", "remainder"]})


def test_finding_statistics_on_known_answers():
    ds = _synthetic()
    d4 = sm.seed_statistic(ds, "ns_d4_broken")
    # the largest D4 element is sr3 (k = 7): per seed, log10 ratio 7/4 up to the 1% noise
    assert d4.dims == ("seed",) and np.all(np.abs(d4.values - 7 / 4) < 0.02)
    q3 = ds["equivariance"].isel(seed=0).sel(element="sr3").quantile(0.75).item()
    assert float(d4.isel(seed=0)) == pytest.approx(np.log10(q3))
    tr = sm.seed_statistic(ds, "translation_within_few_percent")
    assert np.all(np.abs(tr.values - 9 / 4) < 0.02)
    rho = sm.seed_statistic(ds, "orbit_influence_suppressed")
    np.testing.assert_allclose(rho.values, -1.0)  # strictly monotone in every seed
    findings = sm.symmetry_findings({("NS", "unet"): ds, ("CE", "vit"): ds})
    assert set(findings) == set(sm.FINDINGS)
    assert [e["pde"] for e in findings["ns_d4_broken"]] == ["NS"]
    assert [e["pde"] for e in findings["ce_d4_within_25pct"]] == ["CE"]
    entry = findings["orbit_influence_suppressed"][0]
    assert entry["verdict"] == "direction only: same direction"
    assert entry["n_seeds"] == 3 and entry["n_batches"] == 1 and entry["seeds"] == [10, 11, 12]
    broken = findings["ns_d4_broken"][0]
    assert broken["paper"] == 4.0 and broken["size"]["value"] == pytest.approx(7 / 4 - 4, abs=0.02)
    assert broken["verdict"] == "same direction, smaller"  # 10**1.75 >> 1.25, far below 1e4
    assert findings["ce_d4_within_25pct"][0]["verdict"] == "contradicted"


def test_aggregation_and_shares():
    ds = _synthetic(n_seeds=3)
    agg = sm.aggregate_equivariance(ds["equivariance"])
    per_seed = np.quantile(ds["equivariance"].values.transpose(0, 2, 1, 3).reshape(3, ds.sizes["element"], -1), 0.75, axis=-1)
    np.testing.assert_allclose(agg["per_seed"].transpose("seed", "element").values, per_seed)
    np.testing.assert_allclose(agg["median"].values, np.median(per_seed, axis=0))
    np.testing.assert_allclose(sm.layer_shares(ds).values, [0.25, 0.75])
    assert sm.d4_labels(ds) == list(sy.D4_NON_IDENTITY)
    assert sm.shift_labels(ds) == ["shift(1,0)", "shift(0,1)"]
    with pytest.raises(InputError, match="rule"):
        sm.seed_statistic(ds, "nope")


def test_epoch_trends_relative_to_identity():
    rng = np.random.default_rng(1)
    d = rng.uniform(1, 2, (2, 3, 3, 4))
    ds = xr.Dataset({"lie_norm_epochs": (("seed", "epoch", "generator", "example"), d),
                     "equivariance_epochs": (("seed", "epoch", "tracked", "example"), d),
                     "orbit_diagonal_epochs": (("seed", "epoch", "tracked", "example"), d)},
                    coords={"epoch": [1, 2, 3], "tracked": list(sy.TRACKED), "generator": ["x", "y", "rotation"]})
    tr = sm.epoch_trends(ds)
    np.testing.assert_allclose(tr["orbit_relative"].sel(tracked="identity").values, 1.0)
    np.testing.assert_allclose(tr["lie"].values, np.median(d.transpose(1, 2, 0, 3).reshape(3, 3, -1), axis=-1))
    orbit = d.copy()
    orbit[:, 1] = np.nan  # a checkpoint where the orbit diagonal is not measured
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = sm.epoch_trends(ds.assign(orbit_diagonal_epochs=ds.orbit_diagonal_epochs.copy(data=orbit)))
    assert np.isnan(tr["orbit"].sel(epoch=2)).all() and np.isfinite(tr["orbit"].sel(epoch=[1, 3])).all()


def test_translation_landscape_reads_each_shift_where_it_belongs():
    import xarray as xr

    from pdeinf.symmetry import summary as sm

    labels = ["e", "r", "shift(1,0)", "shift(3,0)", "shift(0,1)", "shift(1,1)"]
    rng = np.random.default_rng(3)
    shape = (2, 1, len(labels), 5)  # seed, batch, element, example
    ds = xr.Dataset({"equivariance": (("seed", "batch", "element", "example"), rng.uniform(1, 2, shape)),
                     "orbit_diagonal": (("seed", "batch", "element", "example"), rng.normal(0, 1, shape))},
                    coords={"seed": [1, 2], "element": labels})
    land = sm.translation_landscape(ds, n=4)
    xs, q = land["axis"]["y"]
    assert list(xs) == [-1, 0, 1]  # shift 3 on a 4-cell grid is -1
    flat = lambda lab: ds["orbit_diagonal"].sel(element=lab).values.ravel()
    assert q[1, 0] == pytest.approx(np.median(flat("shift(3,0)")))
    assert q[1, 1] == pytest.approx(np.median(flat("e")))
    assert list(land["axis"]["x"][0]) == [0, 1]
    assert land["box"] == 1
    assert land["box_influence"][1, 1] == pytest.approx(np.median(flat("shift(1,1)")))
    assert land["box_influence"][0, 1] == pytest.approx(np.median(flat("shift(0,1)")))
    q3 = [np.quantile(ds["equivariance"].sel(seed=s, element="shift(1,0)").values, 0.75) for s in (1, 2)]
    assert land["box_error"][1, 0] == pytest.approx(np.median(q3))
    assert sm.signed(2, 4) == -2 and sm.signed(1, 5) == 1 and sm.signed(3, 5) == -2


@pytest.mark.slow
def test_smoke_symmetry_studies_hold_the_invariants(smoke_home):
    """The smoke profile's studies (mathematics, not numbers of a run): the authors' axes are
    the true action with v -> -v on r, r3, s, sr2; identity and zero shift give ratio 1; r2
    agrees in both conventions; Lie norms >= 0, layer shares in [0, 1], the identity's
    relative orbit influence 1; on divergence-free NS data the PDESpec axis assignment wins by
    orders of magnitude; every estimable finding lies inside its interval."""
    from pdeinf import pipeline
    from pdeinf.symmetry import ELEMENTS, act

    prof = get_profile("smoke")
    u = torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flips = [g for g in ELEMENTS if not torch.equal(act(u, g, pde="NS", convention="authors"), act(u, g, pde="NS"))]
    assert sorted(flips) == ["r", "r3", "s", "sr2"]
    studies = {pair: pipeline.ensure_symmetry(prof, *pair, progress=False) for pair in prof.pairs(prof.symmetry_pairs)}
    assert studies
    for (pde, model), ds in studies.items():
        np.testing.assert_allclose(ds["equivariance"].sel(element="e").values, 1.0)
        zero = ds["shift_axis_error"].sel(shift=0).values  # NaN at checkpoints outside symmetry_orbit_epochs
        assert np.isfinite(zero).any() and np.allclose(zero[np.isfinite(zero)], 1.0)
        np.testing.assert_allclose(ds["equivariance_authors"].sel(d4="r2").values,
                                   ds["equivariance"].sel(element="r2").values, rtol=1e-6)
        assert np.isfinite(ds["orbit_diagonal"].values).all() and (ds["equivariance"].values > 0).all()
        assert (ds["lie_norm"].values >= 0).all() and (ds["lie_layer_norm"].values >= 0).all()
        shares = sm.layer_shares(ds)
        assert ((shares >= 0) & (shares <= 1)).all()
        ident = sm.epoch_trends(ds)["orbit_relative"].sel(tracked="identity").values  # NaN off the orbit epochs
        assert np.isfinite(ident).any() and np.allclose(ident[np.isfinite(ident)], 1.0)
        if pde == "NS":
            check = ds["axis_check"].median(("seed", "batch"))
            assert float(check.sel(assignment="ours")) < 0.1 * float(check.sel(assignment="swapped"))
    assert sm.convention_summary(studies).splitlines()[0].endswith(str(flips))
    assert len(sm.lie_summary(studies).splitlines()) == len(studies)
    for e in pipeline.load_findings(prof, "11_followup_symmetry")["findings"]:
        assert not e["estimable"] or e["low"] <= e["estimate"] <= e["high"], e
