"""The findings records of each study (named after the notebook that draws its figures),
computed from the cached stages: `STUDIES[study](profile)` -> `{rule: [record, ...]}` through the
analysis module of that study. Each builder reads its stages through their `ensure_*` function,
so it computes what is missing; `pipeline.findings.collect_findings` gathers them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

from pdeinf.analysis import coherence as co
from pdeinf.analysis import followup as fu
from pdeinf.analysis import interventions as ai
from pdeinf.analysis import seed_paper as sp
from pdeinf.analysis import seed_paper_findings as spf
from pdeinf.analysis.ablation import ablation_table, table_records
from pdeinf.errors import InputError
from pdeinf.pipeline import interventions as stage
from pdeinf.pipeline.ablation import ablation_pairs, ensure_ablation_pair
from pdeinf.pipeline.common import ProfileLike, as_profile
from pdeinf.pipeline.influence import ensure_seed_paper, load_variants
from pdeinf.pipeline.rollouts import ensure_rollouts
from pdeinf.pipeline.symmetry import ensure_symmetry
from pdeinf.pipeline.training import ensure_training, training_history
from pdeinf.symmetry import summary as sm

#: Within `shared_reads`: {id(profile): `_seed_paper(profile)`}; None outside.
_seed_paper_held: dict | None = None


@contextlib.contextmanager
def shared_reads():
    """Within it, the seed-paper builders (five studies) read each pair's influence once."""
    global _seed_paper_held
    _seed_paper_held = {}
    try:
        yield
    finally:
        _seed_paper_held = None


def _seed_paper(profile) -> dict:
    """`{(pde, model): seed-paper influence Dataset}` of every pair of the profile."""
    if _seed_paper_held is not None and id(profile) in _seed_paper_held:
        return _seed_paper_held[id(profile)]
    data = {(pde, model): ensure_seed_paper(profile, pde, model, progress=False)
            for pde, model in profile.pairs()}
    if _seed_paper_held is not None:
        _seed_paper_held[id(profile)] = data
    return data


def _standardized(profile, bra: str) -> dict:
    """`{(pde, model): row-standardized H}` of the bra ("C", "M" or "E") where a pair has it."""
    return {key: sp.standardized(ds, bra) for key, ds in _seed_paper(profile).items()
            if bra in sp.bras(ds)}


def training(profile) -> dict:
    """Final validation SMSE of UNet against ViT (seed paper, Figs. 9-11)."""
    histories = {}
    for pde, model in profile.pairs():
        ensure_training(profile, pde, model, progress=False)
        histories[(pde, model)] = training_history(profile, pde, model)
    return spf.validation_findings(histories)


def seed_temporal(profile) -> dict:
    """Lag-0 ridge, temporal decay, inter below intra and NS's broader coherence (Figs. 2, 4)."""
    hns = _standardized(profile, "C")
    found = spf.influence_findings(hns, ["lag0_ridge", "temporal_decay", "inter_below_intra"])
    found["ns_broader_coherence"] = spf.broader_coherence_findings(hns)
    return found


def seed_classes(profile) -> dict:
    """Class locking of the time-averaged class matrix (Fig. 3)."""
    return spf.influence_findings(_standardized(profile, "C"), ["class_locked"])


def seed_similarity(profile) -> dict:
    """Influence against input distance (Fig. 5)."""
    data = _seed_paper(profile)
    return spf.similarity_findings(data, {key: sp.similarity_curves(ds) for key, ds in data.items()})


def seed_conservation(profile) -> dict:
    """Temporal decay of the mass and energy bras (Figs. 6, 7)."""
    return {name: spf.influence_findings(_standardized(profile, bra), [name])[name]
            for bra, name in (("M", "mass_decay"), ("E", "energy_decay"))}


def seed_ntk(profile) -> dict:
    """Top NTK eigenvalue of ViT below UNet's (Fig. 8)."""
    return {"vit_smaller_ntk_eigenvalue": spf.ntk_findings(_seed_paper(profile))}


def rollout_link(profile) -> dict:
    """Per-seed correlation of the coherence ratio R with the rollout error (follow-up)."""
    found: dict = {}
    for pde, model in profile.pairs():
        link = co.rollout_link(load_variants(profile, pde, model, progress=False),
                               ensure_rollouts(profile, pde, model, progress=False))
        for rule, records in fu.rollout_findings(link, pde=pde, model=model).items():
            found.setdefault(rule, []).extend(records)
    return found


def symmetry(profile) -> dict:
    """D4 and translation equivariance, orbit influence (follow-up) on the profile's subset."""
    studies = {(pde, model): ensure_symmetry(profile, pde, model, progress=False)
               for pde, model in profile.pairs(profile.symmetry_pairs)}
    return sm.symmetry_findings(studies) if studies else {}


def interventions(profile) -> dict:
    """Each training recipe's change of the rollout error and R against one-step, and augment's
    orbit influence (ours)."""
    found: dict = {}
    for pde, model in stage.recipe_pairs(profile):
        ds = stage.ensure_intervention_pair(profile, pde, model, progress=False)
        obs = ai.observables(ds)
        if ds.sizes["recipe"] > 1:
            found.setdefault("intervention_effect", []).extend(
                ai.effect_findings(ai.intervention_effects(obs), pde, model))
        if stage.orbit_recipes(profile):
            orbit = stage.ensure_orbit_pair(profile, pde, model, progress=False)
            for name, rows in ai.orbit_findings(ai.orbit_effects(orbit), pde, model).items():
                found.setdefault(name, []).extend(rows)
    return found


#: study (its notebook) -> builder. The studies without findings records (data, dynamics and
#: spectrum, variants, estimator study, the explorer, the ladder) are not listed.
STUDIES: dict[str, Callable] = {
    "02_training": training,
    "03_seed_temporal": seed_temporal,
    "04_seed_classes": seed_classes,
    "05_seed_similarity": seed_similarity,
    "06_seed_conservation": seed_conservation,
    "07_seed_ntk": seed_ntk,
    "09_followup_rollout_link": rollout_link,
    "11_followup_symmetry": symmetry,
    "13_interventions": interventions,
}


def study_records(profile: ProfileLike, study: str) -> dict:
    """`{rule: [record, ...]}` of one study of `STUDIES` at `profile` (unadjusted p-values)."""
    if study not in STUDIES:
        raise InputError(f"study={study!r}: expected one of {', '.join(STUDIES)}")
    return STUDIES[study](as_profile(profile))


def ablation_tables(profile: ProfileLike, *, progress: bool = False) -> dict:
    """`{(pde, model): analysis.ablation.ablation_table}` of the profile's ablation pairs."""
    return {(pde, model): ablation_table(ensure_ablation_pair(profile, pde, model, progress=progress))
            for pde, model in ablation_pairs(profile)}


def ablation_records(profile: ProfileLike) -> list[dict]:
    """The rows of every ablation table of the profile (`analysis.ablation.table_records`)."""
    return [row for (pde, model), table in ablation_tables(profile).items()
            for row in table_records(table, pde=pde, model=model)]
