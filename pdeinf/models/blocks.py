"""Building blocks of the authors' surrogates (lanl/PDEHats, Lux.jl), rebuilt in PyTorch.

Conventions carried over from their Julia code (arrays `(x, y, channel, batch)`, column-major,
which is our `[B, C, H=y, W=x]` in row-major memory order):

- `LayerNorm((1, 1, C), swish; dims=(1, 2))` normalises each channel of each sample over space
  and has a per-channel scale and shift -> `SpaceNorm` (= GroupNorm with one group per channel).
- Lux `RMSNorm(shape)` divides by the root mean square over the first `len(shape)` axes and
  multiplies by a learned scale *of that shape*; their shapes are `(1, 1)` (UNet: RMS over space,
  per channel) and `(1,)` (ViT: RMS over the features of a token), so the scale is ONE scalar
  -> `ScalarRMSNorm`.
- Lux `MultiHeadAttention(d; nheads)`: q, k, v and output projections without bias, softmax of
  `q.k / sqrt(d_head)` -> `BiasFreeSelfAttention` (explicit matmul + softmax, so that
  `torch.func.jvp`/`vmap` pass through it on every backend).

Initialisation (Lux defaults unless their code names one):
- `init_weight=kaiming_normal`: N(0, 2 / fan_in) -> `kaiming_normal_`;
- Lux default weight: U(+-sqrt(3 / fan_in)) (kaiming_uniform with gain 1) -> `lux_default_`;
- Lux default bias: U(+-1 / sqrt(fan_in)) (the PyTorch default) -> `lux_bias_`;
- norm scales 1, shifts 0.
`fan_in` = in_channels * kernel area.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pdeinf.errors import InputError
from pdeinf.models.layers import CircularConv2d, attend, check_heads, over_pixels


def kaiming_normal_(weight: torch.Tensor) -> None:
    """N(0, 2/fan_in) in place (Lux/WeightInitializers `kaiming_normal`, gain sqrt(2))."""
    fan_in = weight[0].numel()
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / fan_in))


def lux_default_(weight: torch.Tensor) -> None:
    """U(-sqrt(3/fan_in), sqrt(3/fan_in)) in place (Lux Dense/Conv default weight)."""
    bound = math.sqrt(3.0 / weight[0].numel())
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def lux_bias_(bias: torch.Tensor, fan_in: int) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in place (Lux default bias)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        bias.uniform_(-bound, bound)


class Conv(CircularConv2d):
    """Circularly padded conv, `[B, c_in, H, W] -> [B, c_out, H/stride, W/stride]`, with bias.

    Padding `(k - 1) // 2` per side wraps the periodic domain (their `pad_circular` with
    `get_padding_circular(K)`). `init="kaiming_normal"` or `"lux"` (the Lux default).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, *, stride: int = 1,
                 init: str = "kaiming_normal"):
        super().__init__(c_in, c_out, kernel_size, stride=stride)
        (kaiming_normal_ if init == "kaiming_normal" else lux_default_)(self.weight)
        lux_bias_(self.bias, self.weight[0].numel())


class Linear(nn.Linear):
    """Lux `Dense` with its default initialisation; `[..., d_in] -> [..., d_out]`."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__(d_in, d_out, bias=bias)
        lux_default_(self.weight)
        if bias:
            lux_bias_(self.bias, d_in)


class SpaceNorm(nn.GroupNorm):
    """Per-sample, per-channel normalisation over space with a per-channel affine map, then
    swish; `[B, C, H, W] -> same`. Their `LayerNorm((1, 1, C), swish; dims=(1, 2))`."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(super().forward(x))


class ScalarRMSNorm(nn.Module):
    """`x / sqrt(mean(x^2 over dims) + eps) * scale` with ONE learned scalar (Lux `RMSNorm((1,1))`
    / `RMSNorm((1,))`). `dims=(-2, -1)`: over space of `[B, C, H, W]`; `dims=(-1,)`: over the
    features of tokens `[B, L, D]`."""

    def __init__(self, dims: tuple[int, ...], eps: float = 1e-5, swish: bool = False):
        super().__init__()
        self.dims, self.eps, self.swish = dims, eps, swish
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(dim=self.dims, keepdim=True) + self.eps) * self.scale
        return F.silu(y) if self.swish else y


class BiasFreeSelfAttention(nn.Module):
    """Multi-head self-attention on tokens `[B, L, D] -> [B, L, D]`, no biases (Lux MHA)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.q, self.k, self.v, self.out = (Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(attend(self.q(x), self.k(x), self.v(x), self.heads))


class Down(nn.Module):
    """Their `Down(c; K)`: `[B, c, H, W] -> [B, 2c, H/2, W/2]`.

        h = swish(SpaceNorm(x))
        skip = avgpool_K,stride2(circpad(conv1x1(h)))            (fixed K x K mean, no parameters)
        main = conv_K,stride2(swish(SpaceNorm(conv_K(h))))
        out  = (main + skip) / sqrt(2)
    """

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
    """Their `Up(c; K)`: `[B, c, H, W] -> [B, c/4, 2H, 2W]`.

        h = PixelShuffle_2(swish(SpaceNorm(x)))
        out = (conv_K(swish(SpaceNorm(conv_K(h)))) + conv1x1(h)) / sqrt(2)
    """

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
    """Their UNet bottleneck `AttnBlock(c; N_heads=4, r)` on `[B, c, H, W]`:

        a = x + MHA(pixels of ScalarRMSNorm_space(x))
        out = (a + conv1x1(swish(conv1x1_{c -> r c}(ScalarRMSNorm_space(a))))) / sqrt(2)
    """

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
    """Their ViT encoder layer on `[B, L, D]`: x + MHA(RMSNorm(x)); x + MLP(RMSNorm(x)),
    MLP = Dense(D, rD, swish) -> Dense(rD, D)."""

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
