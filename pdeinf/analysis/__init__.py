"""Observables of the influence sweep, the findings registry and seed-level statistics, as
xarray / pandas objects (docs/method.md)."""
from pdeinf.analysis.coherence import (
    NORMALIZATIONS,
    PAPER_ROLLOUT_CORRELATION,
    class_matrix,
    combine_variants,
    dynamics,
    horizon_curve,
    normalized_pi,
    paper_rollout_correlation,
    rollout_link,
    rollout_ratio,
    similarity,
    spectrum,
    temporal_heatmap,
    variant_heatmaps,
    variants,
)
from pdeinf.analysis.evaluate import adjust_records, evaluate_finding
from pdeinf.analysis.registry import FINDING_RULES, FindingRule, describe_rule, rule_table
from pdeinf.analysis.rollout_stats import rollout_link_statistics
from pdeinf.analysis.statistics import (
    fisher_z_interval,
    holm,
    seed_interval,
    seed_mean_ci,
    seeds_needed,
    tost_p,
)

__all__ = [
    "FINDING_RULES", "NORMALIZATIONS", "PAPER_ROLLOUT_CORRELATION", "FindingRule",
    "adjust_records", "class_matrix", "combine_variants", "describe_rule", "dynamics",
    "evaluate_finding", "fisher_z_interval", "holm", "horizon_curve", "normalized_pi",
    "paper_rollout_correlation", "rollout_link", "rollout_link_statistics", "rollout_ratio",
    "rule_table", "seed_interval", "seed_mean_ci", "seeds_needed", "similarity", "spectrum",
    "temporal_heatmap", "tost_p", "variant_heatmaps", "variants",
]
