"""The regime card of every (PDE, model) of a profile (`pdeinf.analysis.regime`), from the
profile's settings, the data split and the stored training histories."""
from __future__ import annotations

from dataclasses import replace

from pdeinf.analysis.regime import RegimeCard, optimizer_steps, regime_card
from pdeinf.config import REGIME_LABELS, pde_spec
from pdeinf.data.datasets import split_indices
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile

#: Examples of one influence batch: 3 classes x 16 transitions.
BATCH_EXAMPLES = 48


def parameter_count(profile, pde: str, model: str, **options) -> int:
    """Trainable parameters of the profile's `model` for `pde` (built, not trained; `options`:
    entries of the model's size table to override, as `pdeinf.models.build`)."""
    from pdeinf.models import build

    net = build(model, channels=pde_spec(pde).channels, resolution=profile.resolution,
                size=profile.model_size, variant=profile.model_variant,
                residual=profile.residual, **options)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _history(profile, pde: str, model: str):
    from pdeinf.pipeline.training import training_history

    try:
        return training_history(profile, pde, model)
    except InputError:  # not trained yet: the card has no validation numbers
        return None


def regime_cards(profile: ProfileLike = None, *, layer: str = "seed paper",
                 with_history: bool = True) -> dict[tuple[str, str], RegimeCard]:
    """{(pde, model): RegimeCard} of the profile: the seed paper's estimator, tolerance and
    batches for `layer` "seed paper", the follow-up's exact subspace sweep (energy cut,
    influence batches) otherwise; histories read where the runs exist (`with_history`)."""
    prof = as_profile(profile)
    cards = {}
    # one-step training transitions (the first seed's split: the sizes do not depend on it)
    train = split_indices(prof.n_trajectories, prof.seeds[0], prof.split)["train"]
    for pde, model in prof.pairs():
        spec = pde_spec(pde)
        pairs = len(train) * len(spec.classes) * (prof.t_max - 1)
        cards[(pde, model)] = regime_card(
            pde=pde, model=model, parameters=parameter_count(prof, pde, model),
            outputs=BATCH_EXAMPLES * spec.channels * prof.resolution ** 2, pairs=pairs,
            steps=optimizer_steps(pairs, prof.batch_size, prof.epochs[pde]),
            history=_history(prof, pde, model) if with_history else None,
            estimator=prof.seed_paper_estimator,
            tolerance=prof.rtol_for(model) if prof.seed_paper_estimator == "full-space"
            else prof.energy_tol,
            seeds=len(prof.seeds), batches=prof.seed_paper_batches,
            label=REGIME_LABELS.get(prof.name, "custom profile"))
    return cards if layer == "seed paper" else {k: for_sweep(c, prof) for k, c in cards.items()}


def for_sweep(card: RegimeCard, profile) -> RegimeCard:
    """The card of the follow-up's sweep on the same model: exact subspace estimator, its energy
    cut, the profile's influence batches."""
    return replace(card, estimator="subspace", tolerance=profile.energy_tol,
                   batches=profile.n_influence_batches)


def row_regime(row: dict, cards: dict) -> list[dict]:
    """The cards of the (PDE, model) pairs a findings row rests on ("NS-CE" and "unet-vit"
    rows compare two)."""
    return [cards[(p, m)].to_dict() for p in str(row["pde"]).split("-")
            for m in str(row["model"]).split("-") if (p, m) in cards]
