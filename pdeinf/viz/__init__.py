"""Figures (one function per figure, one style) built from pdeinf.analysis output."""
from pdeinf.viz.figures import (
    class_matrix_figure,
    conservation_figure,
    dynamics_figure,
    explorer_figure,
    heatmap_figure,
    horizon_figure,
    loss_curves_figure,
    rollout_error_figure,
    rollout_link_figure,
    similarity_figure,
    snapshots_figure,
    spectrum_figure,
    variant_heatmaps_figure,
)

__all__ = ["class_matrix_figure", "conservation_figure", "dynamics_figure", "explorer_figure",
           "heatmap_figure", "horizon_figure", "loss_curves_figure", "rollout_error_figure",
           "rollout_link_figure", "similarity_figure", "snapshots_figure", "spectrum_figure",
           "variant_heatmaps_figure"]
