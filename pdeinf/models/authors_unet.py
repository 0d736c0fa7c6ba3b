"""The authors' UNet (lanl/PDEHats `src/Models/UNet/{UNet,down,up,attn}.jl`), in PyTorch.

Read at lanl/PDEHats commit 02eff15 (UNet.jl, attn.jl, up.jl) and 456799e (down.jl): the stored
versions; the paper commit 843937e itself is not in the code index. The paper commit's text
(L1312: "BigGAN-style, 24 channels, 4 down blocks, ~13M", kernels 11/9/7/5/3) agrees with them.

Layout for `depth` down blocks (theirs: depth 4, `chs` = 24, at 128 x 128), with `c = chs`:

    proj_in   circ. conv K0, F -> c                                          [c,    R]
    down_i    Down(c 2^(i-1); K_i)  (i = 1..depth)                          [c 2^i, R/2^i]
    across    ScalarRMSNorm_space + swish, circ. conv K, c 2^d -> c 2^(d+1),
              AttnBlock(c 2^(d+1); 4 heads, FFN ratio 2)                   [c 2^(d+1), R/2^d]
    up_i      cat(previous, skip) -> Up(c 2^(i+1); K_i)  (i = depth..1)     [c 2^(i-1), R/2^(i-1)]
    proj_out  cat(up_1, proj_in) -> [RMSNorm_space + swish, circ. conv K0, 2c -> 2c] x 2,
              conv1x1 2c -> F                                               [F,    R]

and the output is `u_{t+1}` itself (their loss compares `model(u_t)` with `u_{t+1}`);
`residual=True` returns `u_t + model(u_t)` instead. Kernel by grid size of the level
(theirs at 128: 9 @128, 7 @64, 5 @32, 3 @16, 3 @8; K0 = 11 = level-0 kernel + 2):
`level_kernel(n) = max(3, 2 log2(n) - 5)`, clipped so the circular padding wraps at most once.

Their parameter count (CE, F = 4, chs = 24, 128 x 128), from the layer definitions
(conv: k^2 c_in c_out + c_out; SpaceNorm: 2c; RMSNorm: 1; MHA: 4 d^2, no bias):

    proj_in     11^2*4*24 + 24                                              =      11,640
    down_1      (c=24, K=9)  2*24 + (24*48+48) + (81*24*48+48) + 2*48 + (81*48*48+48) = 281,376
    down_2      (c=48, K=7)                                                 =     682,560
    down_3      (c=96, K=5)                                                 =   1,401,984
    down_4      (c=192, K=3)                                                =   2,066,688
    across conv 1 + 9*384*768 + 768                                         =   2,654,977
    across attn 1 + 4*768^2 + 1 + (768*1536+1536) + (1536*768+768)          =   4,720,898
    up_4        (c=768, K=3) 2*768 + (192^2+192) + 2*(9*192^2+192) + 2*192  =     702,912
    up_3        (c=384, K=5)                                                =     471,264
    up_2        (c=192, K=7)                                                =     228,720
    up_1        (c=96, K=9)                                                 =      94,200
    proj_out    1 + (121*48*48+48) + 1 + (121*48*48+48) + (48*4+4)          =     557,862
    total                                                                     13,875,081
    (NS, F = 2: 13,869,175.)
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
    k = max(3, 2 * round(math.log2(max(size, 1))) - 5)
    return k if k % 2 else k + 1


def fit_kernel(kernel: int, size: int) -> int:
    """Largest odd kernel <= `kernel` whose circular padding (k-1)/2 is at most `size`."""
    while kernel > 1 and (kernel - 1) // 2 > size:
        kernel -= 2
    return kernel


def unet_depth(height: int, width: int, levels: int, min_bottleneck: int) -> int:
    """Down blocks used: at most `levels`, both sides even at each halving, bottleneck sides
    at least `min_bottleneck` (theirs: 4 levels, 128 -> 8)."""
    depth = 0
    h, w = height, width
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
