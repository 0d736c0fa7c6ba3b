"""Verdict rules, written down before any run, and the registry of the papers' findings.

A finding is tested on an interval (`ci` dim with "estimate", "low", "high", as returned by
`pdeinf.analysis.statistics.hierarchical_bootstrap`) of one statistic, against a null value and
the direction the paper reports:

- rule "sign": **reproduced** when the interval excludes the null on the paper's side;
  **contradicted** when it lies entirely on the other side of the null; otherwise
  **inconclusive**.
- rule "value": the paper's number `paper_value +- tolerance` is a band. **reproduced** when the
  interval excludes the null on the paper's side and overlaps the band; **contradicted** when it
  lies entirely on the other side of the null or misses the band; otherwise **inconclusive**.

`needed_for_rule` is the power analysis of a finding under its rule (how many seeds x batches
its measured effect and spread would need for a decisive verdict): under "sign" a verdict is
decisive when the interval excludes the null (on either side); under "value" also when it misses
the paper's band (contradicted), so the decisive design is the smaller of "excludes the null" and
"excludes the paper value +- tolerance". A sign rule's paper number plays no part.

`VERDICT_RULES` lists each finding of the seed paper (arXiv 2509.00024, `paper-spec.md`), of the
follow-up (`method.md` sections 6-7) and our additions as plain data (`FindingRule`), so the
rule text can be printed (`rule_table`, `describe_rule`). Paper numbers marked "~" were read off
the plots (paper-spec.md); differences of such readings are approximate too.
"""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from pdeinf.analysis.statistics import NOT_ESTIMABLE, decisive_design
from pdeinf.errors import InputError

RULES = ("sign", "value")
#: Verdict words that settle a finding (the papers' and the interventions').
DECISIVE_WORDS = ("reproduced", "contradicted", "improves", "worsens")


class Verdict(str, enum.Enum):
    """The three outcomes of a rule (a str: compares equal to its value)."""

    REPRODUCED = "reproduced"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:  # f-strings print the word, not "Verdict.REPRODUCED"
        return self.value


def _decide(est: float, low: float, high: float, null: float, sign: int, rule: str,
            paper_value, tolerance: float) -> Verdict:
    if not (math.isfinite(low) and math.isfinite(high)):
        return Verdict.INCONCLUSIVE
    paper_side = low > null if sign > 0 else high < null
    other_side = high < null if sign > 0 else low > null
    if rule == "sign":
        if paper_side:
            return Verdict.REPRODUCED
        return Verdict.CONTRADICTED if other_side else Verdict.INCONCLUSIVE
    overlaps_band = high >= paper_value - tolerance and low <= paper_value + tolerance
    if other_side or not overlaps_band:
        return Verdict.CONTRADICTED
    return Verdict.REPRODUCED if paper_side else Verdict.INCONCLUSIVE


def _split_ci(estimate_ci) -> tuple[np.ndarray, np.ndarray, np.ndarray, xr.DataArray | None]:
    if isinstance(estimate_ci, xr.DataArray):
        if "ci" not in estimate_ci.dims:
            raise InputError(f"estimate_ci: needs a 'ci' dim (estimate, low, high); "
                             f"has {estimate_ci.dims}")
        labels = [str(c) for c in estimate_ci["ci"].values] if "ci" in estimate_ci.coords \
            else []
        if sorted(labels) != sorted(("estimate", "low", "high")):
            raise InputError(f"estimate_ci: 'ci' coords must be estimate, low, high; got {labels}")
        parts = [np.asarray(estimate_ci.sel(ci=k).values, dtype=np.float64)
                 for k in ("estimate", "low", "high")]
        template = estimate_ci.sel(ci="estimate", drop=True)
        return (*parts, template)
    try:
        est, low, high = (float(v) for v in estimate_ci)
    except (TypeError, ValueError) as exc:
        raise InputError("estimate_ci: expected a DataArray with a 'ci' dim or a tuple "
                         "(estimate, low, high)") from exc
    return np.array(est), np.array(low), np.array(high), None


def verdict(
    estimate_ci,
    *,
    null: float = 0.0,
    paper_sign: int = 1,
    paper_value: float | None = None,
    rule: str = "sign",
    tolerance: float = 0.0,
):
    """Apply a verdict rule (module docstring) to an interval.

    estimate_ci: a DataArray with a `ci` dim (coords "estimate", "low", "high") and possibly
    other dims (one verdict per cell), or a tuple `(estimate, low, high)`.
    paper_sign: +1 or -1, the side of `null` the paper reports. rule: "sign" or "value" (then
    `paper_value` is required; `tolerance` >= 0 is the half-width of the accepted band).
    Returns a `Verdict` for a scalar interval; otherwise a DataArray of verdict strings with
    the interval's other dims. A NaN bound gives "inconclusive".
    """
    if rule not in RULES:
        raise InputError(f"rule: unknown {rule!r}; expected one of {', '.join(RULES)}")
    if paper_sign not in (1, -1):
        raise InputError(f"paper_sign: must be +1 or -1, got {paper_sign!r}")
    if not math.isfinite(float(null)):
        raise InputError(f"null: must be finite, got {null!r}")
    if rule == "value":
        if paper_value is None or not math.isfinite(float(paper_value)):
            raise InputError("paper_value: a finite number is required with rule='value'")
        if not (math.isfinite(float(tolerance)) and tolerance >= 0):
            raise InputError(f"tolerance: must be finite and >= 0, got {tolerance!r}")
        if (paper_value - null) * paper_sign <= 0:
            raise InputError(f"paper_value: {paper_value} is not on the paper_sign side of the "
                             f"null {null}")
    est, low, high, template = _split_ci(estimate_ci)
    if np.any(low > high):
        raise InputError("estimate_ci: a low bound exceeds its high bound")
    decide = np.vectorize(
        lambda e, lo, hi: _decide(e, lo, hi, float(null), int(paper_sign), rule,
                                  paper_value, float(tolerance)).value,
        otypes=[object],
    )
    words = decide(est, low, high)
    if template is None or template.ndim == 0:
        return Verdict(words.item() if isinstance(words, np.ndarray) else words)
    return xr.DataArray(words.astype(str), dims=template.dims, coords=template.coords,
                        name="verdict")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class FindingRule:
    """One finding and the rule that tests it, fixed before any run.

    paper_values: the paper's number for the statistic per key ("PDE-model", "PDE" or
    "PDE-model dt=k"), None where the paper gives no number; `paper_note` quotes the source.
    """

    name: str
    study: str  # "seed paper", "follow-up" or "ours"
    figures: str
    claim: str
    statistic: str
    null: float
    paper_sign: int
    rule: str = "sign"
    tolerance: float = 0.0
    paper_values: dict = field(default_factory=dict)
    paper_note: str = ""

    def text(self) -> str:
        side = ">" if self.paper_sign > 0 else "<"
        if self.rule == "sign":
            how = (f"reproduced if the 95% interval lies entirely {side} {self.null:g}; "
                   f"contradicted if entirely on the other side; else inconclusive")
        else:
            values = ", ".join(f"{k} {v:g}" for k, v in self.paper_values.items())
            how = (f"reproduced if the 95% interval lies entirely {side} {self.null:g} and "
                   f"overlaps the paper value ({values}) +- {self.tolerance:g}; contradicted "
                   f"if on the other side or off that band; else inconclusive")
        return f"{self.name} ({self.study}, {self.figures}): {self.statistic}. Rule: {how}."


#: The follow-up's Pearson correlations of R with the cumulative rollout SMSE, dt = 1..16
#: (method.md section 6; not in the follow-up's text, from the authors' figures).
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

_LAG = ("Per (seed, batch): mean of the row-standardized H over intra-class entries at lag "
        "dt = t_resp - t_pert (final checkpoint)")

_RULES = [
    FindingRule(
        "temporal_decay", "seed paper", "Figs. 2, 4, 17-23",
        "narrow diagonal ridge: influence decays with the time lag (time-local interpolation)",
        _LAG + "; the mean at |dt| = 1 minus the mean at |dt| = 8, over seeds x batches",
        0.0, +1,
        paper_values={"CE-vit": 1.375 - 0.525, "CE-unet": 2.35 - 0.8,
                      "NS-vit": 3.075 - 1.375, "NS-unet": 2.775 - 1.7},
        paper_note="~ lag-curve readings (paper-spec Figs. 4, 21-23): |dt|=1 vs |dt|=8"),
    FindingRule(
        "inter_below_intra", "seed paper", "Figs. 4, 21-23 (L553, L643-651)",
        "near-total absence of inter-class influence",
        "mean row-standardized H at |dt| = 1 over intra-class entries minus over inter-class "
        "entries, over seeds x batches",
        0.0, +1,
        paper_values={"CE-vit": 1.375 - 0.075, "CE-unet": 2.35 - 0.075,
                      "NS-vit": 3.075 - 0.35, "NS-unet": 2.775 - 0.175},
        paper_note="~ lag-curve readings: intra |dt|=1 vs inter (flat)"),
    FindingRule(
        "class_locked", "seed paper", "Figs. 3, 13-15 (L551-553)",
        "the class transfer matrix is strongly diagonal (class-locked)",
        "time-averaged class matrix (mean over all 16 x 16 time pairs of the row-standardized "
        "H): mean diagonal minus mean off-diagonal entry, over seeds x batches",
        0.0, +1,
        paper_values={"CE-vit": (1.3 + 1.0 + 1.7) / 3 - 0.15, "CE-unet": 1.52 - 0.1,
                      "NS-vit": (2.5 + 1.8 + 1.6) / 3 - 0.4, "NS-unet": (2.5 + 1.9 + 2.3) / 3 - 0.3},
        paper_note="~ class-matrix readings; off-diagonal means are rough (0.05-0.6 ranges)"),
    FindingRule(
        "mass_decay", "seed paper", "Figs. 7, 27 (L733-737)",
        "mass-bra influence decays off the diagonal and stays intra-class",
        "as temporal_decay with the mass bra H_MC (CE)", 0.0, +1,
        paper_values={"CE-vit": 1.95 - 0.3, "CE-unet": 1.775 - 0.575},
        paper_note="~ H_MC lag-curve readings"),
    FindingRule(
        "energy_decay", "seed paper", "Figs. 30, 31",
        "energy-bra influence decays off the diagonal and stays intra-class",
        "as temporal_decay with the energy bra H_EC (CE)", 0.0, +1,
        paper_values={"CE-vit": 2.15 - 0.4, "CE-unet": 1.6 - 0.175},
        paper_note="~ H_EC lag-curve readings"),
    FindingRule(
        "ns_broader_coherence", "seed paper", "Figs. 4, 21-23 (L2514-2516)",
        "NS shows broader temporal coherence than CE (viscosity-regularized dynamics)",
        "per model: intra-class lag-curve ratio H(|dt|=1) / H(dt=0) on NS minus on CE "
        "(independent bootstraps of the two data sets)",
        0.0, +1,
        paper_values={"vit": 3.075 / 4.2 - 1.375 / 6.4, "unet": 2.775 / 3.2 - 2.35 / 5.0},
        paper_note="~ lag-curve readings"),
    FindingRule(
        "similarity_decay", "seed paper", "Figs. 5, 32, 33 (L727-732)",
        "influence decays with the scaled input distance (short-range locality)",
        "Spearman correlation of the row-standardized H with the scaled input distance d over "
        "all non-self pairs", 0.0, -1,
        paper_note="no correlation number in the paper; smoothing curve ~2.45 (UNet) / ~1.85 "
                   "(ViT) at d ~ 0.03 falling below 0 near d ~ 0.7-0.9 (CE)"),
    FindingRule(
        "correlation_length", "seed paper", "Figs. 5, 33 (L243-253)",
        "the influence-distance curve crosses zero: a dynamic correlation length",
        "scaled input distance d where the per-seed GCV smoothing curve of H vs d first "
        "crosses zero", 0.0, +1, rule="value", tolerance=0.3,
        paper_values={"CE": 0.8, "NS": 2.0},
        paper_note="~ crossings read off Figs. 5 (0.7-0.9) and 33 (~2); band +-0.3 is ours"),
    FindingRule(
        "vit_smaller_ntk_eigenvalue", "seed paper", "Figs. 8, 34, 35 (L717-721, L1946)",
        "ViTs have smaller dominant NTK eigenvalues than UNets",
        "log10 of the top eigenvalue of J J^T + lambda per (seed, batch): UNet median minus "
        "ViT median", 0.0, +1,
        paper_values={"CE": 7.97 - 7.35, "NS": 7.0 - 6.45},
        paper_note="~ box-plot medians (decades)"),
    FindingRule(
        "vit_beats_unet_ce", "seed paper", "Figs. 9, 10 (L1342-1343)",
        "on CE the ViT reaches a lower validation SMSE than the UNet",
        "log10 final validation SMSE, UNet minus ViT (per seed)", 0.0, +1,
        paper_values={"CE": -2.6 - (-3.1)}, paper_note="~ 10^-2.6 (UNet) vs 10^-3.1 (ViT)"),
    FindingRule(
        "ns_models_comparable", "seed paper", "Fig. 11 (L2251-2253)",
        "on NS both models reach comparable one-step error",
        "|log10 final validation SMSE, UNet minus ViT| (per seed); the null is the 0.5-decade "
        "equivalence margin (ours)", 0.5, -1,
        paper_values={"NS": 0.0}, paper_note="both ~1e-5 at epoch 100"),
    FindingRule(
        "rollout_link_negative", "follow-up", "follow-up rollout figure (method.md section 6)",
        "cross-time influence correlates negatively with rollout error across horizons",
        "pooled Pearson correlation over (seed, class, batch) of R = off-diagonal / diagonal sum "
        "of each class block of the raw Pi with the cumulative rollout SMSE, per dt",
        0.0, -1,
        paper_values={f"{k} dt={dt}": v for k, vals in PAPER_ROLLOUT_PEARSON.items()
                      for dt, v in enumerate(vals, start=1)},
        paper_note="method.md section 6 (authors' figures; the follow-up's text gives none)"),
    FindingRule(
        "rollout_link_within_class", "ours", "rollout link (method.md section 6)",
        "the rollout link is not only a between-class difference",
        "Pearson correlation of R with the cumulative rollout SMSE after removing each class's "
        "mean of both, pooled over classes, per dt", 0.0, -1,
        paper_note="not tested by the papers"),
    FindingRule(
        "ns_d4_broken", "follow-up", "follow-up D4 figures (method.md section 7)",
        "NS models break some D4 elements badly (relative SMSE up to ~1e4)",
        "log10 of the largest, over D4 elements, per-seed Q3 of the equivariance ratio "
        "SMSE(f(g.x), g.y) / SMSE(f(x), y)", 0.0, +1,
        paper_values={"NS": 4.0}, paper_note="~1e4 (follow-up text)"),
    FindingRule(
        "ce_d4_within_25pct", "follow-up", "follow-up D4 figures (method.md section 7)",
        "CE models stay within ~25% relative SMSE under every D4 element",
        "log10 of the largest, over D4 elements, per-seed Q3 of the equivariance ratio",
        math.log10(1.25), -1, paper_note="within ~25% (follow-up text)"),
    FindingRule(
        "translation_within_few_percent", "follow-up", "follow-up Figs. 3-4 (method.md section 7)",
        "translations change the error by a few percent only",
        "log10 of the largest, over shifts, per-seed Q3 of the equivariance ratio",
        math.log10(1.05), -1, paper_note="'within a few percent' (follow-up text); 5% is ours"),
    FindingRule(
        "orbit_influence_suppressed", "follow-up", "follow-up orbit figures (method.md section 7)",
        "influence is suppressed where equivariance breaks",
        "Spearman correlation, over group elements, of the median orbit influence diagonal "
        "H_g[n, n] with the log equivariance ratio", 0.0, -1),
    FindingRule(
        "augment_raises_orbit_influence", "ours", "notebook 13 orbit figure (issue 13)",
        "training with random D4 elements and circular shifts (augment) shares influence "
        "across the D4 orbit",
        "paired change, augment minus one-step (same seed and influence batch, final "
        "checkpoint), of the mean over the 7 non-identity D4 elements and the batch's examples "
        "of the standardized orbit-influence diagonal H_g[n, n]; mean over seeds x batches",
        0.0, +1, paper_note="not tested by the papers"),
    FindingRule(
        "augment_lowers_equivariance_error", "ours", "notebook 13 orbit figure (issue 13)",
        "training with random D4 elements and circular shifts (augment) lowers the D4 "
        "equivariance error",
        "paired change, augment minus one-step (same seed and influence batch, final "
        "checkpoint), of the mean over the 7 non-identity D4 elements and the batch's examples "
        "of log10 SMSE(f(g.x), g.y) / SMSE(f(x), y); mean over seeds x batches",
        0.0, -1, paper_note="not tested by the papers"),
]

#: name -> FindingRule, in the order above.
VERDICT_RULES: dict[str, FindingRule] = {rule.name: rule for rule in _RULES}


def _rule(name: str) -> FindingRule:
    if name not in VERDICT_RULES:
        raise InputError(f"name: unknown finding {name!r}; expected one of "
                         f"{', '.join(VERDICT_RULES)}")
    return VERDICT_RULES[name]


def describe_rule(name: str) -> str:
    """The rule text of one finding, for READMEs and notebooks."""
    return _rule(name).text()


def rule_table() -> pd.DataFrame:
    """Every finding and its rule as a DataFrame (one row per finding), for printing."""
    rows = []
    for rule in VERDICT_RULES.values():
        row = asdict(rule)
        row["paper_values"] = ", ".join(f"{k}: {v:.3g}" for k, v in rule.paper_values.items()) \
            if len(rule.paper_values) <= 6 else f"{len(rule.paper_values)} values"
        row["rule_text"] = rule.text()
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")


def apply_rule(name: str, estimate_ci, *, key: str | None = None):
    """`verdict` with the null, sign and rule of `VERDICT_RULES[name]`.

    key: which paper value to use for a "value" rule ("CE", "NS-vit", ...; see the rule's
    `paper_values`); required for those, ignored for sign rules.
    """
    rule = _rule(name)
    paper_value = None
    if rule.rule == "value":
        if key not in rule.paper_values:
            raise InputError(f"key: finding {name!r} needs one of {list(rule.paper_values)}, "
                             f"got {key!r}")
        paper_value = rule.paper_values[key]
    return verdict(estimate_ci, null=rule.null, paper_sign=rule.paper_sign,
                   paper_value=paper_value, rule=rule.rule, tolerance=rule.tolerance)


def needed_for_rule(name: str, units, *, key: str | None = None, estimate: float | None = None,
                    verdict=None, **kwargs) -> dict:
    """`pdeinf.analysis.statistics.decisive_design` of finding `name` under its rule.

    units: the per-(seed, batch) (or per-seed) values the interval was computed from, or their
    components. key: the paper value of a "value" rule (as in `apply_rule`); without one the
    verdict cannot be decisive: status "not estimable". estimate: the finding's statistic.
    verdict: the measured verdict word (decisive ones: `DECISIVE_WORDS`); None lets the plug-in
    decide at the measured design. kwargs go to `decisive_design` (grids, n_batches_measured).
    """
    rule = _rule(name)
    band = None
    if rule.rule == "value":
        if key not in rule.paper_values:
            return {"effect": None, "s_seed": None, "s_batch": None, "n_seeds": None,
                    "n_batches": None, "criterion": None, "status": NOT_ESTIMABLE,
                    "reason": f"no paper value for {key!r}"}
        value = float(rule.paper_values[key])
        band = (value - rule.tolerance, value + rule.tolerance)
    decisive = None if verdict is None else str(verdict) in DECISIVE_WORDS
    return decisive_design(units, estimate=estimate, null=rule.null, band=band,
                           decisive=decisive, **kwargs)
