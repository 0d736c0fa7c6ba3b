"""Figures (one function per figure, one style) built from pdeinf.analysis output."""
from pdeinf.viz.figures import *  # noqa: F401,F403
from pdeinf.viz.figures import __all__
