"""Observables of the influence sweep (method.md section 6) as xarray / pandas objects."""
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
    similarity,
    spectrum,
    temporal_heatmap,
    variant_heatmaps,
    variants,
)
from pdeinf.analysis.findings import FINDING_RULES, FINDINGS, describe_findings, findings
from pdeinf.analysis.rollout_stats import rollout_link_statistics
from pdeinf.analysis.statistics import hierarchical_bootstrap, seeds_batches_needed, variance_components
from pdeinf.analysis.verdicts import VERDICT_RULES, FindingRule, Verdict, apply_rule, rule_table, verdict

__all__ = [
    "VERDICT_RULES",
    "FindingRule",
    "Verdict",
    "apply_rule",
    "hierarchical_bootstrap",
    "rollout_link_statistics",
    "rule_table",
    "seeds_batches_needed",
    "variance_components",
    "verdict",
    "FINDING_RULES",
    "NORMALIZATIONS",
    "PAPER_ROLLOUT_CORRELATION",
    "FINDINGS",
    "class_matrix",
    "combine_variants",
    "describe_findings",
    "dynamics",
    "findings",
    "horizon_curve",
    "normalized_pi",
    "paper_rollout_correlation",
    "rollout_link",
    "similarity",
    "spectrum",
    "temporal_heatmap",
    "variant_heatmaps",
    "variants",
]
