"""`hat_matrix` on architectures users bring, against a dense float64 reference.

Models: a Fourier neural operator (complex spectral weights, in-place writes into a
preallocated buffer: vmap cannot trace it), a UNet-ish net with BatchNorm in eval mode, a
ConvNeXt-style net (depthwise 7x7, LayerNorm over channels, GELU, layer scale), a model with a
complex gain in a real output, and a hand-written autograd.Function (no torch.func support at
all: reverse-mode loop and the double-backward JVP).

Reference path (no torch.func): per-example gradients by `loss.backward()` on the module
itself (complex `p.grad` read as (d/d re, d/d im) through `view_as_real`), the output Jacobian
by `torch.autograd.functional.jacobian` of a flat real parameter vector (complex entries
rebuilt with `torch.complex`), the basis from numpy's SVD, and a dense solve.
"""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import gradients as grad_mod
from pdeinf.influence import hat_matrix
from pdeinf.influence.gradients import trainable_parameters
from pdeinf.influence.hat import HatEngine, adam_preconditioner

pytestmark = pytest.mark.usefixtures("float64_torch", "one_torch_thread")


def smse_ref(pred, target):
    scale = target.pow(2).mean(dim=(-2, -1)).sqrt() + 1e-6
    return ((pred - target).pow(2).mean(dim=(-2, -1)) / scale).mean(dim=-1)


# ----------------------------------------------------------------------------- models
class SpectralConv(nn.Module):
    """FNO spectral layer: complex weights on the lowest k x k modes of rfft2 (both signs in H)."""

    def __init__(self, c, k):
        super().__init__()
        self.k = k
        self.w_pos = nn.Parameter(0.4 * torch.randn(c, c, k, k, dtype=torch.complex128))
        self.w_neg = nn.Parameter(0.4 * torch.randn(c, c, k, k, dtype=torch.complex128))

    def forward(self, x):
        b, c, h, w = x.shape
        xf = torch.fft.rfft2(x)
        out_ft = torch.zeros(b, c, h, w // 2 + 1, dtype=xf.dtype)  # preallocated, written in place
        k = self.k
        out_ft[:, :, :k, :k] = torch.einsum("bixy,ioxy->boxy", xf[:, :, :k, :k], self.w_pos)
        out_ft[:, :, -k:, :k] = torch.einsum("bixy,ioxy->boxy", xf[:, :, -k:, :k], self.w_neg)
        return torch.fft.irfft2(out_ft, s=(h, w))


class FNO(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.lift = nn.Conv2d(2, 4, 1)
        self.spectral = SpectralConv(4, 2)
        self.pointwise = nn.Conv2d(4, 4, 1)
        self.proj = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.lift(x)
        h = nn.functional.gelu(self.spectral(h) + self.pointwise(h))
        return x + self.proj(h)


class UNetBN(nn.Module):
    """Two levels, BatchNorm (running statistics made non-trivial), skip by concatenation."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inc = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), nn.BatchNorm2d(3), nn.Tanh())
        self.down = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.SiLU())
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.out = nn.Conv2d(6, 2, 1)
        for bn in (self.inc[1], self.down[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)

    def forward(self, x):
        a = self.inc(x)
        b = self.up(self.down(a))
        return x + self.out(torch.cat([a, b], dim=1))


class ConvNeXt(nn.Module):
    """Stem, one ConvNeXt block (depthwise 7x7, LayerNorm over channels, MLP with GELU, layer
    scale, residual), head."""

    def __init__(self, seed=0, c=4):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(2, c, 1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c, padding_mode="circular")
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(0.5 * torch.ones(c))
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        z = self.dw(h).permute(0, 2, 3, 1)  # [B, H, W, C]
        z = self.fc2(nn.functional.gelu(self.fc1(self.norm(z))))
        h = h + (self.gamma * z).permute(0, 3, 1, 2)
        return self.head(h)


class ComplexGain(nn.Module):
    """A complex per-channel gain z entering a real output through |z|, Re(z^2) and Im(z)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
        self.z = nn.Parameter(torch.randn(2, dtype=torch.complex128))

    def forward(self, x):
        if x.is_complex():
            raise AssertionError("inputs must stay real")
        c = ((self.z * self.z).real + self.z.abs())[None, :, None, None]
        return self.conv(x) * c + self.z.imag[None, :, None, None] * torch.tanh(x)


class _Softsign(torch.autograd.Function):
    """Old-style Function (no setup_context): autograd only, no torch.func transforms."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x / (1 + x.abs())

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out / (1 + x.abs()) ** 2


class CustomFunction(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return x + self.b(_Softsign.apply(self.a(x)))


# ----------------------------------------------------------------------------- reference
def batch(n=4, seed=1, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, h, w, generator=g)
    y = x + 0.3 * torch.randn(n, 2, h, w, generator=g)
    return x, y


def loop_grads(model, x, y):
    """[N, P] gradients of SMSE by backward on the module; complex p.grad -> (re, im)."""
    rows = []
    for n in range(x.shape[0]):
        model.zero_grad()
        smse_ref(model(x[n:n + 1]), y[n:n + 1]).sum().backward()
        rows.append(torch.cat([
            (torch.view_as_real(p.grad) if p.is_complex() else p.grad).reshape(-1) for p in model.parameters()
        ]))
    return torch.stack(rows)


def real_function(model):
    """theta (flat reals, complex entries as (re, im) pairs) -> the module's output."""
    spec = [(n, p.shape, p.numel() * (2 if p.is_complex() else 1), p.is_complex()) for n, p in model.named_parameters()]
    theta = torch.cat([(torch.view_as_real(p.detach()) if p.is_complex() else p.detach()).reshape(-1)
                       for p in model.parameters()])

    def f(t, x):
        params, i = {}, 0
        for name, shape, k, cplx in spec:
            piece = t[i:i + k]
            if cplx:
                piece = piece.reshape(*shape, 2)
                params[name] = torch.complex(piece[..., 0], piece[..., 1])
            else:
                params[name] = piece.reshape(shape)
            i += k
        return torch.func.functional_call(model, params, (x,))

    return f, theta


def dense_pi(model, x, y, damping=1e-6, bra_rows=None, energy_tol=0.0):
    """Pi = (Q^T R)^T (Q^T J^T J Q / M + damping)^{-1} Q^T G, Q from SVD of [G | R^T]."""
    G = loop_grads(model, x, y).numpy().T  # [P, N]
    f, theta = real_function(model)
    J = torch.autograd.functional.jacobian(lambda t: f(t, x).reshape(-1), theta).numpy()  # [M, P]
    R = G if bra_rows is None else bra_rows.numpy().T
    U, s, _ = np.linalg.svd(G if bra_rows is None else np.concatenate([G, R], 1), full_matrices=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    r = min(int(np.sum(energy < 1 - energy_tol)) + 1, int(np.sum(s > 1e-7 * s[0])))
    Q = U[:, :r]
    eta = Q.T @ (J.T @ J / J.shape[0]) @ Q + damping * np.eye(r)
    return (Q.T @ R).T @ np.linalg.solve(eta, Q.T @ G), r, G.shape[0]


def rel(a, b):
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def pdeinf_warnings(record):
    return [w for w in record if str(w.message).startswith("pdeinf:")]


MODELS = {
    "fno": (FNO, True),  # (class, vmap falls back)
    "unet_batchnorm": (UNetBN, False),
    "convnext": (ConvNeXt, False),
    "complex_gain": (ComplexGain, False),
    "custom_function": (CustomFunction, True),
}


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(MODELS))
def test_foreign_model_matches_dense_reference(name):
    cls, falls_back = MODELS[name]
    model = cls().eval()
    x, y = batch()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = hat_matrix(model, x, y, damping=1e-6, energy_tol=0.0)
    ref, r, p = dense_pi(model, x, y)
    assert rel(res.pi, ref) < 1e-9
    assert res.rank == r
    _, layout = trainable_parameters(model)
    assert layout.size == p == sum(q.numel() * (2 if q.is_complex() else 1) for q in model.parameters())
    ours = pdeinf_warnings(record)
    if falls_back:
        assert len(ours) == 1, [str(w.message) for w in ours]
        assert cls.__name__ in str(ours[0].message)
    else:
        assert not ours, [str(w.message) for w in ours]


def test_fno_joint_bra_at_transformed_inputs():
    """Orbit influence through the fallback paths: bras at (g.x_n, g.y_n), J at x."""
    model = FNO(seed=3).eval()
    x, y = batch(seed=4)
    g = lambda t: torch.rot90(t, 1, dims=(-2, -1))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = hat_matrix(model, x, y, response_transform=g, energy_tol=0.0)
    assert len(pdeinf_warnings(record)) == 1
    ref, r, _ = dense_pi(model, x, y, bra_rows=loop_grads(model, g(x), g(y)))
    assert res.rank == r and rel(res.pi, ref) < 1e-9


def test_complex_parameters_in_adam_preconditioner():
    """AdamW steps on (re, im) of a complex parameter: D matches the linear part of one step."""
    model, (x, y) = ComplexGain(seed=5), batch(seed=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        smse_ref(model(x), y).mean().backward()
        opt.step()
    _, layout = trainable_parameters(model)
    d = adam_preconditioner(opt.state_dict(), layout)
    g = torch.randn(layout.size, generator=torch.Generator().manual_seed(3))

    def change(grad_flat):
        m = copy.deepcopy(model)
        o = torch.optim.AdamW(m.parameters())
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        flat = lambda: torch.cat([(torch.view_as_real(p.detach()) if p.is_complex() else p.detach()).reshape(-1)
                                  for p in m.parameters()])
        before, i = flat().clone(), 0
        for p in m.parameters():
            k = p.numel() * (2 if p.is_complex() else 1)
            piece = grad_flat[i:i + k]
            p.grad = (torch.view_as_complex(piece.reshape(*p.shape, 2).clone()) if p.is_complex()
                      else piece.reshape(p.shape).clone())
            i += k
        o.step()
        return flat() - before

    eps, lr = 1e-9, opt.param_groups[0]["lr"]
    linear = (change(eps * g) - change(0 * g)) / eps
    assert torch.allclose(linear, -lr * d * g, rtol=2e-5, atol=1e-6 * (lr * d * g).abs().max())
    res = hat_matrix(model, x, y, metric="adam", optimizer_state=opt.state_dict())
    G = loop_grads(model, x, y)
    assert torch.allclose(res.pi, (G * d) @ G.T, rtol=1e-10)


def test_wrong_models_are_refused_before_computation():
    x, y = batch()
    with pytest.raises(InputError, match="nn.Module"):
        hat_matrix(lambda t: 2 * t, x, y)
    dropout = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Dropout(0.1))
    with pytest.raises(InputError, match="Dropout.*train mode"):
        hat_matrix(dropout, x, y)
    assert hat_matrix(dropout.eval(), x, y).pi.shape == (4, 4)
    with pytest.raises(InputError, match="3 output channels for 2 input channels"):
        hat_matrix(nn.Conv2d(2, 3, 1).eval(), x, y)
    with pytest.raises(InputError, match="outputs"):
        hat_matrix(nn.Conv2d(2, 2, 3).eval(), x, y)  # no padding: H, W shrink


def test_non_finite_gradients_are_a_numerical_error():
    class Sqrt(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.b = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.sqrt(self.w) * x + self.b * x  # finite output, infinite d/dw at w = 0

    x, y = batch()
    with pytest.raises(NumericalError, match="SMSE: per-example gradients contain NaN or Inf"):
        hat_matrix(Sqrt(), x, y)


def test_impossible_gradient_matrix_is_refused_up_front(monkeypatch):
    model, (x, y) = ConvNeXt(), batch()
    monkeypatch.setattr(grad_mod, "available_memory", lambda: 1024)
    with pytest.raises(InputError, match=r"gradient matrix \(4 x \d+ float64\) needs 0\.00 GiB"):
        HatEngine(model, x, y)
    need = 4 * trainable_parameters(model)[1].size * 8
    monkeypatch.setattr(grad_mod, "available_memory", lambda: need)
    HatEngine(model, x, y)  # exactly enough is accepted
