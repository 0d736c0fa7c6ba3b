"""The authors' ViT (lanl/PDEHats `src/Models/ViT/{ViT,embed,encoder}.jl`, commit 02eff15).
Their code: depth 8, 8 heads, MLP ratio 2, width 256 (the paper's text says depth six, L1313:
`depth` is a setting, default 8 as the code).

    patch embed  circular pad 2, conv 5x5 stride 4 (Lux default init), F -> D   [B, L, D]
    + position embedding, one N(0, 1) vector per token (their `randn` init)
    -> depth x [x + MHA(RMSNorm(x)); x + Dense(rD -> D)(swish(Dense(D -> rD)(RMSNorm(x))))]
    -> RMSNorm (one scalar scale) -> Dense(D -> 16 F) -> un-patching -> u_{t+1}
    (`residual=True`: u_t + that)

Un-patching, theirs (`unpatch="strip"`): the 16 values of token t land at flat pixels
16 t .. 16 t + 15 of the row-major `[H, W]` grid, a 1 x 16 strip inside the token's band of 4
rows, not its 4 x 4 patch; so the model commutes with circular shifts along H by multiples of 4
(position embedding removed) but not along W. `unpatch="patch"`: the conventional placement.

Parameters at 128 x 128, CE (F = 4): embed 25,856; position 262,144; encoder 8 x 525,058;
final norm 1; dense 16,448; total 4,504,913 (NS, F = 2: 4,483,889; depth 6: 3,454,797).
"""
from __future__ import annotations

import torch
from torch import nn

from pdeinf.errors import InputError
from pdeinf.models.blocks import Conv, EncoderLayer, Linear, ScalarRMSNorm

AUTHORS_VIT_PARAMETERS = {4: 4_504_913, 2: 4_483_889}
UNPATCH_MODES = ("strip", "patch")


class AuthorsViT(nn.Module):
    """`[B, channels, H, W] -> [B, channels, H, W]`; H and W multiples of `stride` (4)."""

    def __init__(self, channels: int, resolution: int | tuple[int, int], *, width: int = 256,
                 depth: int = 8, heads: int = 8, mlp_ratio: int = 2, kernel: int = 5,
                 stride: int = 4, unpatch: str = "strip", residual: bool = False):
        super().__init__()
        height, width_px = (resolution, resolution) if isinstance(resolution, int) else resolution
        if height % stride or width_px % stride:
            raise InputError(f"grid {height}x{width_px} is not a multiple of the patch stride {stride}")
        if unpatch not in UNPATCH_MODES:
            raise InputError(f"unpatch must be one of {UNPATCH_MODES}, got {unpatch!r}")
        self.channels, self.stride, self.unpatch, self.residual = channels, stride, unpatch, residual
        self.grid = (height // stride, width_px // stride)
        self.embed = Conv(channels, width, kernel, stride=stride, init="lux")
        self.pos = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], width))
        self.blocks = nn.ModuleList(EncoderLayer(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = ScalarRMSNorm((-1,))
        self.dense = Linear(width, stride * stride * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, L, D], L = gh * gw
        for block in self.blocks:
            tokens = block(tokens)
        s, (gh, gw) = self.stride, self.grid
        out = self.dense(self.norm(tokens)).reshape(b, gh * gw, c, s * s)  # value (f, a): f*16 + a
        if self.unpatch == "strip":
            out = out.permute(0, 2, 1, 3).reshape(b, c, h, w)
        else:
            out = out.reshape(b, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return x + out if self.residual else out
