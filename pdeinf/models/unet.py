"""pdeinf's own UNet surrogate `u_t -> u_{t+1}` on a periodic grid (level i: `base * mults[i]`
channels, kernel `kernels[i]`):

    stem conv -> [ResBlock_i -> stride-2 conv] for i < depth -> ResBlock, attention, ResBlock
              -> [upsample x2 + conv -> concat skip -> ResBlock_i] -> norm, swish, conv

Circular padding, GroupNorm, swish; `residual=True` (default) adds the input (predicts the
increment). The bottleneck stays at least 4x4 (`depth = min(len(mults) - 1, log2(R) - 2)`) and
every kernel is clipped so that its circular padding wraps at most once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdeinf.errors import InputError
from pdeinf.models.authors_unet import fit_kernel, unet_depth
from pdeinf.models.blocks import CircularConv2d, ResBlock, SpatialAttention, group_count


def effective_depth(resolution: int, max_depth: int) -> int:
    """Number of 2x downsamplings used at `resolution` (bottleneck at least 4x4)."""
    return unet_depth(resolution, resolution, max_depth, 4)


class UNet(nn.Module):
    """`[B, channels, R, R] -> [B, channels, R, R]`."""

    def __init__(self, channels: int, resolution: int, *, base: int, mults: tuple[int, ...],
                 kernels: tuple[int, ...], heads: int, residual: bool = True):
        super().__init__()
        if len(kernels) != len(mults):
            raise InputError("kernels and mults need one entry per level")
        self.resolution, self.residual = resolution, residual
        self.depth = effective_depth(resolution, len(mults) - 1)
        widths = [base * m for m in mults[: self.depth + 1]]
        sizes = [resolution // 2**i for i in range(self.depth + 1)]
        ks = [fit_kernel(k, s - 1) for k, s in zip(kernels[: self.depth + 1], sizes)]

        self.stem = CircularConv2d(channels, widths[0], ks[0])
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for i in range(self.depth):
            self.down_blocks.append(ResBlock(widths[i], widths[i], ks[i]))
            self.downsamples.append(CircularConv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        c_mid, k_mid = widths[-1], ks[self.depth]
        self.mid1 = ResBlock(c_mid, c_mid, k_mid)
        self.mid_attn = SpatialAttention(c_mid, heads)
        self.mid2 = ResBlock(c_mid, c_mid, k_mid)
        self.upsamples, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(self.depth)):
            self.upsamples.append(CircularConv2d(widths[i + 1], widths[i], 3))
            self.up_blocks.append(ResBlock(2 * widths[i], widths[i], ks[i]))
        self.head_norm = nn.GroupNorm(group_count(widths[0]), widths[0])
        self.head = CircularConv2d(widths[0], channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downsamples):
            h = block(h)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h)))
        for up, block in zip(self.upsamples, self.up_blocks):
            h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = block(torch.cat([h, skips.pop()], dim=1))
        out = self.head(F.silu(self.head_norm(h)))
        return x + out if self.residual else out
