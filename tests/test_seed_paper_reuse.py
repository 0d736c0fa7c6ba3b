"""At the subspace estimator the seed paper's C / M / E matrices are the follow-up sweep's
Gauss-Newton SMSE / mass / energy variants of the same batch: building the seed-paper dataset
from a follow-up dataset must equal computing it afresh (float64, tiny model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pdeinf.errors import InputError
from pdeinf.influence.hat import batch_to_labelled, labelled_to_batch
from pdeinf.influence.task import (
    labelled_influence,
    seed_paper_from_follow_up,
    seed_paper_influence,
)

DAMPING, ENERGY_TOL = 1e-6, 1e-4
VARIANTS = ("gauss-newton", "euclidean", "gn-mass", "gn-energy")  # "adam" needs optimizer state


def test_labelled_to_batch_inverts_batch_to_labelled():
    rng = np.random.default_rng(0)
    pi = rng.normal(size=(2, 3, 12, 12))  # lead dims, N = 3 classes x 4 times
    labelled = batch_to_labelled(pi, 3, 4)
    assert labelled.shape == (2, 3, 4, 3, 4, 3)
    np.testing.assert_array_equal(labelled_to_batch(labelled), pi)
    # class-major: example n = c * T + t sits at [t, c]
    assert labelled[0, 0, 2, 1, 3, 2] == pi[0, 0, 1 * 4 + 2, 2 * 4 + 3]


def _ce_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"), torch.nn.Tanh(),
        torch.nn.Conv2d(6, 4, 3, padding=1, padding_mode="circular")).to(torch.float64)
    inputs = 1.0 + 0.1 * torch.rand(6, 4, 8, 8, dtype=torch.float64)  # positive density, energy
    targets = inputs + 0.05 * torch.randn(6, 4, 8, 8, dtype=torch.float64)
    return model, inputs, targets


def test_seed_paper_from_follow_up_equals_a_fresh_subspace_computation():
    model, inputs, targets = _ce_batch()
    follow_up = labelled_influence(model, None, inputs, targets, pde="CE", damping=DAMPING,
                                   energy_tol=ENERGY_TOL, variants=VARIANTS)
    fresh = seed_paper_influence(model, inputs, targets, pde="CE", damping=DAMPING, rtol=0.0,
                                 estimator="subspace", energy_tol=ENERGY_TOL)
    reused = seed_paper_from_follow_up(follow_up, model, inputs, pde="CE", damping=DAMPING,
                                       energy_tol=ENERGY_TOL)
    assert list(reused["bra"].values) == ["C", "M", "E"]
    assert float(np.abs(fresh["H"]).max()) > 0
    for name in ("H", "losses", "input_distance", "ntk_top_eigenvalue", "cg_iterations"):
        np.testing.assert_allclose(reused[name].transpose(*fresh[name].dims).values,
                                   fresh[name].values, rtol=1e-10, atol=1e-14, err_msg=name)
    assert reused.attrs["estimator"] == fresh.attrs["estimator"] == "subspace"


def test_a_follow_up_of_other_settings_is_refused():
    model, inputs, targets = _ce_batch()
    follow_up = labelled_influence(model, None, inputs, targets, pde="CE", damping=DAMPING,
                                   energy_tol=ENERGY_TOL, variants=VARIANTS)
    with pytest.raises(InputError, match="damping"):
        seed_paper_from_follow_up(follow_up, model, inputs, pde="CE", damping=1e-4,
                                  energy_tol=ENERGY_TOL)
    with pytest.raises(InputError, match="gn-mass"):
        seed_paper_from_follow_up(follow_up.sel(variant=["gauss-newton", "gn-energy"]), model,
                                  inputs, pde="CE", damping=DAMPING, energy_tol=ENERGY_TOL)


def test_unknown_variant_is_refused_before_any_gradient():
    from pdeinf.errors import InputError

    model, inputs, targets = _ce_batch()
    with pytest.raises(InputError, match="variant: unknown 'gn-nope'"):
        labelled_influence(model, None, inputs, targets, pde="CE", damping=DAMPING,
                           energy_tol=ENERGY_TOL, variants=("gauss-newton", "gn-nope"))
