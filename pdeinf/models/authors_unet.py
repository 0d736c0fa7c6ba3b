"""The authors' UNet (lanl/PDEHats `src/Models/UNet/{UNet,down,up,attn}.jl`, read at commits
02eff15 and 456799e; the paper's text, L1312, agrees: "BigGAN-style, 24 channels, 4 down
blocks, ~13M", kernels 11/9/7/5/3). With `c = base` and `d` down blocks (theirs: 24, 4):

    proj_in   circ. conv K0, F -> c                                          [c,    R]
    down_i    Down(c 2^(i-1); K_i)  (i = 1..d)                              [c 2^i, R/2^i]
    across    ScalarRMSNorm_space + swish, circ. conv, c 2^d -> c 2^(d+1), AttnBlock (4 heads)
    up_i      cat(previous, skip) -> Up(c 2^(i+1); K_i)  (i = d..1)         [c 2^(i-1), R/2^(i-1)]
    proj_out  cat(up_1, proj_in) -> [RMSNorm_space + swish, conv K0, 2c -> 2c] x 2, conv1x1 -> F

The output is `u_{t+1}` (`residual=True`: `u_t + model(u_t)`). Kernel of a level of grid size
n: `max(3, 2 log2(n) - 5)` (theirs at 128: 9, 7, 5, 3, 3; K0 = 11), clipped so the circular
padding wraps at most once. Parameters (conv k^2 c_in c_out + c_out, SpaceNorm 2c, RMSNorm 1,
MHA 4 d^2) at 128 x 128, CE (F = 4): proj_in 11,640; down 281,376 / 682,560 / 1,401,984 /
2,066,688; across 2,654,977 + 4,720,898; up 702,912 / 471,264 / 228,720 / 94,200; proj_out
557,862; total 13,875,081 (NS, F = 2: 13,869,175).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pdeinf.models.blocks import AttnBlock, Conv, Down, ScalarRMSNorm, Up

# Documented counts of THEIR model (arithmetic above), used by the tests.
AUTHORS_UNET_PARAMETERS = {4: 13_875_081, 2: 13_869_175}


def level_kernel(size: int) -> int:
    """Kernel of the blocks working on an `size`-point grid (theirs: 9 @128 ... 3 @16 and 8)."""
    return max(3, 2 * round(math.log2(max(size, 1))) - 5)  # odd: 2 m - 5


def fit_kernel(kernel: int, size: int) -> int:
    """Largest odd kernel <= `kernel` whose circular padding (k-1)/2 is at most `size`."""
    while kernel > 1 and (kernel - 1) // 2 > size:
        kernel -= 2
    return kernel


def unet_depth(height: int, width: int, levels: int, min_bottleneck: int) -> int:
    """Down blocks used: at most `levels`, both sides even at each halving, bottleneck sides
    at least `min_bottleneck` (theirs: 4 levels, 128 -> 8)."""
    depth, h, w = 0, height, width
    while depth < levels and h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= min_bottleneck:
        h, w, depth = h // 2, w // 2, depth + 1
    return depth


class AuthorsUNet(nn.Module):
    """`[B, channels, H, W] -> [B, channels, H, W]` (H, W divisible by 2**depth)."""

    def __init__(self, channels: int, resolution: int | tuple[int, int], *, base: int = 24,
                 levels: int = 4, heads: int = 4, ffn_ratio: int = 2, min_bottleneck: int = 4,
                 residual: bool = False):
        super().__init__()
        height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
        self.residual = residual
        self.depth = d = unet_depth(height, width, levels, min_bottleneck)
        sizes = [min(height, width) // 2**i for i in range(d + 1)]
        ks = [fit_kernel(level_kernel(s), s) for s in sizes]
        k0 = fit_kernel(ks[0] + 2, sizes[0])
        c = base
        self.proj_in = Conv(channels, c, k0)
        self.downs = nn.ModuleList(Down(c * 2**i, ks[i]) for i in range(d))
        self.across = nn.Sequential(
            ScalarRMSNorm((-2, -1), swish=True),
            Conv(c * 2**d, c * 2 ** (d + 1), ks[d]),
            AttnBlock(c * 2 ** (d + 1), heads=heads, ratio=ffn_ratio))
        # ups[j] handles level i = d - j; its input has c 2^(i+1) channels.
        self.ups = nn.ModuleList(Up(c * 2 ** (i + 1), ks[i - 1]) for i in range(d, 0, -1))
        self.proj_out = nn.Sequential(
            ScalarRMSNorm((-2, -1), swish=True), Conv(2 * c, 2 * c, k0),
            ScalarRMSNorm((-2, -1), swish=True), Conv(2 * c, 2 * c, k0),
            Conv(2 * c, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.across(skips.pop())
        for up in self.ups:
            h = torch.cat([up(h), skips.pop()], dim=1)
        out = self.proj_out(h)
        return x + out if self.residual else out
