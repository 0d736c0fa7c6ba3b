"""Building blocks of the surrogates: pdeinf's own (GroupNorm ResBlocks, LayerNorm/GELU
transformer) and the authors' (lanl/PDEHats, Lux.jl), rebuilt in PyTorch.

Every layer passes `torch.func` transforms: no BatchNorm (running statistics break
`vmap(grad)`), no fused attention (the CPU flash kernel has no forward-mode AD); attention is
matmul + softmax. Lux conventions (`(x, y, channel, batch)` arrays = our `[B, C, H=y, W=x]`):
`LayerNorm((1, 1, C), swish; dims=(1, 2))` -> `SpaceNorm`; `RMSNorm((1, 1))` / `RMSNorm((1,))`
(RMS over space / token features, ONE scalar scale) -> `ScalarRMSNorm`; `MultiHeadAttention`
(no biases) -> `BiasFreeSelfAttention`. Lux initialisation: `kaiming_normal` N(0, 2 / fan_in),
default weight U(+-sqrt(3 / fan_in)), default bias U(+-1 / sqrt(fan_in)); `fan_in` = in_channels
x kernel area; norm scales 1, shifts 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pdeinf.errors import InputError


def group_count(channels: int) -> int:
    """Number of GroupNorm groups: the largest divisor of `channels` not above 8."""
    return math.gcd(channels, 8)


def lux_init_(tensor: torch.Tensor, fan_in: int, kind: str) -> None:
    """In place: `"kaiming_normal"` N(0, 2/fan_in), `"lux"` U(+-sqrt(3/fan_in)) (Lux default
    weight) or `"bias"` U(+-1/sqrt(fan_in)) (Lux default bias)."""
    with torch.no_grad():
        if kind == "kaiming_normal":
            tensor.normal_(0.0, math.sqrt(2.0 / fan_in))
        else:
            bound = math.sqrt(3.0 / fan_in) if kind == "lux" else 1.0 / math.sqrt(fan_in)
            tensor.uniform_(-bound, bound)


class CircularConv2d(nn.Conv2d):
    """`Conv2d` with circular padding of `(kernel_size - 1) // 2` per side: with stride 1 and an
    odd kernel the grid is kept, and the layer commutes with circular translations."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None):
        pad = (kernel_size - 1) // 2 if padding is None else padding
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                         padding_mode="circular" if pad else "zeros")


class Conv(CircularConv2d):
    """The authors' circular conv with bias, `[B, c_in, H, W] -> [B, c_out, H/stride, W/stride]`;
    `init="kaiming_normal"` or `"lux"` (the Lux default)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, *, stride: int = 1,
                 init: str = "kaiming_normal"):
        super().__init__(c_in, c_out, kernel_size, stride=stride)
        lux_init_(self.weight, self.weight[0].numel(), init)
        lux_init_(self.bias, self.weight[0].numel(), "bias")


class Linear(nn.Linear):
    """Lux `Dense` with its default initialisation; `[..., d_in] -> [..., d_out]`."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__(d_in, d_out, bias=bias)
        lux_init_(self.weight, d_in, "lux")
        if bias:
            lux_init_(self.bias, d_in, "bias")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """`softmax(q k^T / sqrt(d_head)) v` per head for `[B, L, D]` queries, keys, values."""
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
    """norm -> swish -> conv -> norm -> swish -> conv, plus a (1x1 projected) residual;
    `[B, c_in, H, W] -> [B, c_out, H, W]`."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(c_in), c_in)
        self.conv1 = CircularConv2d(c_in, c_out, kernel_size)
        self.norm2 = nn.GroupNorm(group_count(c_out), c_out)
        self.conv2 = CircularConv2d(c_out, c_out, kernel_size)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


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


class BiasFreeSelfAttention(nn.Module):
    """Multi-head self-attention on tokens `[B, L, D] -> [B, L, D]`, no biases (Lux MHA)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.q, self.k, self.v, self.out = (Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(attend(self.q(x), self.k(x), self.v(x), self.heads))


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


class SpaceNorm(nn.GroupNorm):
    """Per-sample, per-channel normalisation over space with a per-channel affine map, then
    swish; `[B, C, H, W] -> same`."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(super().forward(x))


class ScalarRMSNorm(nn.Module):
    """`x / sqrt(mean(x^2 over dims) + eps) * scale` with ONE learned scalar; `dims=(-2, -1)`:
    over space of `[B, C, H, W]`; `dims=(-1,)`: over the features of tokens `[B, L, D]`."""

    def __init__(self, dims: tuple[int, ...], eps: float = 1e-5, swish: bool = False):
        super().__init__()
        self.dims, self.eps, self.swish = dims, eps, swish
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(dim=self.dims, keepdim=True) + self.eps) * self.scale
        return F.silu(y) if self.swish else y


class Down(nn.Module):
    """Their `Down(c; K)`: `[B, c, H, W] -> [B, 2c, H/2, W/2]`; the skip path is a 1x1 conv and
    a fixed K x K mean (stride 2, circular padding)."""

    def __init__(self, c: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.norm_in = SpaceNorm(c)
        self.skip = Conv(c, 2 * c, 1)
        self.conv_in = Conv(c, 2 * c, kernel)
        self.norm_out = SpaceNorm(2 * c)
        self.conv_out = Conv(2 * c, 2 * c, kernel, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_in(x)
        p = (self.kernel - 1) // 2
        skip = F.avg_pool2d(F.pad(self.skip(h), (p, p, p, p), mode="circular") if p else self.skip(h),
                            self.kernel, stride=2)
        main = self.conv_out(self.norm_out(self.conv_in(h)))
        return (main + skip) / math.sqrt(2.0)


class Up(nn.Module):
    """Their `Up(c; K)` (pixel shuffle): `[B, c, H, W] -> [B, c/4, 2H, 2W]`."""

    def __init__(self, c: int, kernel: int):
        super().__init__()
        if c % 4:
            raise InputError(f"Up needs channels divisible by 4, got {c}")
        co = c // 4
        self.norm_in = SpaceNorm(c)
        self.shuffle = nn.PixelShuffle(2)
        self.skip = Conv(co, co, 1)
        self.conv_in = Conv(co, co, kernel)
        self.norm_out = SpaceNorm(co)
        self.conv_out = Conv(co, co, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shuffle(self.norm_in(x))
        return (self.conv_out(self.norm_out(self.conv_in(h))) + self.skip(h)) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Their UNet bottleneck `AttnBlock(c; N_heads=4, r)` on `[B, c, H, W]`: attention over
    the pixels, then a 1x1-conv FFN of ratio `r`."""

    def __init__(self, c: int, heads: int = 4, ratio: int = 2):
        super().__init__()
        self.norm_in = ScalarRMSNorm((-2, -1))
        self.mha = BiasFreeSelfAttention(c, heads)
        self.ffn_norm = ScalarRMSNorm((-2, -1))
        self.ffn_in = Conv(c, ratio * c, 1)
        self.ffn_out = Conv(ratio * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x + over_pixels(self.mha, self.norm_in(x))
        ffn = self.ffn_out(F.silu(self.ffn_in(self.ffn_norm(a))))
        return (ffn + a) / math.sqrt(2.0)


class EncoderLayer(nn.Module):
    """Their ViT encoder layer on `[B, L, D]`: x + MHA(RMSNorm(x)); x + MLP(RMSNorm(x))."""

    def __init__(self, dim: int, heads: int, ratio: int = 2):
        super().__init__()
        self.norm1 = ScalarRMSNorm((-1,))
        self.attn = BiasFreeSelfAttention(dim, heads)
        self.norm2 = ScalarRMSNorm((-1,))
        self.mlp_in = Linear(dim, ratio * dim)
        self.mlp_out = Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp_out(F.silu(self.mlp_in(self.norm2(x))))
