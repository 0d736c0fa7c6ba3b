"""Figures built from pdeinf.analysis output, one function per figure, in one style (`style`):
`figures` (coherence, follow-up, data and training), `seed_paper`, `symmetry`, `estimator`,
`interventions`, `ablation` and `ladder`."""
