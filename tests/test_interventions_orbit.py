"""Orbit influence of the `augment` recipe vs one-step: the per-run computation is
the symmetry study's, the cached stage (reuse of the symmetry stage's file, keys, resume) on
tiny models with fake sources, and the analysis and its verdict rules on synthetic data with
known answers."""
from __future__ import annotations

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import symmetry_fixtures as fixtures
import torch
import xarray as xr

from pdeinf.analysis import interventions as ai
from pdeinf.config import get_profile
from pdeinf.errors import InputError
from pdeinf.symmetry import study as sy
from pdeinf.symmetry.equivariance import equivariance_error
from pdeinf.symmetry.orbit import orbit_influence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D4 = list(sy.D4_NON_IDENTITY)


def _conv_net(seed: int):
    return fixtures.conv_net(seed, hidden=3)


def Pointwise(a=0.9, b=0.1):
    return fixtures.Pointwise(a, b)


def _batch(seed: int, n_per_class: int = 2, size: int = 6):
    return fixtures.symmetry_batch(seed, n_per_class, size)


# ---- the computation --------------------------------------------------------------------
def test_final_orbit_study_is_the_symmetry_study_at_the_final_checkpoint():
    net, b = _conv_net(0), _batch(0)
    got = sy.final_orbit_study(net, [b], pde="NS")
    assert list(got["element"].values) == ["e", *D4]
    full = sy.symmetry_study({3: net}, [b], pde="NS", final_epoch=3, shifts=(1,))
    for var in ("equivariance", "orbit_diagonal", "orbit_rank"):
        np.testing.assert_allclose(got[var].values, full[var].sel(element=["e", *D4]).values,
                                   rtol=1e-10, err_msg=var)
    # and equals the symmetry functions called directly
    for g in D4:
        np.testing.assert_allclose(got["equivariance"].sel(batch=0, element=g).values,
                                   equivariance_error(net, b.inputs, b.targets, g, pde="NS").numpy(),
                                   rtol=1e-12)
    np.testing.assert_allclose(got["equivariance"].sel(element="e").values, 1.0)
    direct = orbit_influence(net, b.inputs, b.targets, ["e", *D4], pde="NS")
    np.testing.assert_allclose(got["orbit_diagonal"].isel(batch=0).values, direct["diagonal"].values,
                               rtol=1e-8)
    assert np.abs(np.log(got["equivariance"].sel(element=D4).values)).max() > 1e-4  # not equivariant


def test_equivariant_model_has_unit_error_and_orbit_equal_to_identity():
    got = sy.final_orbit_study(torch.nn.Sequential(Pointwise()), [_batch(1), _batch(2)], pde="NS")
    np.testing.assert_allclose(got["equivariance"].values, 1.0, rtol=1e-12)
    diag = got["orbit_diagonal"]
    for g in D4:
        np.testing.assert_allclose(diag.sel(element=g).values, diag.sel(element="e").values, rtol=1e-6)
    with pytest.raises(InputError, match="batches"):
        sy.final_orbit_study(_conv_net(0), [], pde="NS")


# ---- the cached stage ---------------------------------------------------------------------
class FakeSources:
    """Checkpoints are small files; the model of (recipe, seed) a fixed random conv net;
    `symmetry(seed)` the symmetry study of the one-step model when `with_symmetry`."""

    def __init__(self, root, prof, with_symmetry=True):
        self.root, self.prof, self.with_symmetry = root, prof, with_symmetry
        self.loaded, self.studies = [], {}

    def checkpoint(self, recipe, seed):
        path = self.root / f"{recipe}_s{seed}.pt"
        if not path.is_file():
            path.write_bytes(f"{recipe}-{seed}".encode())
        return path

    def net(self, recipe, seed):
        return _conv_net(100 * seed + (7 if recipe == "augment" else 0))

    def model(self, recipe, seed):
        self.loaded.append((recipe, seed))
        return self.net(recipe, seed), {}

    def batch(self, seed, index):
        return _batch(10 * seed + index)

    def data_key(self):
        return "fake-data"

    def symmetry(self, seed):
        if not self.with_symmetry:
            return None
        if seed not in self.studies:
            final = max(self.prof.checkpoints["NS"])
            self.studies[seed] = sy.symmetry_study(
                {final: self.net("one-step", seed)}, [self.batch(seed, 0)], pde="NS",
                final_epoch=final, shifts=(1,), damping=self.prof.damping,
                energy_tol=self.prof.energy_tol)
        return self.studies[seed]


def _profile(**kw):
    settings = {"name": "orbit-test", "seeds": (1, 2), "recipes": ("one-step", "pushforward", "augment"),
                "recipe_pairs": (("NS", "unet"),), "symmetry_pairs": (("NS", "unet"),),
                "symmetry_batches": 1, **kw}
    return dataclasses.replace(get_profile("smoke"), **settings)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path / "home"))
    return tmp_path


def test_stage_reuses_the_symmetry_study_for_one_step_and_computes_augment(home):
    from pdeinf.pipeline import interventions as stage

    prof = _profile()
    sources = FakeSources(home, prof)
    calls = []

    def counting(net, batches, **kw):
        calls.append(len(batches))
        return sy.final_orbit_study(net, batches, **kw)

    run = {"sources": sources, "progress": False, "compute": counting}
    files = stage.run_orbit(prof, "NS", "unet", **run)
    assert len(files) == 4 and all(f.is_file() for f in files)
    assert sources.loaded == [("augment", 1), ("augment", 2)]  # one-step came from the symmetry files
    assert calls == [1, 1]
    orbit = stage.load_orbit(prof, "NS", "unet")
    assert orbit["equivariance"].dims == ("recipe", "seed", "batch", "element", "example")
    assert list(orbit["recipe"].values) == ["one-step", "augment"] and list(orbit["seed"].values) == [1, 2]
    assert orbit.attrs["epoch"] == max(prof.checkpoints["NS"])
    # identity: ratio exactly 1; the paired change is the difference of the per-recipe means
    assert np.allclose(orbit.equivariance.sel(element="e").values, 1.0)
    obs, eff = ai.orbit_observables(orbit), ai.orbit_effects(orbit)
    direct = float((obs.orbit_d4.sel(recipe="augment") - obs.orbit_d4.sel(recipe="one-step")).mean())
    assert np.isclose(direct, float(eff.d_orbit.sel(ci="estimate")))
    assert float(eff.d_orbit.sel(ci="low")) <= float(eff.d_orbit.sel(ci="high"))
    for seed in (1, 2):
        sym = sources.symmetry(seed).sel(element=["e", *D4])
        one = orbit.sel(recipe="one-step", seed=seed)
        for var in ("equivariance", "orbit_diagonal", "orbit_rank"):
            np.testing.assert_array_equal(one[var].values, sym[var].values)
        # augment: what the symmetry functions give for that model and batch
        direct = sy.final_orbit_study(sources.net("augment", seed), [sources.batch(seed, 0)], pde="NS",
                                      damping=prof.damping, energy_tol=prof.energy_tol)
        for var in ("equivariance", "orbit_diagonal"):
            np.testing.assert_allclose(orbit.sel(recipe="augment", seed=seed)[var].values,
                                       direct[var].values, rtol=1e-10)

    # computed instead of reused: the same numbers (the same computation)
    alone = FakeSources(home / "alone", prof, with_symmetry=False)
    (home / "alone").mkdir()
    for f in files:
        f.unlink()
    stage.run_orbit(prof, "NS", "unet", sources=alone, progress=False)
    assert ("one-step", 1) in alone.loaded
    again = stage.load_orbit(prof, "NS", "unet")
    xr.testing.assert_allclose(again["orbit_diagonal"], orbit["orbit_diagonal"], rtol=1e-8)
    xr.testing.assert_allclose(again["equivariance"], orbit["equivariance"], rtol=1e-12)


def test_stage_caches_resumes_and_keys_on_the_checkpoint(home):
    from pdeinf.pipeline import interventions as stage

    prof = _profile()
    sources = FakeSources(home, prof, with_symmetry=False)
    calls = []

    def counting(net, batches, **kw):
        calls.append(1)
        return sy.final_orbit_study(net, batches, **kw)

    run = {"sources": sources, "progress": False, "compute": counting}
    files = stage.run_orbit(prof, "NS", "unet", **run)
    assert len(calls) == 4
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    stage.run_orbit(prof, "NS", "unet", **run)
    assert len(calls) == 4, "a warm rerun recomputed"
    # an interrupted run (a file lost or truncated) resumes with exactly that file
    files[3].write_bytes(files[3].read_bytes()[:300])
    files[0].unlink()
    stage.run_orbit(prof, "NS", "unet", **run)
    assert len(calls) == 6
    assert [f for f in files if f.is_file() and os.stat(f).st_mtime_ns == stamps[f]] == files[1:3]
    # the key follows the checkpoint's bytes (and the settings)
    epoch = max(prof.checkpoints["NS"])
    ckpt = sources.checkpoint("augment", 1)
    key = stage.orbit_key(prof, "NS", "unet", "augment", 1, epoch, ckpt, "fake-data")
    ckpt.write_bytes(b"retrained")
    assert stage.orbit_key(prof, "NS", "unet", "augment", 1, epoch, ckpt, "fake-data") != key
    assert stage.orbit_key(dataclasses.replace(prof, damping=1e-3), "NS", "unet", "augment", 1,
                           epoch, ckpt, "fake-data") != \
        stage.orbit_key(prof, "NS", "unet", "augment", 1, epoch, ckpt, "fake-data")
    stage.run_orbit(prof, "NS", "unet", **run)
    assert len(calls) == 7  # only the stale augment seed 1


def test_stage_skips_without_augment_and_rejects_bad_settings(home):
    from pdeinf.pipeline import interventions as stage

    smoke = get_profile("smoke")
    assert "augment" not in smoke.recipes and stage.orbit_recipes(smoke) == []
    assert stage.run_orbit(smoke, "CE", "unet", sources=None, progress=False) == []
    with pytest.raises(InputError, match="augment"):
        stage.load_orbit(smoke, "CE", "unet")
    with pytest.raises(InputError, match="augment"):
        stage.ensure_orbit_pair(smoke, "CE", "unet", progress=False)
    with pytest.raises(InputError, match="symmetry_batches"):
        stage.orbit_batches(_profile(symmetry_batches=5))
    assert stage.orbit_from_symmetry(None, 2, 1) is None
    study = FakeSources(home, _profile()).symmetry(1)
    assert stage.orbit_from_symmetry(study, 1, 1) is None  # another final checkpoint
    assert stage.orbit_from_symmetry(study, 2, 2) is None  # fewer batches than asked


# ---- the analysis and the verdict rules ---------------------------------------------------
def _orbit(n_seeds=3, n_batches=2, n=5, *, d_orbit=0.5, eqv_factor=0.1, per_seed=None, seed=0):
    """One-step random; augment = one-step + d_orbit on the non-identity elements (or + the
    per-seed values `per_seed`), equivariance times eqv_factor there."""
    rng = np.random.default_rng(seed)
    labels = ["e", *D4]
    shape = (n_seeds, n_batches, len(labels), n)
    diag = rng.normal(1.0, 0.5, shape)
    eqv = np.exp(rng.normal(0.5, 0.3, shape))
    eqv[:, :, 0] = 1.0
    shift = np.full(n_seeds, d_orbit) if per_seed is None else np.asarray(per_seed, float)
    aug_diag, aug_eqv = diag.copy(), eqv.copy()
    aug_diag[:, :, 1:] += shift[:, None, None, None]
    aug_eqv[:, :, 1:] *= eqv_factor
    dims = ("recipe", "seed", "batch", "element", "example")
    return xr.Dataset(
        {"equivariance": (dims, np.stack([eqv, aug_eqv])),
         "orbit_diagonal": (dims, np.stack([diag, aug_diag]))},
        coords={"recipe": ["one-step", "augment"], "seed": np.arange(n_seeds) + 10,
                "batch": np.arange(n_batches), "element": labels, "example": np.arange(n)},
        attrs={"epoch": 15})


def test_orbit_observables_are_the_direct_means():
    orbit = _orbit()
    obs = ai.orbit_observables(orbit)
    diag, eqv = orbit["orbit_diagonal"].values, orbit["equivariance"].values
    np.testing.assert_allclose(obs["orbit"].values, diag.mean(-1))
    np.testing.assert_allclose(obs["log_equivariance"].values, np.log10(eqv).mean(-1))
    np.testing.assert_allclose(obs["orbit_d4"].values, diag[:, :, :, 1:].mean((-2, -1)))
    np.testing.assert_allclose(obs["log_equivariance_d4"].values, np.log10(eqv[:, :, :, 1:]).mean((-2, -1)))
    np.testing.assert_allclose(obs["log_equivariance"].sel(element="e").values, 0.0)


@pytest.mark.parametrize("d_orbit, eqv_factor, orbit_word, eqv_word", [
    (0.5, 0.1, "raises", "lowers"),  # augment raises orbit influence, lowers the error
    (-0.5, 10.0, "lowers", "raises"),
])
def test_orbit_effects_and_verdicts_on_known_answers(d_orbit, eqv_factor, orbit_word, eqv_word):
    from pdeinf.pipeline.findings import validate_record
    from pdeinf.pipeline.report import to_jsonable

    eff = ai.orbit_effects(_orbit(d_orbit=d_orbit, eqv_factor=eqv_factor))
    # paired by seed and batch: every seed's difference is exactly the shift
    np.testing.assert_allclose(eff["d_orbit"].values, d_orbit)
    np.testing.assert_allclose(eff["d_log_equivariance"].values, np.log10(eqv_factor))
    assert eff["verdict_d_orbit"].item() == orbit_word
    assert eff["verdict_d_log_equivariance"].item() == eqv_word
    est = eff["orbit_d4"].sel(ci="estimate")
    assert float(est.sel(recipe="augment") - est.sel(recipe="one-step")) == pytest.approx(d_orbit)
    records = ai.orbit_findings(eff, "CE", "unet")
    assert set(records) == {"augment_raises_orbit_influence", "augment_lowers_equivariance_error"}
    for name, rows in records.items():
        row = validate_record(to_jsonable(rows[0]), name)
        assert row["recipe"] == "augment" and row["n_seeds"] == 3 and row["n_batches"] == 2
        assert name in row["rule"] and row["per_seed"] == pytest.approx([row["estimate"]] * 3)
        # every seed and batch moves by the same shift: no spread, 2 seeds would do
        assert row["needed"]["n_seeds"] == 2
    sentence = ai.orbit_sentence(eff, "CE", "unet")
    assert ("raises orbit influence" if d_orbit > 0 else "lowers orbit influence") in sentence


def test_orbit_verdict_is_inconclusive_when_the_interval_holds_zero_and_needs_two_seeds():
    # seeds disagree in sign: the interval of the mean contains 0
    eff = ai.orbit_effects(_orbit(per_seed=[1.0, -1.0, 0.5]))
    low, high = float(eff["d_orbit"].sel(ci="low")), float(eff["d_orbit"].sel(ci="high"))
    assert low < 0 < high and eff["verdict_d_orbit"].item() == "inconclusive"
    assert "(inconclusive)" in ai.orbit_sentence(eff, "CE", "unet")
    one = ai.orbit_effects(_orbit(n_seeds=1, d_orbit=2.0))
    assert np.isnan(float(one["d_orbit"].sel(ci="low")))  # no interval over one seed
    assert one["verdict_d_orbit"].item() == "not estimable"
    assert one["verdict_d_log_equivariance"].item() == "not estimable"
    assert "not estimable" in ai.orbit_sentence(one, "CE", "unet")


def test_orbit_table_figure_and_bad_input():
    from pdeinf.viz.interventions import orbit_figure

    table = ai.orbit_element_table(_orbit())
    assert table["orbit"].dims == ("ci", "recipe", "element")
    assert np.all(table["orbit"].sel(ci="low") <= table["orbit"].sel(ci="high"))
    fig = orbit_figure(table, title="CE unet")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 2 and all("[ours]" in t for t in titles)
    with pytest.raises(InputError, match="orbit_diagonal"):
        ai.orbit_observables(_orbit().drop_vars("orbit_diagonal"))
    with pytest.raises(InputError, match="recipe"):
        ai.orbit_effects(_orbit().sel(recipe=["one-step"]))


def test_symmetry_stage_cache_is_read_only_when_current(home):
    from pdeinf.pipeline import symmetry as ps

    prof = _profile(checkpoints={"CE": (1, 2), "NS": (1, 2)}, symmetry_shifts=(1,),
                    symmetry_orbit_epochs=(2,))

    class SymSources:
        def checkpoint(self, seed, epoch):
            path = home / f"sym_s{seed}_e{epoch}.pt"
            if not path.is_file():
                path.write_bytes(f"{seed}-{epoch}".encode())
            return path

        def model(self, seed, epoch):
            return _conv_net(seed + epoch), {}

        def batch(self, seed, index):
            return _batch(seed + index)

        def data_key(self):
            return "fake-data"

    src = SymSources()
    out = home / "sym"
    assert ps.cached_seed(prof, "NS", "unet", 1, sources=src, out_root=out) is None  # nothing yet
    ps.run_symmetry(dataclasses.replace(prof, seeds=(1,)), "NS", "unet", sources=src, out_root=out,
                    progress=False)
    ds = ps.cached_seed(prof, "NS", "unet", 1, sources=src, out_root=out)
    assert ds is not None and "orbit_diagonal" in ds and int(ds.attrs["final_epoch"]) == 2
    src.checkpoint(1, 2).write_bytes(b"retrained")  # stale: never reused
    assert ps.cached_seed(prof, "NS", "unet", 1, sources=src, out_root=out) is None
    assert ps.cached_seed(dataclasses.replace(prof, symmetry_pairs=(("CE", "unet"),)), "NS", "unet",
                          1, sources=src, out_root=out) is None  # not a symmetry pair
