"""Surrogates users bring, through both estimators, against a dense float64 reference, and
left exactly as found by every public function.

Zoo: neuraloperator's FNO, TFNO and UNO; The Well's UNetClassic and DilatedResNet (its FNO and
TFNO wrap neuraloperator 1.x and pass arguments 2.0 no longer takes; AFNO, AViT and UNetConvNext
need timm, hence torchvision); a
module used twice; a transposed conv tied to an encoder weight; GroupNorm + GELU; grid_sample
and interpolate (no forward-mode rule: both estimators fall back); the old weight-norm hook
and its parametrization; a registered parametrization; parameters that are views of one
tensor. Every model maps `[N, 2, H, W] -> [N, 2, H, W]` on 8x8 grids (16x16 for the UNet,
which pools four times), a few hundred to a few thousand parameters, N = 4.

Reference (no torch.func, on a float64 copy of the model): per-example SMSE gradients and the
rows of the output Jacobian by backward passes through the module itself (batched over unit
cotangents where autograd can; complex `p.grad` read as (d/d re, d/d im)); then the estimators' definitions solved densely:
subspace `Pi = Gp^T (Q^T J^T J Q / M + damping)^{-1} Gp` on the span of the gradients, and
full-space `H = B^T (J^T J + damping)^{-1} K / (C H W)` with kets and bras `J_n^T r_n`.
"""
import importlib
import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_foreign_models import pdeinf_warnings, smse_ref
from torch import nn
from torch.nn.utils import parametrize

from pdeinf.influence import CoherenceMonitor, hat_matrix
from pdeinf.influence.ntk import ntk_top_eigenvalue
from pdeinf.influence.untouched import model_state, same_state
from pdeinf.symmetry import equivariance_error, lie_derivative

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 4
SUB_DAMPING = 1e-3  # of the metric J^T J / M
FULL_DAMPING = 1e-2  # of J^T J (no 1/M)


# ----------------------------------------------------------------------------- the zoo
def _neuralop(name):
    models = pytest.importorskip("neuralop.models")
    if name == "fno":
        return models.FNO(n_modes=(3, 3), in_channels=2, out_channels=2, hidden_channels=4, n_layers=1)
    if name == "tfno":
        return models.TFNO(n_modes=(3, 3), in_channels=2, out_channels=2, hidden_channels=4, n_layers=1,
                           factorization="tucker", rank=0.5)
    return models.UNO(in_channels=2, out_channels=2, hidden_channels=4, lifting_channels=4,
                      projection_channels=4, n_layers=2, uno_out_channels=[4, 4],
                      uno_n_modes=[[3, 3], [3, 3]], uno_scalings=[[1, 1], [1, 1]], channel_mlp_skip="linear")


def _well(module, cls):
    """A model class of The Well, imported without `the_well.benchmark.models.__init__` (which
    also imports AFNO / AViT and needs timm, hence torchvision)."""
    benchmark = pytest.importorskip("the_well.benchmark")
    pytest.importorskip("huggingface_hub")
    name = "the_well.benchmark.models"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(os.path.dirname(benchmark.__file__), "models")]
        sys.modules[name] = package
    return getattr(importlib.import_module(f"{name}.{module}"), cls)


class UsedTwice(nn.Sequential):
    def __init__(self):
        block = nn.Conv2d(2, 2, 3, padding=1)
        super().__init__(block, nn.Tanh(), block)


class TiedTranspose(nn.Module):
    """Decoder = a transposed conv sharing the encoder's weight object."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(2, 4, 3, padding=1)
        self.decoder = nn.ConvTranspose2d(4, 2, 3, padding=1)
        self.decoder.weight = self.encoder.weight

    def forward(self, x):
        return self.decoder(torch.tanh(self.encoder(x)))


class GroupNormGelu(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.GELU(), nn.Conv2d(4, 2, 3, padding=1))


class GridSample(nn.Module):
    """A learned displacement field applied by grid_sample, then a down/up interpolation."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Conv2d(2, 2, 3, padding=1)
        self.mix = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        n, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=x.dtype), torch.linspace(-1, 1, w, dtype=x.dtype),
                                indexing="ij")
        grid = torch.stack([xs, ys], -1).expand(n, h, w, 2) + 0.1 * torch.tanh(self.offset(x)).permute(0, 2, 3, 1)
        moved = F.grid_sample(x, grid, align_corners=True)
        coarse = F.interpolate(self.mix(moved), scale_factor=0.5, mode="bilinear", align_corners=False)
        return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


class WeightNorms(nn.Module):
    """The deprecated weight-norm hook (recomputes `.weight` in a pre-hook) and its parametrization."""

    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.a = nn.utils.weight_norm(nn.Conv2d(2, 3, 3, padding=1))
        self.b = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 2, 3, padding=1))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class Symmetric(nn.Module):
    def forward(self, w):
        return 0.5 * (w + w.flip(-1).flip(-2))


class Parametrized(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        parametrize.register_parametrization(self.conv, "weight", Symmetric())
        self.out = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.out(torch.sin(self.conv(x)))


class ViewParameters(nn.Module):
    """Two parameters that are views of one storage (rows of one tensor)."""

    def __init__(self):
        super().__init__()
        base = torch.randn(2, 2, 2, 3, 3) * 0.3
        self.first = nn.Parameter(base[0])
        self.second = nn.Parameter(base[1])

    def forward(self, x):
        return F.conv2d(torch.tanh(F.conv2d(x, self.first, padding=1)), self.second, padding=1)


def _build(name):
    """(model in eval mode, float32, grid size)."""
    torch.manual_seed(3)
    builders = {
        "neuralop_fno": lambda: (_neuralop("fno"), 8),
        "neuralop_tfno": lambda: (_neuralop("tfno"), 8),
        "neuralop_uno": lambda: (_neuralop("uno"), 8),
        "well_unet_classic": lambda: (_well("unet_classic", "UNetClassic")(2, 2, 2, (16, 16), init_features=1), 16),
        "well_dilated_resnet": lambda: (_well("dilated_resnet", "DilatedResNet")(
            2, 2, 2, (8, 8), hidden_dim=4, blocks=1, levels_per_block=2), 8),
        "used_twice": lambda: (UsedTwice(), 8),
        "tied_transpose": lambda: (TiedTranspose(), 8),
        "groupnorm_gelu": lambda: (GroupNormGelu(), 8),
        "grid_sample": lambda: (GridSample(), 8),
        "weight_norm": lambda: (WeightNorms(), 8),
        "parametrization": lambda: (Parametrized(), 8),
        "parameter_views": lambda: (ViewParameters(), 8),
    }
    model, size = builders[name]()
    return model.float().eval(), size


ZOO = ["neuralop_fno", "neuralop_tfno", "neuralop_uno", "well_unet_classic", "well_dilated_resnet",
       "used_twice", "tied_transpose", "groupnorm_gelu", "grid_sample", "weight_norm",
       "parametrization", "parameter_views"]
#: models without a forward-mode rule somewhere: both estimators warn once, naming it
NO_FORWARD_MODE = {"grid_sample": "grid_sampler_2d"}


def _to_float64(model):
    """The model converted in place to float64 (complex parameters to complex128; `.double()`
    leaves those): the same objects, so ties and sharing stay."""
    for p in model.parameters():
        p.data = p.data.to(torch.complex128 if p.is_complex() else torch.float64)
    for m in model.modules():
        for k, b in m._buffers.items():
            if b is not None and b.is_floating_point():
                m._buffers[k] = b.to(torch.float64)
    return model


def _batch(size, dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, 2, size, size, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(N, 2, size, size, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


# ----------------------------------------------------------------------------- reference
def _flat_grad(model, output, cotangents=None):
    """Gradients of `output` (a scalar, or `[K, *output.shape]` cotangents batched through one
    backward graph) as flat real rows `[P]` or `[K, P]` (complex ones as (re, im))."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(output, params, cotangents, retain_graph=True, allow_unused=True,
                                is_grads_batched=cotangents is not None)
    lead = () if cotangents is None else (cotangents.shape[0],)
    return torch.cat([(torch.zeros(*lead, p.numel() * (2 if p.is_complex() else 1), dtype=torch.float64) if g is None
                       else (torch.view_as_real(g) if g.is_complex() else g).reshape(*lead, -1))
                      for p, g in zip(params, grads)], dim=-1)


def _jacobian_rows(model, out):
    """`[per, P]` rows of the Jacobian of one example's outputs: batched backward, or a loop of
    backward passes where the backward cannot be batched."""
    eye = torch.eye(out.numel(), dtype=out.dtype).reshape(out.numel(), *out.shape)
    try:
        return _flat_grad(model, out, eye)
    except (RuntimeError, NotImplementedError):
        return torch.stack([_flat_grad(model, out.reshape(-1)[k]) for k in range(out.numel())])


def _reference(model64, x, y):
    """Dense definitions of both estimators, numpy float64: `(Pi_subspace, H_fullspace)`."""
    per = x[0].numel()
    rows_j, rows_g, kets = [], [], []
    for n in range(N):
        out = model64(x[n:n + 1])
        rows_j.append(_jacobian_rows(model64, out))
        rows_g.append(_flat_grad(model64, smse_ref(out, y[n:n + 1]).sum()))
        with torch.no_grad():
            kets.append(((out - y[n:n + 1]) / (y[n:n + 1].pow(2).mean(dim=(-2, -1), keepdim=True).sqrt() + 1e-6)).reshape(-1))
    J = torch.cat(rows_j).numpy()  # [M, P]
    G = torch.stack(rows_g).numpy().T  # [P, N]
    U, s, _ = np.linalg.svd(G, full_matrices=False)
    Q = U[:, s > 1e-7 * s[0]]
    JQ = J @ Q
    eta = JQ.T @ JQ / J.shape[0] + SUB_DAMPING * np.eye(Q.shape[1])
    pi = (Q.T @ G).T @ np.linalg.solve(eta, Q.T @ G)
    R = np.zeros((J.shape[0], N))  # [M, N]: example n's residual in its own rows
    for n in range(N):
        R[n * per:(n + 1) * per, n] = kets[n].numpy()
    # K = J^T R and (J^T J + d)^{-1} J^T = J^T (J J^T + d)^{-1}: an M x M solve, not P x P
    JJ = J @ J.T
    chi_out = JJ @ np.linalg.solve(JJ + FULL_DAMPING * np.eye(J.shape[0]), R)  # J chi [M, N]
    return pi, R.T @ chi_out / per


_REFERENCES = {}


def _model_and_reference(name):
    if name not in _REFERENCES:
        model, size = _build(name)
        x, y = _batch(size, torch.float64)
        _REFERENCES[name] = (_reference(_to_float64(model), x, y), size)
    (pi, h), size = _REFERENCES[name]
    model, _ = _build(name)
    return model, size, pi, h


def _values(model):
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def _assert_untouched(model, before, values, what):
    assert same_state(before, model_state(model)) == [], what
    now = _values(model)
    assert len(now) == len(values) and all(torch.equal(a, b) for a, b in zip(now, values)), what
    assert all(p.requires_grad for p in model.parameters()), what


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("estimator", ["subspace", "full-space"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_dense_reference_and_is_left_untouched(name, estimator, dtype):
    model, size, pi_ref, h_ref = _model_and_reference(name)
    if dtype == torch.float64:
        model = _to_float64(model)
    x, y = _batch(size, dtype)
    before, values = model_state(model), _values(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if estimator == "subspace":
            res = hat_matrix(model, x, y, damping=SUB_DAMPING)
        else:
            rtol = 1e-10 if dtype == torch.float64 else 1e-5
            res = hat_matrix(model, x, y, estimator="full-space", damping=FULL_DAMPING, rtol=rtol, maxiter=2000)
    _assert_untouched(model, before, values, f"{name}: the model changed")
    ours = pdeinf_warnings(record)
    assert len(ours) <= 1, [str(w.message) for w in ours]
    if name in NO_FORWARD_MODE:
        assert len(ours) == 1 and NO_FORWARD_MODE[name] in str(ours[0].message)
    ref = pi_ref if estimator == "subspace" else h_ref
    err = np.abs(res.pi.numpy() - ref).max() / np.abs(ref).max()
    tol = 1e-7 if dtype == torch.float64 else 1e-4
    assert err < tol, f"{name} {estimator} {dtype}: {err:.2e}"
    if estimator == "full-space":
        assert bool(res.converged.all())
        slack = 1e-9 if dtype == torch.float64 else 1e-3
        assert (np.abs(res.pi.numpy() - ref) <= res.error_bound.numpy() + slack * np.abs(ref).max()).all()
    else:
        assert res.attrs["cut_directions"] == 0


def _call_everything(model, x, y):
    """Every public function that takes the model (each may refuse the model; that is fine)."""
    monitor = CoherenceMonitor(x, y, every=1)
    calls = {
        "hat_matrix": lambda: hat_matrix(model, x, y),
        "hat_matrix full-space": lambda: hat_matrix(model, x, y, estimator="full-space", maxiter=20),
        "CoherenceMonitor": lambda: monitor(model, 0),
        "equivariance_error": lambda: equivariance_error(model, x, y, "r", pde="NS"),
        "lie_derivative": lambda: lie_derivative(model, x, "x", pde="NS", layerwise=True),
        "ntk_top_eigenvalue": lambda: ntk_top_eigenvalue(model, x, maxiter=5),
    }
    for what, call in calls.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
        except Exception as err:
            if not isinstance(err, (NotImplementedError, RuntimeError, ValueError)) and \
                    type(err).__module__.split(".")[0] != "pdeinf":
                raise
        yield what


@pytest.mark.parametrize("name", ZOO)
def test_every_public_function_leaves_the_model_as_found(name):
    model, size = _build(name)
    model.train()
    x, y = _batch(size, torch.float32)
    x, y = x[:2], y[:2]
    before, values = model_state(model), _values(model)
    rng = torch.get_rng_state()
    for what in _call_everything(model, x, y):
        _assert_untouched(model, before, values, f"{name}: {what} changed the model")
        assert torch.equal(torch.get_rng_state(), rng), f"{name}: {what} moved the RNG"
    assert model.training


def test_training_goes_on_after_the_monitor_with_a_module_used_twice():
    model, _ = _build("used_twice")
    model.train()
    x, y = _batch(8, torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    monitor = CoherenceMonitor(x, y, every=1)
    for step in range(2):
        optimizer.zero_grad()
        smse_ref(model(x), y).mean().backward()
        optimizer.step()
        assert monitor(model, step) is not None
    assert model[0].weight is model[2].weight and model[0].weight.requires_grad
    assert hat_matrix(model.eval(), x, y).rank == N  # a second call sees the same parameters


def test_lie_derivative_falls_back_where_forward_mode_is_missing():
    from pdeinf.symmetry.lie import transform

    model, size = _build("grid_sample")
    model = _to_float64(model)
    x, _ = _batch(size, torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        total = lie_derivative(model, x, "x", pde="NS")
    ours = pdeinf_warnings(record)
    assert len(ours) == 1 and "grid_sampler_2d" in str(ours[0].message)
    h = 1e-5

    def moved(t):
        with torch.no_grad():
            return transform(model(transform(x, t, "x", pair=(0, 1), reference=size)), -t, "x",
                             pair=(0, 1), reference=size)

    central = (moved(h) - moved(-h)) / (2 * h)
    assert float((total - central).abs().max() / central.abs().max()) < 1e-6
