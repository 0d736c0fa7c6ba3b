"""The findings registry: every finding of the seed paper (arXiv 2509.00024), of the authors'
follow-up and our own, as a rule written down before any run.

A rule is plain data (`FindingRule`): its name, layer, the paper's figure and the lines of the
text that state the claim, the statistic (defined in words here and computed per unit of
replication by the analysis modules), the null, the side of the null the paper reports, the
paper's numbers per (PDE, model) and a declared band for their size. The seed paper's numbers are
derived from the plot readings of `pdeinf.analysis.paper_numbers` (the one place they are
stored); the follow-up's rollout correlations are stored here. `pdeinf.analysis.evaluate` turns a
rule and the per-seed data into a record with its two-part verdict.

The rules of a committed run are this file at the commit the findings JSON names (its SHA-256
is recorded in every findings JSON: `rules_hash`).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from pdeinf.analysis import paper_numbers as pn
from pdeinf.errors import InputError

LAYERS = ("seed paper", "follow-up", "ours")
SIZE_KINDS = ("ratio", "difference")


@dataclass(frozen=True)
class FindingRule:
    """One finding and the rule that tests it.

    null / paper_sign: the direction test: the paper reports the statistic on the `paper_sign`
    side (+1 above, -1 below) of `null`. paper_values: the paper's number per key
    ("PDE-model", "PDE", "model" or "PDE-model dt=k"); empty where it gives none.
    size_kind / size_band: ours against the paper's number as "ratio" (ours / paper) or
    "difference" (ours - paper, for log-scale and correlation statistics), and the declared
    equivalence band on that scale; size_kind None where there is no number to hold against.
    unit: the unit of replication of the per-seed values ("seed x batch" or "seed").
    direction_words: the words of a decided direction (paper side, other side) for rules whose
    "paper side" is a prediction of ours rather than a published finding.
    """

    name: str
    layer: str
    figures: str
    claim: str
    statistic: str
    null: float
    paper_sign: int
    paper_values: dict = field(default_factory=dict)
    paper_note: str = ""
    size_kind: str | None = "ratio"
    size_band: tuple[float, float] = (0.5, 2.0)
    unit: str = "seed x batch"
    #: Verdict words for the paper's side and the other side where "reproduced" /
    #: "contradicted" would misread (our interventions: "improves" / "worsens").
    direction_words: tuple[str, str] | None = None

    def __post_init__(self):
        if self.layer not in LAYERS:
            raise InputError(f"{self.name}: layer must be one of {LAYERS}, got {self.layer!r}")
        if self.paper_sign not in (1, -1):
            raise InputError(f"{self.name}: paper_sign must be +1 or -1")
        if self.size_kind is not None:
            if self.size_kind not in SIZE_KINDS:
                raise InputError(f"{self.name}: size_kind must be one of {SIZE_KINDS}")
            if not self.size_band[0] < self.size_band[1]:
                raise InputError(f"{self.name}: size_band must be (low, high) with low < high")

    @property
    def study(self) -> str:
        return self.layer

    def text(self) -> str:
        """The rule in one paragraph, for READMEs, notebooks and records."""
        side = ">" if self.paper_sign > 0 else "<"
        how = (f"direction: the Holm-adjusted t-test over seed means puts the statistic "
               f"{side} {self.null:g} (the paper's side) or on the other side at 5%")
        if self.size_kind is not None and self.paper_values:
            scale = "ours / paper" if self.size_kind == "ratio" else "ours - paper"
            how += (f"; size: {scale} lies in [{self.size_band[0]:g}, {self.size_band[1]:g}] by "
                    f"the equivalence test (TOST, 5%)")
        return f"{self.name} ({self.layer}, {self.figures}): {self.statistic}. Rule: {how}."


def _mid(reading) -> float:
    """The midpoint of a plot reading (low, high)."""
    return (reading[0] + reading[1]) / 2.0


def lag_reading(bra: str, pde: str, model: str, lag: int) -> float:
    """The paper's intra-class lag-curve median at |dt| = lag (mean of -lag and +lag)."""
    intra = pn.LAG_CURVES[(bra, pde, model)]["intra"]
    return _mid(intra[0]) if lag == 0 else (_mid(intra[-lag]) + _mid(intra[lag])) / 2.0


def _decay(bra: str, pde: str, model: str) -> float:
    return lag_reading(bra, pde, model, 1) - lag_reading(bra, pde, model, 8)


def _inter_gap(pde: str, model: str) -> float:
    return lag_reading("C", pde, model, 1) - _mid(pn.LAG_CURVES[("C", pde, model)]["inter"])


def _class_gap(pde: str, model: str) -> float:
    """Mean diagonal minus mean off-diagonal of the paper's class matrix (single-cell readings
    where given, the off-diagonal range's midpoint elsewhere)."""
    cm = pn.CLASS_MATRICES[("C", pde, model)]
    diagonal = cm["diagonal"]
    n_off = len(diagonal) * (len(diagonal) - 1)
    cells = list(cm["cells"].values())
    off = (sum(cells) + (n_off - len(cells)) * _mid(cm["off_diagonal"])) / n_off
    return sum(diagonal) / len(diagonal) - off


def _ridge(pde: str, model: str) -> float:
    return lag_reading("C", pde, model, 0) / lag_reading("C", pde, model, 1)


def _per_pair(fn, pairs) -> dict:
    return {f"{pde}-{model}": fn(pde, model) for pde, model in pairs}


_ALL = (("CE", "vit"), ("CE", "unet"), ("NS", "vit"), ("NS", "unet"))
_CE = (("CE", "vit"), ("CE", "unet"))

#: The follow-up's Pearson correlations of R with the cumulative rollout SMSE, dt = 1..16
#: (read off the authors' rollout figures; the follow-up's text gives no numbers).
PAPER_ROLLOUT_PEARSON: dict[str, tuple[float, ...]] = {
    "CE-vit": (-.65, -.64, -.64, -.64, -.63, -.61, -.61, -.61, -.60, -.60, -.60, -.60, -.59,
               -.59, -.59, -.59),
    "CE-unet": (-.57, -.54, -.49, -.45, -.44, -.41, -.39, -.37, -.35, -.33, -.31, -.28, -.21,
                -.024, -.017, -.019),
    "NS-vit": (-.80, -.75, -.69, -.65, -.63, -.61, -.61, -.60, -.61, -.61, -.61, -.61, -.62,
               -.62, -.63, -.64),
    "NS-unet": (-.52, -.48, -.45, -.43, -.41, -.40, -.39, -.38, -.38, -.39, -.39, -.39, -.39,
                -.36, -.31, -.26),
}

def _bra_decay(word: str, bra: str, figures: str) -> FindingRule:
    """temporal_decay with a conservation bra (CE): mass ("M") or energy ("E")."""
    return FindingRule(
        f"{word}_decay", "seed paper", figures,
        f"{word}-bra influence decays off the diagonal and stays intra-class",
        f"as temporal_decay with the {word} bra H_{bra}C (CE)", 0.0, +1,
        paper_values=_per_pair(lambda p, m: _decay(bra, p, m), _CE),
        paper_note=f"~ H_{bra}C lag-curve readings")


_LAG = ("per (seed, batch): mean of the row-standardized H over intra-class entries at lag "
        "dt = t_resp - t_pert (final checkpoint)")
_NONE = {"size_kind": None}

_RULES = [
    FindingRule(
        "lag0_ridge", "seed paper", "Figs. 2, 4, 16-23 (L614-622, L643-651)",
        "the influence heatmap is a narrow diagonal ridge: self-influence at lag 0 dominates "
        "the first off-diagonal",
        _LAG + "; the mean at dt = 0 over the mean at |dt| = 1 (pooled over classes, or per "
        "class); the null 1 is no ridge", 1.0, +1,
        paper_values=_per_pair(_ridge, _ALL),
        paper_note="~ lag-curve readings at dt = 0 and |dt| = 1 (Figs. 4, 21-23; CE-ViT 6.4 vs "
                   "1.375); per-class ridges are not given"),
    FindingRule(
        "temporal_decay", "seed paper", "Figs. 2, 4, 17-23 (L614-622)",
        "influence decays with the time lag (time-local interpolation)",
        _LAG + "; the mean at |dt| = 1 minus the mean at |dt| = 8", 0.0, +1,
        paper_values=_per_pair(lambda p, m: _decay("C", p, m), _ALL),
        paper_note="~ lag-curve readings (Figs. 4, 21-23): |dt| = 1 minus |dt| = 8"),
    FindingRule(
        "inter_below_intra", "seed paper", "Figs. 4, 21-23 (L553, L643-651)",
        "near-total absence of inter-class influence",
        "per (seed, batch): mean row-standardized H at |dt| = 1 over intra-class entries minus "
        "over inter-class entries", 0.0, +1,
        paper_values=_per_pair(_inter_gap, _ALL),
        paper_note="~ lag-curve readings: intra |dt| = 1 minus the flat inter-class level"),
    FindingRule(
        "class_locked", "seed paper", "Figs. 3, 13-15 (L551-553)",
        "the class transfer matrix is strongly diagonal (class-locked)",
        "per (seed, batch): time-averaged class matrix (mean over all 16 x 16 time pairs of the "
        "row-standardized H), mean diagonal minus mean off-diagonal entry", 0.0, +1,
        paper_values=_per_pair(_class_gap, _ALL),
        paper_note="~ class-matrix readings; off-diagonal levels are rough (0.05-0.6 ranges)"),
    _bra_decay("mass", "M", "Figs. 7, 27 (L733-737)"),
    _bra_decay("energy", "E", "Figs. 30, 31"),
    FindingRule(
        "ns_broader_coherence", "seed paper", "Figs. 4, 21-23 (L2514-2516)",
        "NS shows broader temporal coherence than CE (viscosity-regularized dynamics)",
        "per model and seed: intra-class ratio H(|dt| = 1) / H(dt = 0) of the seed's batch "
        "means on NS minus on CE (the same seed label on both PDEs)", 0.0, +1,
        paper_values={m: lag_reading("C", "NS", m, 1) / lag_reading("C", "NS", m, 0)
                      - lag_reading("C", "CE", m, 1) / lag_reading("C", "CE", m, 0)
                      for m in ("vit", "unet")},
        paper_note="~ lag-curve readings", unit="seed"),
    FindingRule(
        "similarity_decay", "seed paper", "Figs. 5, 32, 33 (L727-732)",
        "influence decays with the scaled input distance (short-range locality)",
        "per seed: Spearman correlation of the row-standardized H with the scaled input "
        "distance d over all non-self pairs of its batches, averaged over seeds on Fisher's z "
        "scale", 0.0, -1,
        paper_note="no correlation number in the paper; smoothing curve ~2.45 (UNet) / ~1.85 "
                   "(ViT) at d ~ 0.03 falling below 0 near d ~ 0.7-0.9 (CE)",
        unit="seed", **_NONE),
    FindingRule(
        "correlation_length", "seed paper", "Figs. 5, 33 (L243-253, L436)",
        "the influence-distance curve crosses zero: a dynamic correlation length",
        "per seed: scaled input distance d where the seed's GCV smoothing curve of H vs d first "
        "crosses zero", 0.0, +1,
        paper_values={pde: _mid(pn.SIMILARITY[pde]["crossing"]) for pde in ("CE", "NS")},
        paper_note="~ crossings read off Figs. 5 (0.7-0.9) and 33 (~2)", unit="seed"),
    FindingRule(
        "vit_smaller_ntk_eigenvalue", "seed paper", "Figs. 8, 34, 35 (L717-721, L1946)",
        "ViTs have smaller dominant NTK eigenvalues than UNets",
        "per (seed, batch): log10 of the top eigenvalue of J J^T + lambda, UNet minus ViT "
        "(same seed and batch)", 0.0, +1,
        paper_values={pde: pn.NTK_TOP_EIGENVALUE[(pde, "unet")]["median"]
                      - pn.NTK_TOP_EIGENVALUE[(pde, "vit")]["median"] for pde in ("CE", "NS")},
        paper_note="~ box-plot medians (decades)", size_kind="difference", size_band=(-0.5, 0.5)),
    FindingRule(
        "vit_beats_unet_ce", "seed paper", "Figs. 9, 10 (L1342-1343)",
        "on CE the ViT reaches a lower validation SMSE than the UNet",
        "per seed: log10 final validation SMSE, UNet minus ViT", 0.0, +1,
        paper_values={"CE": pn.VALIDATION[("CE", "unet")]["last"]
                      - pn.VALIDATION[("CE", "vit")]["last"]},
        paper_note="~ 10^-2.6 (UNet) vs 10^-3.1 (ViT)", size_kind="difference",
        size_band=(-0.5, 0.5), unit="seed"),
    FindingRule(
        "ns_models_comparable", "seed paper", "Fig. 11 (L2251-2253)",
        "on NS both models reach comparable one-step error",
        "per seed: |log10 final validation SMSE, UNet minus ViT|; the null is the 0.5-decade "
        "equivalence margin (ours)", 0.5, -1,
        paper_note="both ~1e-5 at epoch 100", unit="seed", **_NONE),
    FindingRule(
        "rollout_link_negative", "follow-up", "follow-up rollout-link figure",
        "cross-time influence correlates negatively with rollout error across horizons",
        "per seed: Pearson correlation over (class, batch) of R = off-diagonal / diagonal sum "
        "of each class block of the raw Pi with the cumulative rollout SMSE, per dt; averaged "
        "over seeds on Fisher's z scale", 0.0, -1,
        paper_values={f"{k} dt={dt}": v for k, vals in PAPER_ROLLOUT_PEARSON.items()
                      for dt, v in enumerate(vals, start=1)},
        paper_note="read off the authors' rollout-link figures (the follow-up's text gives none)",
        size_kind="difference", size_band=(-0.25, 0.25), unit="seed"),
    FindingRule(
        "rollout_link_within_class", "ours", "rollout link",
        "the rollout link is not only a between-class difference",
        "per seed: Pearson correlation of R with the cumulative rollout SMSE after centring "
        "both within each (seed, class), per dt; averaged over seeds on Fisher's z scale",
        0.0, -1, paper_note="not tested by the papers", unit="seed", **_NONE),
    FindingRule(
        "ns_d4_broken", "follow-up", "follow-up Figs. 1-2 (D4 equivariance)",
        "NS models break some D4 elements badly (relative SMSE up to ~1e4)",
        "per seed: log10 of the largest, over D4 elements, Q3 of the equivariance ratio "
        "SMSE(f(g.x), g.y) / SMSE(f(x), y); the null is the CE models' 25% bound (any model "
        "that is not exactly equivariant exceeds 0)", math.log10(1.25), +1,
        paper_values={"NS": 4.0}, paper_note="~1e4 (follow-up text)", size_kind="difference",
        size_band=(-1.0, 1.0), unit="seed"),
    FindingRule(
        "ce_d4_within_25pct", "follow-up", "follow-up D4 equivariance figures",
        "CE models stay within ~25% relative SMSE under every D4 element",
        "per seed: log10 of the largest, over D4 elements, Q3 of the equivariance ratio",
        math.log10(1.25), -1, paper_note="within ~25% (follow-up text)", unit="seed", **_NONE),
    FindingRule(
        "translation_within_few_percent", "follow-up", "follow-up Figs. 3-4 (L556)",
        "translations change the error by a few percent only",
        "per seed: log10 of the largest, over shifts, Q3 of the equivariance ratio",
        math.log10(1.05), -1, paper_note="'on the order of one percent or less' (follow-up "
                                         "text); 5% is ours", unit="seed", **_NONE),
    FindingRule(
        "orbit_influence_suppressed", "follow-up", "follow-up Fig. 2 (L438-446)",
        "influence is suppressed where equivariance breaks",
        "per seed: Spearman correlation, over group elements, of the median orbit influence "
        "diagonal H_g[n, n] with the log equivariance ratio", 0.0, -1, unit="seed", **_NONE),
    FindingRule(
        "augment_raises_orbit_influence", "ours", "interventions: orbit figure",
        "training with random D4 elements and circular shifts (augment) shares influence "
        "across the D4 orbit",
        "per (seed, batch): augment minus one-step (same seed and influence batch, final "
        "checkpoint) of the mean over the 7 non-identity D4 elements and the batch's examples "
        "of the standardized orbit-influence diagonal H_g[n, n]", 0.0, +1,
        paper_note="not tested by the papers", direction_words=("raises", "lowers"), **_NONE),
    FindingRule(
        "augment_lowers_equivariance_error", "ours", "interventions: orbit figure",
        "training with random D4 elements and circular shifts (augment) lowers the D4 "
        "equivariance error",
        "per (seed, batch): augment minus one-step (same seed and influence batch, final "
        "checkpoint) of the mean over the 7 non-identity D4 elements and the batch's examples "
        "of log10 SMSE(f(g.x), g.y) / SMSE(f(x), y)", 0.0, -1,
        paper_note="not tested by the papers", direction_words=("lowers", "raises"), **_NONE),
    FindingRule(
        "intervention_effect", "ours", "interventions: rollout error per recipe",
        "a training recipe lowers the rollout error of the one-step baseline",
        "per (seed, batch): log(rollout SMSE at dt = 16, recipe) - log(rollout SMSE at dt = 16, "
        "one-step), final checkpoint, paired by seed and test trajectory", 0.0, -1,
        paper_note="not tested by the papers", direction_words=("improves", "worsens"), **_NONE),
]

#: name -> FindingRule, in the order above.
FINDING_RULES: dict[str, FindingRule] = {rule.name: rule for rule in _RULES}


def rule(name: str) -> FindingRule:
    """The rule of finding `name` (InputError naming the known ones otherwise)."""
    if name not in FINDING_RULES:
        raise InputError(f"name: unknown finding {name!r}; expected one of "
                         f"{', '.join(FINDING_RULES)}")
    return FINDING_RULES[name]


def describe_rule(name: str) -> str:
    """The rule text of one finding, for READMEs and notebooks."""
    return rule(name).text()


def rule_table() -> pd.DataFrame:
    """Every finding and its rule as a DataFrame (one row per finding), for printing."""
    rows = []
    for r in FINDING_RULES.values():
        row = asdict(r)
        row["paper_values"] = ", ".join(f"{k}: {v:.3g}" for k, v in r.paper_values.items()) \
            if len(r.paper_values) <= 6 else f"{len(r.paper_values)} values"
        row["rule_text"] = r.text()
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")


def rules_hash() -> str:
    """SHA-256 of this file: which rules a findings JSON was judged by."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
