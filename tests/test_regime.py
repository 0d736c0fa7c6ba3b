"""The regime card: P / M, the training budget, the plateau criterion, from the profile, the
data split and training histories."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pdeinf.analysis.regime import PAPER_P_OVER_M, optimizer_steps, plateau, regime_card
from pdeinf.errors import InputError


def test_plateau_criterion_on_known_curves():
    flat = plateau(np.r_[np.linspace(1.0, 0.1, 10), np.full(10, 0.1)])
    assert flat.reached is True and flat.change == pytest.approx(0.0)
    falling = plateau(1.0 / np.arange(1, 21))  # 1/epoch: the last 4 epochs vs the 4 before
    assert falling.reached is False
    assert falling.last == pytest.approx(np.median(1.0 / np.arange(17, 21)))
    assert falling.before == pytest.approx(np.median(1.0 / np.arange(13, 17)))
    assert plateau([0.3, 0.2, 0.1]).reached is None  # windows of fewer than 2 epochs
    with pytest.raises(InputError, match="NaN"):
        plateau([1.0, np.nan])


def test_optimizer_steps_count_the_last_partial_batch():
    assert optimizer_steps(768, 48, 13) == 16 * 13
    assert optimizer_steps(769, 48, 2) == 17 * 2


def test_card_from_a_history():
    rows = [(s, e, 2.0 / e, (1.0 + 0.001 * s) / e) for s in (10, 35, 42) for e in range(1, 11)]
    history = pd.DataFrame(rows, columns=["seed", "epoch", "train_loss", "val_loss"])
    card = regime_card(pde="CE", model="unet", parameters=300, outputs=200, pairs=768,
                       steps=208, history=history, estimator="full-space", tolerance=1.5e-2,
                       seeds=3, batches=6)
    assert card.p_over_m == pytest.approx(1.5) and card.paper_p_over_m == PAPER_P_OVER_M[("CE", "unet")]
    last = history[history.epoch == 10]
    assert card.final_val_smse == pytest.approx(np.median(last.val_loss))
    assert card.train_val_gap == pytest.approx(np.median(np.log10(last.val_loss / last.train_loss)))
    assert card.paper_val_smse == pytest.approx(10 ** -2.6)
    assert card.plateau is False  # 1/epoch still falls by more than 10%
    assert "P/M 1.50" in card.stamp() and "rtol 0.015" in card.stamp()
    with pytest.raises(InputError, match="parameters"):
        regime_card(pde="CE", model="unet", parameters=0, outputs=1, pairs=1, steps=1,
                    history=None, estimator="subspace", tolerance=None, seeds=1, batches=1)


def test_profile_cards_count_the_models_and_the_split():
    from pdeinf.config import get_profile, pde_spec
    from pdeinf.data.datasets import split_indices
    from pdeinf.pipeline.regime import regime_cards

    prof = get_profile("quick")
    cards = regime_cards(prof, with_history=False)
    train = len(split_indices(prof.n_trajectories, 10, prof.split)["train"])
    for (pde, model), card in cards.items():
        assert card.outputs == 48 * pde_spec(pde).channels * prof.resolution ** 2
        assert card.training_pairs == train * 3 * 16
        assert card.optimizer_steps == math.ceil(card.training_pairs / 48) * prof.epochs[pde]
        assert card.estimator == prof.seed_paper_estimator and card.batches == prof.seed_paper_batches
    follow = regime_cards(prof, layer="follow-up", with_history=False)[("CE", "unet")]
    assert follow.estimator == "subspace" and follow.batches == prof.n_influence_batches


def test_runs_at_plateau_counts_each_seed_on_its_own_curve():
    from pdeinf.analysis.regime import runs_at_plateau

    epochs = np.arange(1, 21)
    flat = np.r_[np.linspace(1.0, 0.1, 10), np.full(10, 0.1)]
    rows = [(10, e, 1.0, v) for e, v in zip(epochs, flat)]
    rows += [(35, e, 1.0, 1.0 / e) for e in epochs]  # still falling
    history = pd.DataFrame(rows, columns=["seed", "epoch", "train_loss", "val_loss"])
    assert runs_at_plateau(history) == 1
    assert runs_at_plateau(None) is None
    card = regime_card(pde="NS", model="vit", parameters=10, outputs=10, pairs=96, steps=40,
                       history=history, estimator="subspace", tolerance=1e-4, seeds=2, batches=1,
                       label="tour: not the paper's regime")
    assert card.runs_at_plateau == 1
    assert card.stamp().startswith("tour: not the paper's regime: P/M 1.00")


def test_faithful_profiles_are_in_the_papers_regime_on_paper():
    """Uncut (faithful-full): P/M >= 1 for every pair at the faithful size; six seed-paper
    batches from distinct test trajectories with the full-space estimator, at least five seeds
    (10, 35, 42 first). The committed cut (faithful) keeps P/M, the estimator, the six batches and
    the five seeds, and trains the same models on the same data for fewer epochs."""
    from pdeinf.config import COMMITTED_PROFILE, get_profile
    from pdeinf.data.datasets import split_indices
    from pdeinf.pipeline.regime import regime_cards

    assert COMMITTED_PROFILE == "faithful"
    full, cut = get_profile("faithful-full"), get_profile("faithful")
    for prof in (full, cut):
        cards = regime_cards(prof, with_history=False)
        assert set(cards) == {(p, m) for p in ("CE", "NS") for m in ("unet", "vit")}
        assert all(card.p_over_m >= 1.0 for card in cards.values())
        assert all(card.estimator == "full-space" and card.batches == 6 for card in cards.values())
        test = split_indices(prof.n_trajectories, prof.seeds[0], prof.split)["test"]
        assert len(test) >= prof.seed_paper_batches
    for prof in (full, cut):
        assert len(prof.seeds) >= 5 and prof.seeds[:3] == (10, 35, 42)
    assert (cut.model_size, cut.n_trajectories, cut.resolution) == (
        full.model_size, full.n_trajectories, full.resolution)
