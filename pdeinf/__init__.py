"""pdeinf: generalization vs. memorization in autoregressive neural PDE surrogates.

Companion to arXiv 2509.00024. See README.md for the two commands and the figure gallery.
"""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("pdeinf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
