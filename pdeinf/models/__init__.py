"""Surrogate models: `build(name, *, channels, resolution, size, variant="authors", residual=False)`.

Variants: `"authors"` (default), the architectures of the paper's code, lanl/PDEHats
(`AuthorsUNet`, `AuthorsViT`); `"pdeinf"`, pdeinf's own (`UNet`, `ViT`), kept for comparison.
`residual=True` returns `u_t + f(u_t)` instead of predicting `u_{t+1}` directly (as the authors).
Sizes (C = 4; `python benchmarks/bench_training.py` prints them all): `smoke` (a few thousand
parameters, 16x16), `quick` (~1.2e5-2e5 at 32x32), `faithful` (P/M >= 1 at 32x32 with
M = 48 x C x 32 x 32: authors' UNet 262,600, CE P/M 1.34; ViT 224,153, P/M 1.14), `paper` (the
paper's models at 128x128: UNet 13.9M, ViT 4.5M).
"""
from __future__ import annotations

import inspect

from torch import nn

from pdeinf.checks import one_of, positive_int
from pdeinf.config import MIN_RESOLUTION
from pdeinf.errors import InputError
from pdeinf.models.authors_unet import AUTHORS_UNET_PARAMETERS, AuthorsUNet
from pdeinf.models.authors_vit import AUTHORS_VIT_PARAMETERS, AuthorsViT
from pdeinf.models.unet import UNet
from pdeinf.models.vit import ViT

UNET_SIZES: dict[str, dict] = {  # pdeinf
    "smoke": {"base": 4, "mults": (1, 2, 2), "kernels": (5, 3, 3), "heads": 2},
    "quick": {"base": 6, "mults": (1, 2, 4, 8), "kernels": (5, 3, 3, 3), "heads": 4},
    "faithful": {"base": 7, "mults": (1, 2, 4, 8), "kernels": (5, 3, 3, 3), "heads": 4},
    "paper": {"base": 24, "mults": (1, 2, 4, 8, 12), "kernels": (11, 9, 7, 5, 3), "heads": 8},
}
VIT_SIZES: dict[str, dict] = {  # pdeinf
    "smoke": {"width": 32, "layers": 2, "heads": 4, "patch": 4, "mlp_ratio": 2},
    "quick": {"width": 64, "layers": 3, "heads": 4, "patch": 4, "mlp_ratio": 2},
    "faithful": {"width": 80, "layers": 3, "heads": 4, "patch": 4, "mlp_ratio": 2},
    "paper": {"width": 256, "layers": 6, "heads": 8, "patch": 4, "mlp_ratio": 4},
}
AUTHORS_UNET_SIZES: dict[str, dict] = {
    "smoke": {"base": 2, "levels": 2, "heads": 2}, "quick": {"base": 5, "levels": 4, "heads": 4},
    "faithful": {"base": 7, "levels": 4, "heads": 4}, "paper": {"base": 24, "levels": 4, "heads": 4},
}
AUTHORS_VIT_SIZES: dict[str, dict] = {
    "smoke": {"width": 16, "depth": 2, "heads": 4}, "quick": {"width": 64, "depth": 4, "heads": 4},
    "faithful": {"width": 80, "depth": 4, "heads": 4}, "paper": {"width": 256, "depth": 8, "heads": 8},
}
MODEL_NAMES = ("unet", "vit")
VARIANTS = ("authors", "pdeinf")
SIZES = ("smoke", "quick", "faithful", "paper")
_SIZES = {("unet", "authors"): AUTHORS_UNET_SIZES, ("vit", "authors"): AUTHORS_VIT_SIZES,
          ("unet", "pdeinf"): UNET_SIZES, ("vit", "pdeinf"): VIT_SIZES}
_CLASSES = {("unet", "authors"): AuthorsUNet, ("vit", "authors"): AuthorsViT,
            ("unet", "pdeinf"): UNet, ("vit", "pdeinf"): ViT}


def build(name: str, *, channels: int, resolution: int, size: str, variant: str = "authors",
          residual: bool = False, **options) -> nn.Module:
    """A fresh surrogate `[B, channels, R, R] -> same shape` (authors' models also take H != W
    through their classes).

    `options` override entries of the size table (e.g. `depth=6` for the ViT of the paper's
    text, `unpatch="patch"`). Initialisation uses torch's global RNG: call `torch.manual_seed`
    first for a given seed. Raises InputError for an unknown name/variant/size/option or an
    unusable channels/resolution.
    """
    one_of(name, MODEL_NAMES, "model")
    one_of(variant, VARIANTS, "variant")
    one_of(size, SIZES, "size")
    positive_int(channels, "channels")
    positive_int(resolution, "resolution", minimum=MIN_RESOLUTION)
    if not isinstance(residual, bool):
        raise InputError(f"residual: must be True or False, got {residual!r}")
    spec = {**_SIZES[name, variant][size]}
    unknown = set(options) - set(_option_names(name, variant))
    if unknown:
        raise InputError(f"options: {', '.join(sorted(unknown))} not accepted by the "
                         f"{variant} {name}; accepted: {', '.join(_option_names(name, variant))}")
    spec.update(options)
    patch = spec.get("patch", spec.get("stride", 4)) if name == "vit" else 1
    if resolution % patch:
        raise InputError(f"resolution: {resolution} is not a multiple of the ViT patch size {patch}")
    try:
        return _CLASSES[name, variant](channels, resolution, residual=residual, **spec)
    except ValueError as err:  # a bad option value caught by the class
        raise InputError(f"options: {err}") from None


def _option_names(name: str, variant: str) -> tuple[str, ...]:
    """The keyword options of the model class."""
    parameters = inspect.signature(_CLASSES[name, variant]).parameters.values()
    return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "residual")


def size_options(name: str, variant: str, size: str) -> dict:
    """The size-table entries `build` uses for (model, variant, size), e.g. `{"width": 80, ...}`;
    InputError for an unknown combination."""
    try:
        return dict(_SIZES[name, variant][size])
    except KeyError:
        raise InputError(f"size: no {size!r} size for the {variant} {name}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "AUTHORS_UNET_PARAMETERS", "AUTHORS_UNET_SIZES", "AUTHORS_VIT_PARAMETERS", "AUTHORS_VIT_SIZES",
    "MODEL_NAMES", "SIZES", "UNET_SIZES", "VARIANTS", "VIT_SIZES", "AuthorsUNet", "AuthorsViT", "UNet",
    "ViT", "build", "count_parameters", "size_options",
]
