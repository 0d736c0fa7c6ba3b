"""Building blocks shared by the UNet and the ViT.

Every layer here is written so that `torch.func` transforms pass through it: no BatchNorm
(running statistics break `vmap(grad)`), no fused scaled-dot-product attention (the CPU flash
kernel has no forward-mode AD, so `jvp` through `nn.MultiheadAttention` fails); attention is
written out as matmul + softmax.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pdeinf.errors import InputError


def group_count(channels: int, max_groups: int = 8) -> int:
    """Number of GroupNorm groups: the largest divisor of `channels` not above `max_groups`."""
    return math.gcd(channels, max_groups)


class CircularConv2d(nn.Conv2d):
    """`Conv2d` with circular ("periodic") padding of `(kernel_size - 1) // 2` on each side.

    With stride 1 and an odd kernel the output grid equals the input grid. The padding wraps the
    periodic domain, so the layer commutes with circular translations (by multiples of the stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None):
        pad = (kernel_size - 1) // 2 if padding is None else padding
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                         padding_mode="circular" if pad else "zeros")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """`softmax(q k^T / sqrt(d_head)) v` per head (explicit, so that torch.func passes through
    it) for queries, keys and values `[B, L, D]` -> `[B, L, D]`."""
    b, n, d = q.shape
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, d)


def check_heads(dim: int, heads: int) -> None:
    if dim % heads:
        raise InputError(f"attention width {dim} is not divisible by heads={heads}")


def over_pixels(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`attention` (tokens `[B, L, C]` -> same) applied to the pixels of `x` `[B, C, H, W]`."""
    b, c, h, w = x.shape
    return attention(x.reshape(b, c, h * w).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)


class ResBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> conv, plus a (1x1 projected) residual.

    `[B, c_in, H, W] -> [B, c_out, H, W]`, circular padding, kernel `kernel_size`.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(c_in), c_in)
        self.conv1 = CircularConv2d(c_in, c_out, kernel_size)
        self.norm2 = nn.GroupNorm(group_count(c_out), c_out)
        self.conv2 = CircularConv2d(c_out, c_out, kernel_size)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on tokens `[B, L, D] -> [B, L, D]` (explicit softmax)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(*self.qkv(x).chunk(3, dim=-1), self.heads))


class SpatialAttention(nn.Module):
    """Pre-norm residual self-attention over the pixels of a feature map `[B, C, H, W]`."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.attn = MultiHeadSelfAttention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + over_pixels(self.attn, self.norm(x))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + MHSA(LN(x)), then x + MLP(LN(x)); `[B, L, D]`."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
