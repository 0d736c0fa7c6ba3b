"""Surrogate models: shapes, periodicity (circular padding), sizes, and torch.func compatibility
(per-example gradients with vmap(grad), forward-mode JVPs) checked in float64 against autograd
loops and finite differences."""
import pytest
import torch
from torch.func import functional_call, grad, jvp, vmap

from pdeinf.errors import InputError
from pdeinf.models import build, count_parameters
from pdeinf.models.unet import effective_depth
from pdeinf.training.loss import smse

MODELS = [("unet", 16), ("vit", 16)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(name, res=16, channels=3, seed=0):
    torch.manual_seed(seed)
    model = build(name, channels=channels, resolution=res, size="smoke").double()
    # Non-trivial weights everywhere (fresh norms have weight 1 / bias 0; perturb them too).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name,res", MODELS)
def test_shape_and_dtype_preserved(name, res):
    model = _model(name, res)
    x = torch.randn(2, 3, res, res, dtype=torch.float64)
    y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert torch.isfinite(y).all()


def test_unet_commutes_with_circular_shifts():
    # Circular padding + stride-2 convs + nearest upsampling: exact equivariance under shifts
    # by multiples of 2**depth. Zero padding anywhere would break this at the borders.
    model = _model("unet", 16)
    step = 2 ** model.depth
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    shifted = model(torch.roll(x, shifts=(step, 2 * step), dims=(-2, -1)))
    torch.testing.assert_close(shifted, torch.roll(model(x), shifts=(step, 2 * step), dims=(-2, -1)),
                               rtol=1e-10, atol=1e-10)


def test_vit_without_position_embedding_commutes_with_patch_shifts():
    # Circularly padded patch embedding + permutation-equivariant attention + local un-patching:
    # with the position embedding zeroed the ViT commutes with shifts by the patch size.
    model = _model("vit", 16)
    with torch.no_grad():
        model.pos.zero_()
    p = model.patch
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = model(torch.roll(x, shifts=(p, -p), dims=(-2, -1)))
    torch.testing.assert_close(out, torch.roll(model(x), shifts=(p, -p), dims=(-2, -1)),
                               rtol=1e-10, atol=1e-10)


def test_paper_parameter_counts():
    unet = count_parameters(build("unet", channels=4, resolution=128, size="paper"))
    vit = count_parameters(build("vit", channels=4, resolution=128, size="paper"))
    assert 12.5e6 < unet < 13.5e6, unet
    assert 4.5e6 < vit < 5.5e6, vit


@pytest.mark.parametrize("name", ["unet", "vit"])
def test_quick_size_is_small(name):
    n = count_parameters(build(name, channels=4, resolution=32, size="quick"))
    assert 1e5 <= n <= 3e5, n


def test_unet_depth_reduced_on_tiny_grids():
    assert effective_depth(128, 4) == 4
    assert effective_depth(16, 4) == 2  # bottleneck 4x4, not 1x1
    assert effective_depth(8, 4) == 1
    model = build("unet", channels=2, resolution=16, size="paper")  # 4 levels asked, 2 fit
    assert model.depth == 2
    x = torch.randn(1, 2, 16, 16)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "resnet", "channels": 4, "resolution": 16, "size": "smoke"}, "model"),
    ({"name": "unet", "channels": 4, "resolution": 16, "size": "huge"}, "size"),
    ({"name": "unet", "channels": 0, "resolution": 16, "size": "smoke"}, "channels"),
    ({"name": "vit", "channels": 4, "resolution": 18, "size": "smoke"}, "resolution"),
    ({"name": "vit", "channels": 4, "resolution": -16, "size": "smoke"}, "resolution"),
])
def test_bad_arguments_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        build(**kwargs)


@pytest.mark.parametrize("name,res", MODELS)
def test_per_example_gradients_vmap_equal_autograd_loop(name, res):
    model = _model(name, res)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 3, res, res, dtype=torch.float64)
    y = x + 0.1 * torch.randn_like(x)

    def loss(p, xi, yi):
        return smse(functional_call(model, p, (xi[None],)), yi[None])[0]

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        smse(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_example[k][i], p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,res", MODELS)
def test_forward_mode_jvp_matches_finite_differences_and_reverse_mode(name, res):
    model = _model(name, res)
    params = {k: v.detach() for k, v in model.named_parameters()}
    torch.manual_seed(1)
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(2, 3, res, res, dtype=torch.float64)

    def f(p):
        return functional_call(model, p, (x,))

    _, jv = jvp(f, (params,), (tangent,))
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    fd = (plus - minus) / (2 * eps)
    # Norm-wise: central differences carry O(eps^2) truncation and O(1e-16/eps) rounding.
    assert (jv - fd).norm() / jv.norm() < 1e-7
    # Reverse mode: <w, J v> = <J^T w, v> for a random cotangent w.
    w = torch.randn_like(jv)
    vjp = torch.autograd.grad((model(x) * w).sum(), list(model.parameters()))
    lhs = (w * jv).sum()
    rhs = sum((g * tangent[k]).sum() for g, (k, _) in zip(vjp, model.named_parameters()))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
