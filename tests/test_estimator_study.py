"""The estimator study: pure analyses against direct numpy, the lambda -> 0 limits on
tiny float64 models, and the cached stage at the smoke profile."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import xarray as xr

from pdeinf.analysis import estimator as ae
from pdeinf.errors import InputError


def _direct_std(a):
    return a / a.std(axis=1, ddof=1, keepdims=True)


def _layout(n_c, n_t):
    c = np.repeat(np.arange(n_c), n_t)
    t = np.tile(np.arange(n_t), n_c)
    return c, t


def _direct_findings(pi, n_c):
    """The one-batch findings by explicit loops over entries."""
    n = pi.shape[0]
    n_t = n // n_c
    h = _direct_std(pi)
    c, t = _layout(n_c, n_t)
    diag = np.mean([abs(h[i, i]) for i in range(n)])
    off = np.mean([abs(h[i, j]) for i in range(n) for j in range(n) if i != j])
    near_intra = [h[i, j] for i in range(n) for j in range(n) if c[i] == c[j] and abs(t[i] - t[j]) == 1]
    near_inter = [h[i, j] for i in range(n) for j in range(n) if c[i] != c[j] and abs(t[i] - t[j]) == 1]
    far_intra = [h[i, j] for i in range(n) for j in range(n) if c[i] == c[j] and abs(t[i] - t[j]) >= 3]
    cm = np.array([[np.mean([h[i, j] for i in range(n) for j in range(n) if c[i] == a and c[j] == b])
                    for b in range(n_c)] for a in range(n_c)])
    return {"offdiagonal_mass": off / diag,
            "lag1_gap": np.median(near_intra) - np.median(near_inter),
            "temporal_decay": (np.mean(near_intra) - np.mean(far_intra)) if far_intra else np.nan,
            "class_locked": np.mean(np.diag(cm)) - np.mean(cm[~np.eye(n_c, dtype=bool)])}


def test_offdiagonal_mass_matches_engine_and_direct_values():
    from pdeinf.influence.fullspace import offdiagonal_mass

    rng = np.random.default_rng(0)
    batch = rng.normal(size=(3, 2, 9, 9))
    got = ae.offdiagonal_mass(batch)
    assert got.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert got[i, j] == pytest.approx(offdiagonal_mass(batch[i, j]), rel=1e-12)
            assert got[i, j] == pytest.approx(_direct_findings(batch[i, j], 3)["offdiagonal_mass"], rel=1e-12)
    assert ae.offdiagonal_mass(np.diag(np.arange(1.0, 6.0))) == 0.0
    a, b = 2.0, -0.5
    assert float(ae.offdiagonal_mass(a * np.eye(5) + b)) == pytest.approx(abs(b) / abs(a + b))


@pytest.mark.parametrize("n_t", [3, 5])
def test_batch_findings_match_direct_loops(n_t):
    rng = np.random.default_rng(n_t)
    n_c = 3
    pis = rng.normal(size=(2, n_c * n_t, n_c * n_t)) + 3 * np.eye(n_c * n_t)
    da = xr.DataArray(pis, dims=("solve", "n_resp", "n_pert"), coords={"solve": [10, 20]})
    got = ae.batch_findings(da, n_c)
    assert got.dims == ("solve", "finding") and list(got["solve"].values) == [10, 20]
    for k in range(2):
        ref = _direct_findings(pis[k], n_c)
        for f in ae.FINDINGS:
            if np.isnan(ref[f]):
                assert np.isnan(float(got.isel(solve=k).sel(finding=f)))  # T < 4: no |dt| >= 3
            else:
                assert float(got.isel(solve=k).sel(finding=f)) == pytest.approx(ref[f], rel=1e-10, abs=1e-12)


def test_findings_of_a_structured_matrix_have_the_expected_signs():
    # banded within classes (a ridge), nothing across classes
    n_c, n_t = 3, 6
    c, t = _layout(n_c, n_t)
    pi = np.where(c[:, None] == c[None, :], np.exp(-np.abs(t[:, None] - t[None, :])), 0.0)
    f = ae.batch_findings(pi, n_c)
    assert float(f.sel(finding="temporal_decay")) > 0
    assert float(f.sel(finding="lag1_gap")) > 0
    assert float(f.sel(finding="class_locked")) > 0
    # the identity: nothing off the diagonal
    eye = ae.batch_findings(np.eye(n_c * n_t), n_c)
    assert float(eye.sel(finding="offdiagonal_mass")) == 0.0
    with pytest.raises(InputError, match="n_classes"):
        ae.batch_findings(np.eye(10), 3)


def test_class_ratio_matches_direct_sums():
    rng = np.random.default_rng(3)
    n_c, n_t = 3, 4
    pi = rng.normal(size=(n_c * n_t, n_c * n_t))
    for norm, m in (("none", pi), ("standard", _direct_std(pi))):
        got = ae.class_ratio(pi, n_c, norm)
        for k in range(n_c):
            block = m[k * n_t:(k + 1) * n_t, k * n_t:(k + 1) * n_t]
            assert got[k] == pytest.approx((block.sum() - np.trace(block)) / np.trace(block), rel=1e-12)


def test_entry_agreement_and_table():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(4)
    a = rng.normal(size=(8, 8))
    b = a + 0.1 * rng.normal(size=(8, 8))
    got = ae.entry_agreement(a, b)
    off = ~np.eye(8, dtype=bool)
    sa, sb = _direct_std(a), _direct_std(b)
    assert got["pearson_offdiagonal"] == pytest.approx(np.corrcoef(sa[off], sb[off])[0, 1], rel=1e-12)
    assert got["spearman_offdiagonal"] == pytest.approx(spearmanr(sa[off], sb[off])[0], rel=1e-12)
    assert ae.entry_agreement(a, 5.0 * a)["pearson_all"] == pytest.approx(1.0)  # scale-free
    fa = xr.DataArray([0.3, 1.0, -0.2, 0.5], dims="finding", coords={"finding": list(ae.FINDINGS)})
    fb = xr.DataArray([0.6, 2.0, 0.1, np.nan], dims="finding", coords={"finding": list(ae.FINDINGS)})
    table = ae.agreement_table(fa, fb)
    assert table.loc["offdiagonal_mass", "same_sign"] is None  # positive by construction
    assert table.loc["lag1_gap", "same_sign"] is True and table.loc["temporal_decay", "same_sign"] is False
    assert table.loc["class_locked", "same_sign"] is None  # NaN: no verdict
    assert table.loc["lag1_gap", "difference"] == pytest.approx(1.0)


def test_ablation_effect_of_a_constant_shift():
    rng = np.random.default_rng(5)
    base = xr.DataArray(rng.normal(size=(3, 2, 4)), dims=("seed", "batch", "finding"),
                        coords={"finding": list(ae.FINDINGS)})
    out = ae.ablation_effect(base, base + 0.25)
    assert np.allclose(out["change"].values, 0.25)  # every replicate: the same shift
    per_seed = base.values.mean(1)
    assert np.allclose(out["seed_spread"].values, per_seed.std(0, ddof=1))
    assert np.allclose(out["base"].sel(ci="estimate").values, base.values.mean((0, 1)))
    low, high = out["base"].sel(ci="low").values, out["base"].sel(ci="high").values
    assert np.all(low <= high)
    with pytest.raises(InputError, match="base"):
        ae.ablation_effect(base.isel(batch=0), base)


def test_r_normalization_effect_matches_class_ratio():
    rng = np.random.default_rng(6)
    pi = rng.normal(size=(2, 3, 9, 9)) + 4 * np.eye(9)
    da = xr.DataArray(pi, dims=("seed", "batch", "n_resp", "n_pert"))
    out = ae.r_normalization_effect(da, 3)
    raw = ae.class_ratio(pi, 3, "none").mean(-1).mean()
    std = ae.class_ratio(pi, 3, "standard").mean(-1).mean()
    assert float(out["change"].sel(ci="estimate")) == pytest.approx(std - raw)


def test_flat_matrices_is_class_major():
    n_c, n_t = 3, 2
    vals = np.arange((n_c * n_t) ** 2, dtype=float).reshape(n_c * n_t, n_c * n_t)
    c, t = _layout(n_c, n_t)
    lab = np.empty((n_t, n_c, n_t, n_c))
    for i in range(n_c * n_t):
        for j in range(n_c * n_t):
            lab[t[i], c[i], t[j], c[j]] = vals[i, j]
    da = xr.DataArray(lab, dims=("t_resp", "c_resp", "t_pert", "c_pert"))
    assert np.array_equal(ae.flat_matrices(da).values, vals)


def test_lambda_limit_identity_and_projection():
    """P > M with J of full row rank: Pi_out -> I and H -> diagonal; P < M: Pi_out -> the
    orthogonal projection onto range(J), whose H keeps off-diagonal mass; Krylov = dense."""
    from pdeinf.pipeline.estimator import tiny_cases

    cases = tiny_cases()
    lams = [1e-2, 1e-10]
    over = ae.lambda_limit(*cases["P > M"], lams, krylov=[1e-10], rtol=1e-10)
    assert over.attrs["P"] > over.attrs["M"] and over.attrs["full_row_rank"] == 1
    assert float(over.distance_identity[-1]) < 1e-6
    assert float(over.mass_dense[-1]) < 1e-6 and float(over.mass_krylov[-1]) < 1e-5
    assert float(over.mass_dense[0]) > float(over.mass_dense[-1])
    assert np.isnan(float(over.mass_krylov[0]))  # Krylov run only where asked
    under = ae.lambda_limit(*cases["P < M"], lams, krylov=[1e-2], rtol=1e-10)
    assert under.attrs["P"] < under.attrs["M"] and under.attrs["full_row_rank"] == 0
    assert float(under.distance_projection[-1]) < 1e-6
    assert float(under.distance_identity[-1]) > 0.1  # not the identity
    assert float(under.mass_dense[-1]) == pytest.approx(float(under.mass_limit), rel=1e-6)
    assert float(under.mass_limit) > 1e-2
    assert float(under.krylov_error[0]) < 1e-6
    with pytest.raises(InputError, match="float64"):
        model, x, y = cases["P > M"]
        ae.lambda_limit(model.float(), x.float(), y.float(), lams)


def test_ridge_paragraph_rule():
    f = list(ae.FINDINGS)

    def findings(decay, n=1):
        v = np.tile([[0.3, 0.5, decay, 0.2]], (n, 1))
        return xr.DataArray(v, dims=("solve", "finding"), coords={"finding": f})

    fs = findings(0.4, 3)
    ref = fs.isel(solve=0)
    same = ae.ridge_paragraph(fs, np.array([True] * 3), ref, findings(0.2).isel(solve=0))
    assert same["verdict"] == "not set by the estimator" and "+0.2" in same["paragraph"]
    flip = ae.ridge_paragraph(fs, np.array([True] * 3), ref, findings(-0.2).isel(solve=0))
    assert flip["verdict"] == "set by the estimator"
    mixed_fs = xr.concat([findings(0.4), findings(-0.1)], dim="solve")
    mixed = ae.ridge_paragraph(mixed_fs, np.array([True, True]), mixed_fs.isel(solve=0),
                               findings(0.2).isel(solve=0))
    assert mixed["verdict"] == "partly set by the estimator"
    stuck = ae.ridge_paragraph(fs, np.array([False] * 3), ref, findings(0.2).isel(solve=0),
                               reference_converged=False)
    assert stuck["verdict"].startswith("not settled")


# ---- the cached stage ----------------------------------------------------------------
@pytest.mark.slow
def test_stage_caches_and_recomputes_only_the_damaged_task():
    from pdeinf.config import get_profile
    from pdeinf.pipeline import estimator as stage

    prof = get_profile("smoke")
    pde, model = stage.study_pairs(prof)[0]
    out = stage.ensure_estimator_pair(prof, pde, model, progress=False)
    assert sorted(out) == sorted(prof.seeds)
    ds = out[prof.seeds[0]]
    sub = stage.study_subset(prof)
    assert ds.sizes["n"] == 3 * sub.times and ds.attrs["fullspace"] == 1
    assert np.isfinite(ds["fs_pi"].values).all() and np.isfinite(ds["sub_bra"].values).all()
    # the tolerance chain is one CG run continued: iterations never decrease along it
    on_chain = np.isclose(ds["fs_lambda"].values, prof.fullspace_damping)
    chain = ds["fs_iterations"].values[on_chain]  # solves in order loosest -> tightest rtol
    assert np.all(np.diff(ds["fs_rtol"].values[on_chain]) < 0)
    assert np.all(np.diff(chain, axis=0) >= 0)
    assert int(ds["fs_iterations"].max()) <= sub.maxiter
    files = [stage.task_file(prof, pde, model, s) for s in prof.seeds]
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    stage.ensure_estimator_study(prof, progress=False)
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps  # warm: nothing recomputed
    victim = files[-1]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])  # truncated: unreadable
    damaged = os.stat(victim).st_mtime_ns
    again = stage.ensure_estimator_pair(prof, pde, model, progress=False)
    assert os.stat(victim).st_mtime_ns != damaged  # rewritten
    assert [f for f in files if os.stat(f).st_mtime_ns != stamps[f]] == [victim]
    assert np.allclose(again[prof.seeds[-1]]["sub_damping"].values, out[prof.seeds[-1]]["sub_damping"].values)


def test_the_study_subset_is_the_profiles_own_not_looked_up_by_name():
    """A renamed copy of a profile keeps that profile's subset; the stage key follows the fields."""
    import dataclasses

    from pdeinf.config import get_profile
    from pdeinf.pipeline import estimator as stage

    smoke = get_profile("smoke")
    mine = dataclasses.replace(smoke, name="my-profile")
    assert stage.study_subset(mine) == stage.study_subset(smoke)
    assert stage.study_pairs(mine) == [("CE", "unet")] and stage.study_subset(mine).times == 4
    wider = dataclasses.replace(mine, estimator_pairs=None, estimator_times=None)
    assert stage.study_pairs(wider) == smoke.pairs()
    assert stage.study_subset(get_profile("paper")) == stage.Subset(None, None, None, None)


@pytest.mark.parametrize("field, value, words", [
    ("estimator_times", 0, "estimator_times=0"),
    ("estimator_times", 99, "estimator_times=99"),
    ("estimator_maxiter", float("nan"), "estimator_maxiter=nan"),
    ("estimator_fullspace_seeds", 2, "estimator_fullspace_seeds=2"),
    ("estimator_pairs", (("CE", "resnet"),), "estimator_pairs holds ('CE', 'resnet')"),
])
def test_a_bad_study_subset_is_one_clear_error_before_any_work(field, value, words):
    import dataclasses

    from pdeinf.config import get_profile
    from pdeinf.pipeline import estimator as stage

    bad = dataclasses.replace(get_profile("smoke"), name="bad", **{field: value})
    with pytest.raises(InputError, match=re.escape(words)):
        stage.study_pairs(bad)


@pytest.mark.slow
def test_smoke_estimator_study_holds_the_invariants(smoke_home):
    """The smoke profile's study (mathematics, not numbers of a run): Krylov equals the dense H
    on the tiny models; with P > M and J of full row rank Pi_out -> I and H -> diagonal; always
    Pi_out -> the projection onto range(J), monotonely in lambda; the analysis' off-diagonal
    mass is the engine's; residuals and iterations >= 0; the subspace Gauss-Newton influence
    with SMSE bra is symmetric PSD; a finer energy cut keeps more modes. Each section's text
    names what it reports."""
    from pdeinf.config import get_profile
    from pdeinf.influence.fullspace import offdiagonal_mass
    from pdeinf.pipeline import estimator as stage

    prof = get_profile("smoke")
    limits = stage.limit_study()
    for case, ds in limits.items():
        assert np.nanmax(ds.krylov_error.values) < 1e-5, case  # Krylov = dense H
        if ds.attrs["full_row_rank"]:  # P > M, J of full row rank: Pi_out -> I, H -> diagonal
            assert float(ds.distance_identity[-1]) < 1e-6 and float(ds.mass_dense[-1]) < 1e-6, case
        assert float(ds.distance_projection[-1]) < 1e-6, case  # always: the projection onto range(J)
        assert np.all(np.diff(ds.distance_projection.values) <= 1e-12), case  # monotone in lambda
    study = {pair: stage.ensure_estimator_pair(prof, *pair, progress=False) for pair in stage.study_pairs(prof)}
    assert study
    for pair, per_seed in study.items():
        full = stage.fullspace_seeds(prof)
        assert [s for s, d in per_seed.items() if d.attrs["fullspace"]] == list(full), pair
        ds = per_seed[full[0]]
        for i in range(ds.sizes["solve"]):  # the analysis' off-diagonal mass is the engine's
            assert np.isclose(float(ae.offdiagonal_mass(ds.fs_pi.isel(solve=i).values)),
                              offdiagonal_mass(ds.fs_pi.isel(solve=i).values)), pair
        assert np.all(ds.fs_residual.values >= 0) and np.all(ds.fs_iterations.values >= 0), pair
        for one in per_seed.values():
            for d in one.damping.values:  # subspace Gauss-Newton influence with SMSE bra: symmetric PSD
                m = one.sub_damping.sel(damping=d).values
                assert np.allclose(m, m.T, atol=1e-8 * np.abs(m).max()), pair
                assert np.linalg.eigvalsh(0.5 * (m + m.T)).min() >= -1e-8 * np.abs(m).max(), pair
            ranks = one.sub_rank.sel(energy_tol=sorted(one.energy_tol.values, reverse=True)).values
            assert np.all(np.diff(ranks) >= 0) and ranks.max() <= one.sizes["n"], pair  # finer cut, more modes
        table, sub = ae.fullspace_table(ds), ae.subspace_tables(per_seed)
        assert len(ae.describe_fullspace(table).splitlines()) == ds.sizes["solve"] + 2
        assert "energy_tol" in ae.describe_subspace(sub) and "damping" in ae.describe_subspace(sub)
        assert ae.ridge_summary(table, sub, damping=prof.damping).startswith("The narrow ridge is ")
        compared = ae.side_by_side(ds, damping=prof.damping, energy_tol=prof.energy_tol)
        text = ae.describe_estimators(compared, ae.bra_ablations(sub))
        assert text.startswith("smse bra: pearson_offdiagonal") and "findings whose sign differs" in text
    assert "P > M" in ae.describe_limit(limits, stage.pm_table(prof))


def test_limit_table_prints_round_off_as_a_bound():
    """A table value at float64 round-off prints as "<1e-12" (its digits depend on the BLAS), a
    value above it and an exact zero print as numbers, so reruns print the same table."""
    ds = xr.Dataset({"krylov_error": ("lambda", [1e-3, 3.61e-15]), "mass_dense": ("lambda", [0.5, 0.215]),
                     "mass_limit": ((), 0.0)}, coords={"lambda": [1e-2, 1e-10]}, attrs={"P": 3, "M": 2})
    text = ae.describe_limit({"P > M": ds}, [{"pde": "CE"}])
    row = text.splitlines()[1].split()
    assert row[row.index("1e-10") + 3:] == ["<1e-12", "0.215", "0"], text


def test_limit_figure_draws_round_off_on_its_floor():
    """Two λ-limit studies that differ only in round-off (below `ROUND_OFF`) or in a value's
    eighth digit (the thread count moves it) draw the same PDF bytes, and one that differs in a
    result does not: the figure moves only with results."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from pdeinf.pipeline.report import _STABLE_METADATA
    from pdeinf.viz.estimator import limit_figure

    def pdf(off: float, mass: float = 7.5e-12, distance: float = 3e-6) -> bytes:
        lam = [1e-2, 1e-6, 1e-10]
        ds = xr.Dataset({"distance_identity": ("lambda", [3e-2, distance, 3e-10]),
                         "distance_projection": ("lambda", [3e-2, 3e-6, 3e-10]),
                         "mass_dense": ("lambda", [7e-4, 7e-8, mass]),
                         "mass_krylov": ("lambda", [7e-4, np.nan, mass]),
                         "mass_limit": ((), off)}, coords={"lambda": lam},
                        attrs={"P": 9, "M": 4, "rank_J": 4})
        buffer = io.BytesIO()
        limit_figure({"P > M": ds}).savefig(buffer, format="pdf", metadata=_STABLE_METADATA["pdf"])
        return buffer.getvalue()

    assert pdf(1.755e-16) == pdf(3.2e-15) == pdf(0.0) == pdf(0.0, distance=3.0000002e-6)
    assert pdf(1.755e-16) != pdf(1.755e-16, mass=2e-11)
