"""pdeinf: generalization vs. memorization in autoregressive neural PDE surrogates.

Companion to arXiv 2509.00024. See README.md for the two commands and the figure gallery.

The names most users need are available here (imported on first use, so `import pdeinf`
stays light):

- `hat_matrix`, `normalize`: the influence matrix of one batch, and its normalisations;
- `build_model`: the UNet / ViT surrogates; `open_dataset`, `open_well`: PDEGym and The
  Well readers; `get_profile`, `pde_spec`: profiles and per-PDE facts;
- `act`: symmetry group actions; `InputError`, `NumericalError`: what pdeinf raises.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("pdeinf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.2.0"

_EXPORTS = {
    "hat_matrix": ("pdeinf.influence.hat", "hat_matrix"),
    "normalize": ("pdeinf.influence.normalize", "normalize"),
    "build_model": ("pdeinf.models", "build"),
    "open_dataset": ("pdeinf.data.pdegym", "open_dataset"),
    "open_well": ("pdeinf.data.well", "open_well"),
    "get_profile": ("pdeinf.config", "get_profile"),
    "pde_spec": ("pdeinf.config", "pde_spec"),
    "act": ("pdeinf.symmetry.actions", "act"),
    "InputError": ("pdeinf.errors", "InputError"),
    "NumericalError": ("pdeinf.errors", "NumericalError"),
}

__all__ = ["InputError", "NumericalError", "__version__", "act", "build_model", "get_profile",
           "hat_matrix", "normalize", "open_dataset", "open_well", "pde_spec"]


def __getattr__(name: str):
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'pdeinf' has no attribute {name!r}") from None
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
