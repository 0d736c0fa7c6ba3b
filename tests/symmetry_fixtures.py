"""Small float64 models and batches shared by the symmetry-study and orbit-influence tests."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch


class Pointwise(torch.nn.Module):
    """f(u) = a u + b u^3 per grid point and channel: commutes with every D4 element and shift
    (vector components are permuted / negated, and odd powers keep signs) for EVERY (a, b)."""

    def __init__(self, a=0.9, b=0.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, u):
        return self.a * u + self.b * u ** 3


def conv_net(seed: int, hidden: int = 4):
    """A circular tanh conv net on 2 channels (not equivariant to D4 in general)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, hidden, 3, padding=1, padding_mode="circular"), torch.nn.Tanh(),
        torch.nn.Conv2d(hidden, 2, 3, padding=1, padding_mode="circular")).double().eval()


def symmetry_batch(seed: int, n_per_class: int = 2, size: int = 8):
    """An influence-batch stand-in: 3 classes x `n_per_class` NS-shaped inputs `[N, 2, size, size]`,
    targets near 0.8 x, class labels `c` and `trajectory`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n_per_class, 2, size, size, generator=g, dtype=torch.float64)
    y = 0.8 * x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    c = np.repeat(np.arange(3), n_per_class)
    return SimpleNamespace(inputs=x, targets=y, c=c, trajectory=c)
