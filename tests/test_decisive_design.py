"""The power analysis of a finding (`pdeinf.analysis.statistics.decisive_design`, the records'
`needed`) on synthetic hierarchical data whose answer is known: planted effects and variance
components, one-batch and zero-spread designs, value rules, and the records of the notebooks'
finding producers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats
from test_seed_paper import _dataset

from pdeinf.analysis import seed_paper as sp
from pdeinf.analysis import seed_paper_findings as spf
from pdeinf.analysis.statistics import (
    BEYOND_GRID,
    DECISIVE_AS_MEASURED,
    LARGER_DESIGN,
    NEEDED_STATUSES,
    NOT_ESTIMABLE,
    decisive_design,
    describe_needed,
    hierarchical_bootstrap,
    independent_difference,
    pearson_units,
    ratio_units,
    spearman_units,
    unit_components,
)
from pdeinf.analysis.verdicts import apply_rule, needed_for_rule
from pdeinf.errors import InputError

Z = stats.norm.ppf(0.975)


def noise(n_seeds=3, n_batches=3, *, s_seed=0.5, s_batch=1.0, rng_seed=0) -> np.ndarray:
    """Zero-mean hierarchical noise a_s + e_sb (mean exactly 0 over all units)."""
    rng = np.random.default_rng(rng_seed)
    x = s_seed * rng.standard_normal((n_seeds, 1)) + s_batch * rng.standard_normal((n_seeds,
                                                                                    n_batches))
    return x - x.mean()


def units(values) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims=("seed", "batch"))


def exact_pilot(effect, s_seed, s_batch) -> xr.DataArray:
    """A 2 x 2 design whose ANOVA components are exactly (s_seed, s_batch) and mean `effect`."""
    dev = s_batch / math.sqrt(2)
    q = math.sqrt((2 * s_seed ** 2 + s_batch ** 2) / 4)
    return units(effect + np.array([-q, q])[:, None] + np.array([-dev, dev])[None, :])


# --------------------------------------------------------------------------- known answers


def test_large_planted_effect_is_decisive_at_the_measured_design():
    data = units(noise() + 5.0)
    need = decisive_design(data)
    assert need["status"] == DECISIVE_AS_MEASURED and need["criterion"] == "null"
    assert (need["n_seeds"], need["n_batches"]) == (3, 3)
    assert need["effect"] == pytest.approx(5.0)
    # the bootstrap agrees, and the record's verdict passed in gives the same answer
    ci = hierarchical_bootstrap(data, lambda d: d.mean(("seed", "batch")), n_resamples=300)
    word = apply_rule("temporal_decay", ci)
    assert str(word) == "reproduced"
    assert needed_for_rule("temporal_decay", data, verdict=word)["status"] == DECISIVE_AS_MEASURED
    assert describe_needed(need) == "decisive at 3 x 3 (as measured)"


def test_zero_effect_is_beyond_the_grid():
    need = decisive_design(units(noise()))
    assert need["status"] == BEYOND_GRID
    assert need["n_seeds"] is None and need["n_batches"] is None
    assert need["largest"] == [20, 36]
    assert describe_needed(need) == "beyond the grid (> 20 x 36)"
    # also when told the measured verdict was inconclusive, and with a finer grid
    need = decisive_design(units(noise()), decisive=False, n_seeds=range(2, 1000))
    assert need["status"] == BEYOND_GRID and need["largest"] == [999, 36]


@pytest.mark.parametrize("n_batches", [2, 6])
def test_needed_seeds_grow_as_one_over_effect_squared(n_batches):
    """Seeds only (the batch grid is the measured B): S* = ceil(z^2 v / d^2) with v = s_seed^2
    + s_batch^2 / B the per-seed variance, so halving the effect quadruples the seeds."""
    base = noise(4, n_batches, s_seed=0.4, s_batch=1.0, rng_seed=3)
    comp = unit_components(units(base))
    v = comp["s_seed"] ** 2 + comp["s_batch"] ** 2 / n_batches
    found = {}
    for effect in (0.4, 0.2, 0.1, 0.05):
        need = decisive_design(units(base + effect), decisive=False,
                               n_seeds=range(2, 100_000), n_batches=(n_batches,))
        assert need["status"] == LARGER_DESIGN and need["n_batches"] == n_batches
        s_star = need["n_seeds"]
        assert (Z * math.sqrt(v / s_star) < effect <= Z * math.sqrt(v / (s_star - 1))
                or s_star == 5)  # the smallest S above the measured 4 that clears 0
        found[effect] = s_star
    for big, small in ((0.2, 0.1), (0.1, 0.05)):
        assert found[small] / found[big] == pytest.approx(4.0, rel=0.1)


def test_needed_design_has_at_least_half_power_and_one_seed_less_has_not():
    """With the components known exactly, the reported design is the smallest number of seeds
    whose simulated z-test rejects in at least half of the experiments (|d| > z se)."""
    effect, s_seed, s_batch, n_batches = 0.3, 0.5, 1.0, 3
    need = decisive_design(exact_pilot(effect, s_seed, s_batch), n_seeds=range(2, 200),
                           n_batches=(n_batches,))
    assert need["status"] == LARGER_DESIGN
    n_batches = need["n_batches"]  # the grid's B or the measured 2, whichever needs fewer runs
    rng = np.random.default_rng(11)

    def rate(n_seeds):
        sims = (effect + s_seed * rng.standard_normal((4000, n_seeds, 1))
                + s_batch * rng.standard_normal((4000, n_seeds, n_batches))).mean(axis=(1, 2))
        se = math.sqrt(s_seed ** 2 / n_seeds + s_batch ** 2 / (n_seeds * n_batches))
        return np.mean(np.abs(sims) > Z * se)

    assert rate(need["n_seeds"]) >= 0.48
    assert rate(need["n_seeds"] - 1) < 0.52


def test_inconclusive_verdict_is_never_answered_with_a_design_already_measured():
    # the plug-in alone calls 3 x 3 enough; the (wider) bootstrap said inconclusive
    data = units(noise(rng_seed=1) * 0.2 + 0.4)
    assert decisive_design(data)["status"] == DECISIVE_AS_MEASURED
    need = decisive_design(data, decisive=False)
    assert need["status"] == LARGER_DESIGN
    assert need["n_seeds"] >= 3 and need["n_batches"] >= 3
    assert (need["n_seeds"], need["n_batches"]) != (3, 3)
    # and a decisive bootstrap verdict stands even where the plug-in would want more
    weak = units(noise(rng_seed=1) + 0.1)
    assert decisive_design(weak)["status"] != DECISIVE_AS_MEASURED
    need = decisive_design(weak, decisive=True)
    assert need["status"] == DECISIVE_AS_MEASURED and need["criterion"] is None


def test_fewest_runs_then_fewest_seeds():
    # batches carry all the noise: more batches per seed are as good as more seeds
    data = exact_pilot(0.5, 0.0, 2.0)
    need = decisive_design(data, decisive=False)
    runs = need["n_seeds"] * need["n_batches"]
    assert Z * 2.0 / math.sqrt(runs) < 0.5
    for s in (2, 3, 4, 5, 6, 8, 10, 15, 20):
        for b in (2, 3, 6, 12, 18, 36):
            if s * b < runs:
                assert Z * 2.0 / math.sqrt(s * b) >= 0.5  # no cheaper design clears 0
            if s * b == runs:
                assert s >= need["n_seeds"]


# --------------------------------------------------------------------------- degenerate designs


def test_one_batch_lets_only_seeds_vary():
    per_seed = noise(6, 1, rng_seed=2) + 0.8
    need = decisive_design(units(per_seed), decisive=False)
    assert need["s_batch"] is None and need["n_batches"] == 1
    assert need["s_seed"] == pytest.approx(np.std(per_seed, ddof=1))
    assert need["status"] == LARGER_DESIGN and need["n_seeds"] > 6
    s_star = need["n_seeds"]
    assert Z * need["s_seed"] / math.sqrt(s_star) < 0.8
    assert Z * need["s_seed"] / math.sqrt(max(d for d in (6, 8, 10, 15, 20) if d < s_star)) >= 0.8
    # per-seed values without a batch dim: the same, reporting the batches behind each value
    flat = xr.DataArray(per_seed[:, 0], dims=("seed",))
    other = decisive_design(flat, decisive=False, n_batches_measured=3)
    assert other["n_seeds"] == need["n_seeds"] and other["s_seed"] == need["s_seed"]
    assert other["n_batches"] == 3
    # a large effect per seed is decisive as measured
    assert decisive_design(flat + 10)["status"] == DECISIVE_AS_MEASURED


def test_zero_spread():
    need = decisive_design(units(np.full((3, 3), 0.7)))
    assert need["status"] == DECISIVE_AS_MEASURED
    assert need["s_seed"] == pytest.approx(0, abs=1e-12)
    assert need["s_batch"] == pytest.approx(0, abs=1e-12)
    need = decisive_design(units(np.zeros((3, 3))))  # the effect is exactly the null
    assert need["status"] == BEYOND_GRID and need["effect"] == 0.0


def test_not_estimable_designs():
    one_seed = decisive_design(units(noise(1, 4) + 3.0), estimate=3.0)
    assert one_seed["status"] == NOT_ESTIMABLE and one_seed["n_seeds"] is None
    assert "1 seed" in one_seed["reason"] and one_seed["effect"] == pytest.approx(3.0)
    assert describe_needed(one_seed).startswith("not estimable (1 seed")
    bad = noise() + 1.0
    bad[0, 0] = np.nan
    assert decisive_design(units(bad))["status"] == NOT_ESTIMABLE
    assert decisive_design(units(noise()), estimate=math.nan)["status"] == NOT_ESTIMABLE
    # a value rule without the paper's number can never be decisive
    need = needed_for_rule("correlation_length", units(noise() + 1), key=None)
    assert need["status"] == NOT_ESTIMABLE and "no paper value" in need["reason"]
    assert describe_needed(None) == "–"
    with pytest.raises(InputError, match="dims"):
        decisive_design(xr.DataArray(np.ones((3, 3, 2)), dims=("seed", "batch", "lag")))
    with pytest.raises(InputError, match="band"):
        decisive_design(units(noise()), band=(2.0, 1.0))


# --------------------------------------------------------------------------- value rules


def test_value_rule_takes_the_smaller_of_null_and_paper_value():
    """correlation_length (null 0, NS paper value 2 +- 0.3): a crossing near 0.4 is far from
    the band (gap 1.3) but close to the null: missing the band decides first."""
    data = units(noise(s_seed=0.3, s_batch=0.6, rng_seed=4) + 0.4)
    null_only = decisive_design(data, decisive=False)  # a sign rule on the same data
    need = needed_for_rule("correlation_length", data, key="NS", verdict="inconclusive")
    assert need["criterion"] is not None and "paper band" in need["criterion"]
    assert need["n_seeds"] * need["n_batches"] <= null_only["n_seeds"] * null_only["n_batches"]
    comp = unit_components(data)
    se = math.sqrt(comp["s_seed"] ** 2 / need["n_seeds"]
                   + comp["s_batch"] ** 2 / (need["n_seeds"] * need["n_batches"]))
    assert 2.0 - 0.3 - 0.4 > Z * se  # the plug-in interval misses the band [1.7, 2.3]
    # an estimate inside the band can only be settled by excluding the null
    inside = units(noise(s_seed=0.3, s_batch=0.6, rng_seed=4) * 3 + 2.0)
    need = needed_for_rule("correlation_length", inside, key="NS", verdict="inconclusive")
    assert need["criterion"] in (None, "null")
    # a sign rule ignores the paper's number: only the null counts
    assert needed_for_rule("temporal_decay", data, key="CE-unet", verdict="inconclusive") == \
        decisive_design(data, decisive=False)


# --------------------------------------------------------------------------- units


def test_linearised_units_average_to_their_statistics():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 50))
    y = 0.5 * x + rng.standard_normal(x.shape)
    dims = ("seed", "batch", "pair")
    xa, ya = xr.DataArray(x, dims=dims), xr.DataArray(y, dims=dims)
    assert float(pearson_units(xa, ya).mean()) == pytest.approx(
        np.corrcoef(x.ravel(), y.ravel())[0, 1], abs=1e-12)
    assert float(spearman_units(xa, ya).mean()) == pytest.approx(
        stats.spearmanr(x.ravel(), y.ravel())[0], abs=1e-12)
    assert pearson_units(xa, ya).dims == ("seed", "batch")
    num, den = xr.DataArray(x[..., 0] + 5, dims=dims[:2]), xr.DataArray(y[..., 0] + 9,
                                                                         dims=dims[:2])
    assert float(ratio_units(num, den).mean()) == pytest.approx(
        float(num.mean() / den.mean()), abs=1e-12)


def test_independent_difference_adds_the_variances():
    a = {"mean": 2.0, "s_seed": 0.3, "s_batch": 0.4, "n_seeds": 3, "n_batches": 4}
    b = {"mean": 0.5, "s_seed": 0.4, "s_batch": 0.3, "n_seeds": 4, "n_batches": 3}
    d = independent_difference(a, b)
    assert d["mean"] == 1.5 and d["s_seed"] == pytest.approx(0.5)
    assert d["s_batch"] == pytest.approx(0.5) and (d["n_seeds"], d["n_batches"]) == (3, 3)
    per_seed = {**b, "s_batch": None, "n_batches": 1}
    d = independent_difference(a, per_seed)
    assert d["s_batch"] is None
    assert d["s_seed"] == pytest.approx(math.sqrt(0.09 + 0.16 / 4 + 0.16))
    assert decisive_design(d)["status"] in NEEDED_STATUSES


# --------------------------------------------------------------------------- finding records


def test_seed_paper_records_carry_needed():
    ds = _dataset(np.random.default_rng(0), s=3, b=3)
    hns = {("CE", "unet"): sp.standardized(ds, "C")}
    found = spf.influence_findings(hns, ["temporal_decay", "class_locked"])
    for name, (rec,) in found.items():
        need = rec["needed"]
        assert need["status"] in NEEDED_STATUSES
        assert need["effect"] == pytest.approx(rec["estimate"])  # null 0
        if rec["verdict"] == "inconclusive":
            assert need["status"] != DECISIVE_AS_MEASURED
        else:
            assert need["status"] == DECISIVE_AS_MEASURED
        assert "for a decisive verdict: " in spf.describe_record(name, rec)
    both = {("NS", "unet"): hns[("CE", "unet")],
            ("CE", "unet"): sp.standardized(_dataset(np.random.default_rng(1), s=3, b=3), "C")}
    (rec,) = spf.broader_coherence_findings(both)
    assert rec["needed"]["status"] in NEEDED_STATUSES
    assert rec["needed"]["effect"] == pytest.approx(rec["estimate"])


def test_model_comparison_uses_paired_differences():
    """UNet and ViT share the seed and the test batch: a per-(seed, batch) offset common to
    both cancels in the paired differences (zero spread), not in independent ones."""
    rng = np.random.default_rng(6)
    common = rng.uniform(6, 8, size=(3, 3))
    coords = {"seed": [10, 35, 42], "batch": [0, 1, 2]}
    lam = {m: xr.Dataset({"ntk_top_eigenvalue": (("seed", "batch"), 10 ** (common + shift))},
                         coords=coords) for m, shift in (("unet", 0.02), ("vit", 0.0))}
    (rec,) = spf.ntk_findings({("CE", "unet"): lam["unet"], ("CE", "vit"): lam["vit"]})
    need = rec["needed"]
    assert need["s_seed"] == pytest.approx(0, abs=1e-9)
    assert need["s_batch"] == pytest.approx(0, abs=1e-9)
    assert need["effect"] == pytest.approx(rec["estimate"])
    diff = spf.paired_difference(np.log10(lam["unet"]["ntk_top_eigenvalue"]),
                                 np.log10(lam["vit"]["ntk_top_eigenvalue"]))
    np.testing.assert_allclose(diff.values, 0.02)
    shifted = lam["vit"]["ntk_top_eigenvalue"].assign_coords(seed=[1, 2, 3])
    unpaired = spf.paired_difference(lam["unet"]["ntk_top_eigenvalue"], shifted)
    assert isinstance(unpaired, dict)  # different seeds: independent components


def test_per_seed_validation_records_vary_seeds_only():
    rows = []
    for model, offset in (("unet", 0.0), ("vit", 0.3)):
        for i, seed in enumerate((10, 35, 42, 7)):
            rows.append({"seed": seed, "epoch": 5, "model": model,
                         "val_loss": 10 ** (-3 + offset * (1 + 0.05 * i))})
    frame = pd.DataFrame(rows)
    histories = {("CE", m): frame[frame.model == m].drop(columns="model") for m in ("unet", "vit")}
    found = spf.validation_findings(histories)
    (rec,) = found["vit_beats_unet_ce"]
    need = rec["needed"]
    assert need["s_batch"] is None and rec["n_batches"] == 1
    assert need["n_batches"] in (1, None)
    assert need["effect"] == pytest.approx(rec["estimate"])


def test_similarity_and_correlation_length_records_carry_needed():
    ds = _dataset(np.random.default_rng(2), s=3, b=2)
    curves = {("CE", "unet"): sp.similarity_curves(ds)}
    found = spf.similarity_findings({("CE", "unet"): ds}, curves)
    (decay,) = found["similarity_decay"]
    assert decay["needed"]["effect"] == pytest.approx(decay["estimate"], abs=1e-9)
    (length,) = found["correlation_length"]
    need = length["needed"]
    assert need["status"] in NEEDED_STATUSES
    crossings = spf.seed_crossings(curves[("CE", "unet")])
    assert crossings.dims == ("seed",) and crossings.sizes["seed"] == 3
    if need["status"] not in (NOT_ESTIMABLE,):
        assert need["s_batch"] is None  # per-seed crossings: only seeds vary
