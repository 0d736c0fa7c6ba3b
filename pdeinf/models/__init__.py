"""Surrogate models: `build(name, *, channels, resolution, size)`.

Sizes (parameters for C = 4 channels; `python benchmarks/bench_training.py` prints them all):
- `smoke`: a few thousand parameters, trains in seconds at 16x16;
- `quick`: ~1e5-3e5 parameters at 32x32 (per-example gradients and JVPs stay cheap);
- `paper`: the paper's models at 128x128, UNet ~13M (24 base channels, kernels 11/9/7/5/3),
  ViT ~5M (width 256, 8 heads, 6 layers).
"""
from __future__ import annotations

from torch import nn

from pdeinf.errors import InputError
from pdeinf.models.unet import UNet
from pdeinf.models.vit import ViT

UNET_SIZES: dict[str, dict] = {
    "smoke": {"base": 4, "mults": (1, 2, 2), "kernels": (5, 3, 3), "heads": 2},
    "quick": {"base": 6, "mults": (1, 2, 4, 8), "kernels": (5, 3, 3, 3), "heads": 4},
    "paper": {"base": 24, "mults": (1, 2, 4, 8, 12), "kernels": (11, 9, 7, 5, 3), "heads": 8},
}
VIT_SIZES: dict[str, dict] = {
    "smoke": {"width": 32, "layers": 2, "heads": 4, "patch": 4, "mlp_ratio": 2},
    "quick": {"width": 64, "layers": 3, "heads": 4, "patch": 4, "mlp_ratio": 2},
    "paper": {"width": 256, "layers": 6, "heads": 8, "patch": 4, "mlp_ratio": 4},
}
_SIZES = {"unet": UNET_SIZES, "vit": VIT_SIZES}
_CLASSES = {"unet": UNet, "vit": ViT}


def build(name: str, *, channels: int, resolution: int, size: str) -> nn.Module:
    """A fresh surrogate `[B, channels, resolution, resolution] -> same shape`.

    Initialisation uses torch's global RNG: call `torch.manual_seed` first for a given seed.
    Raises InputError for an unknown name/size or a non-positive / unusable size.
    """
    if name not in _SIZES:
        raise InputError(f"model: unknown model {name!r}; expected one of {', '.join(_SIZES)}")
    if size not in _SIZES[name]:
        raise InputError(f"size: unknown model size {size!r}; expected one of smoke, quick, paper")
    if not isinstance(channels, int) or channels <= 0:
        raise InputError(f"channels: must be a positive integer, got {channels!r}")
    if not isinstance(resolution, int) or resolution < 8:
        raise InputError(f"resolution: must be an integer >= 8, got {resolution!r}")
    spec = _SIZES[name][size]
    if name == "vit" and resolution % spec["patch"]:
        raise InputError(f"resolution: {resolution} is not a multiple of the ViT patch size {spec['patch']}")
    return _CLASSES[name](channels, resolution, **spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["UNET_SIZES", "VIT_SIZES", "UNet", "ViT", "build", "count_parameters"]
