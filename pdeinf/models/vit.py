"""pdeinf's own ViT surrogate `u_t -> u_{t+1}` on a periodic grid: a circularly padded
stride-`patch` convolution (kernel 2 patch, patches overlap across the boundary) + learned
position embedding -> `layers` pre-norm transformer blocks -> LayerNorm -> linear un-patching
(token -> patch x patch x channels values); `residual=True` (default) adds the input.
"""
from __future__ import annotations

import torch
from torch import nn

from pdeinf.errors import InputError
from pdeinf.models.blocks import CircularConv2d, TransformerBlock


class ViT(nn.Module):
    """`[B, channels, R, R] -> [B, channels, R, R]`; R must be a multiple of `patch`."""

    def __init__(self, channels: int, resolution: int, *, width: int, layers: int, heads: int,
                 patch: int = 4, mlp_ratio: int = 4, residual: bool = True):
        super().__init__()
        if resolution % patch:
            raise InputError(f"resolution {resolution} is not a multiple of the patch size {patch}")
        self.channels, self.patch, self.residual = channels, patch, residual
        self.grid = resolution // patch
        self.embed = CircularConv2d(channels, width, 2 * patch, stride=patch, padding=patch // 2)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.unpatch = nn.Linear(width, patch * patch * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, L, width]
        for block in self.blocks:
            tokens = block(tokens)
        p, g = self.patch, self.grid
        out = self.unpatch(self.norm(tokens))  # [B, L, p*p*C]
        out = out.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return x + out if self.residual else out
