"""Surrogate models: shapes, periodicity (circular padding), sizes, the authors' parameter counts
(derived by hand from lanl/PDEHats), direct vs residual prediction, the authors' un-patching
layout, and torch.func compatibility (per-example gradients with vmap(grad), forward-mode JVPs)
checked in float64 against autograd loops and finite differences."""
import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, jvp, vmap

from pdeinf.errors import InputError
from pdeinf.models import AuthorsUNet, AuthorsViT, build, count_parameters
from pdeinf.models.authors_unet import level_kernel
from pdeinf.models.unet import effective_depth
from pdeinf.training.loss import smse

# (name, variant, resolution)
MODELS = [("unet", "authors", 16), ("vit", "authors", 16),
          ("unet", "pdeinf", 16), ("vit", "pdeinf", 16)]
IDS = [f"{n}-{v}" for n, v, _ in MODELS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _perturb(model):
    # Non-trivial weights everywhere (fresh norms have weight 1 / bias 0; perturb them too).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _model(name, variant, res=16, channels=3, seed=0, **kw):
    torch.manual_seed(seed)
    model = build(name, channels=channels, resolution=res, size="smoke", variant=variant, **kw)
    return _perturb(model.double())


@pytest.mark.parametrize("name,variant,res", MODELS, ids=IDS)
def test_shape_and_dtype_preserved(name, variant, res):
    model = _model(name, variant, res)
    x = torch.randn(2, 3, res, res, dtype=torch.float64)
    y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cls,kw,hw", [
    (AuthorsUNet, {"base": 2, "levels": 2}, (16, 32)),
    (AuthorsViT, {"width": 16, "depth": 1, "heads": 2}, (8, 20)),
])
def test_authors_models_accept_rectangular_grids(cls, kw, hw):
    torch.manual_seed(0)
    model = cls(3, hw, **kw).double()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("hw", [(16, 16), (16, 32)])
def test_authors_unet_commutes_with_circular_shifts(hw):
    # Circular padding everywhere, stride-2 convs and pooling, PixelShuffle: exact equivariance
    # under shifts by multiples of the total stride 2**depth (not for other shifts).
    torch.manual_seed(0)
    model = _perturb(AuthorsUNet(3, hw, base=2, levels=2).double())
    step = 2 ** model.depth
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    shifts, dims = (step, 3 * step), (-2, -1)
    torch.testing.assert_close(model(torch.roll(x, shifts, dims)), torch.roll(model(x), shifts, dims),
                               rtol=1e-10, atol=1e-10)
    one = model(torch.roll(x, (1, 0), dims)) - torch.roll(model(x), (1, 0), dims)
    assert one.abs().max() > 1e-6  # a shift by one pixel is not a symmetry


def test_pdeinf_v1_unet_commutes_with_circular_shifts():
    model = _model("unet", "pdeinf", 16)
    step = 2 ** model.depth
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    shifted = model(torch.roll(x, shifts=(step, 2 * step), dims=(-2, -1)))
    torch.testing.assert_close(shifted, torch.roll(model(x), shifts=(step, 2 * step), dims=(-2, -1)),
                               rtol=1e-10, atol=1e-10)


def test_authors_vit_strip_unpatching_commutes_with_row_band_shifts_only():
    # Their un-patching writes a token's 16 values into a 1x16 strip of the token's own band of
    # 4 rows: without the position embedding, shifting the input by 4 rows shifts the output by
    # 4 rows; shifting by 4 columns moves tokens along the band and scrambles the strips.
    model = _model("vit", "authors", 16)
    with torch.no_grad():
        model.pos.zero_()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    rows = model(torch.roll(x, 4, dims=-2))
    torch.testing.assert_close(rows, torch.roll(model(x), 4, dims=-2), rtol=1e-10, atol=1e-10)
    cols = model(torch.roll(x, 4, dims=-1)) - torch.roll(model(x), 4, dims=-1)
    assert cols.abs().max() > 1e-3


def test_authors_vit_patch_unpatching_commutes_with_patch_shifts():
    # With the conventional 4x4 un-patching (the ablation switch) both axes commute.
    torch.manual_seed(0)
    model = _perturb(AuthorsViT(3, (16, 12), width=16, depth=2, heads=4, unpatch="patch").double())
    with torch.no_grad():
        model.pos.zero_()
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    out = model(torch.roll(x, shifts=(4, -8), dims=(-2, -1)))
    torch.testing.assert_close(out, torch.roll(model(x), shifts=(4, -8), dims=(-2, -1)),
                               rtol=1e-10, atol=1e-10)


def test_authors_vit_unpatching_matches_their_julia_reshapes():
    # Emulate ReshapeLayer((k*k, F, l*l)) -> permutedims(1,3,2,4) -> ReshapeLayer((L, L, F)) on a
    # column-major array (Julia dims (x, y, field, batch) = our [B, C, H, W] memory order).
    model = _model("vit", "authors", 16, channels=2)
    captured = {}
    model.dense.register_forward_hook(lambda m, i, o: captured.setdefault("dense", o.detach()))
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    out = model(x).detach().numpy()
    dense = captured["dense"].numpy()  # [B, L, 16 F] == Julia (16 F, L, B)
    b, n_tok, _ = dense.shape
    julia = np.reshape(dense.transpose(2, 1, 0), (16, 2, n_tok, b), order="F")
    julia = np.reshape(julia.transpose(0, 2, 1, 3), (16, 16, 2, b), order="F")  # (x, y, F, B)
    np.testing.assert_allclose(out, julia.transpose(3, 2, 1, 0), rtol=0, atol=0)


def test_authors_parameter_counts_match_their_code():
    # Their counts, derived layer by layer from lanl/PDEHats (arithmetic in the docstrings of
    # pdeinf/models/authors_unet.py and authors_vit.py): UNet(24; F=4) and ViT(256; F=4, L=128).
    theirs = {("unet", 4): 13_875_081, ("vit", 4): 4_504_913,
              ("unet", 2): 13_869_175, ("vit", 2): 4_483_889}
    for (name, channels), count in theirs.items():
        ours = count_parameters(build(name, channels=channels, resolution=128, size="paper"))
        assert abs(ours - count) <= 0.05 * count, (name, channels, ours, count)
        assert ours == count  # the construction is layer-for-layer theirs
    # The paper's text says six ViT layers: 3,454,797 parameters with depth=6.
    six = build("vit", channels=4, resolution=128, size="paper", depth=6)
    assert count_parameters(six) == 3_454_797


def test_authors_kernel_schedule_follows_grid_size():
    assert [level_kernel(n) for n in (128, 64, 32, 16, 8, 4)] == [9, 7, 5, 3, 3, 3]
    torch.manual_seed(0)
    model = AuthorsUNet(4, 128)
    assert model.proj_in.kernel_size == (11, 11) and model.depth == 4
    assert [d.kernel for d in model.downs] == [9, 7, 5, 3]
    assert [u.conv_in.kernel_size[0] for u in model.ups] == [3, 5, 7, 9]


def test_pdeinf_v1_paper_parameter_counts():
    unet = count_parameters(build("unet", channels=4, resolution=128, size="paper", variant="pdeinf"))
    vit = count_parameters(build("vit", channels=4, resolution=128, size="paper", variant="pdeinf"))
    assert 12.5e6 < unet < 13.5e6, unet
    assert 4.5e6 < vit < 5.5e6, vit


@pytest.mark.parametrize("name", ["unet", "vit"])
@pytest.mark.parametrize("variant", ["authors", "pdeinf"])
def test_quick_size_is_small(name, variant):
    n = count_parameters(build(name, channels=4, resolution=32, size="quick", variant=variant))
    assert 1e5 <= n <= 3e5, n


@pytest.mark.parametrize("name,variant,res", MODELS, ids=IDS)
def test_residual_adds_the_input_to_the_direct_prediction(name, variant, res):
    direct = _model(name, variant, res, residual=False)
    residual = _model(name, variant, res, residual=True)
    for a, b in zip(direct.parameters(), residual.parameters()):
        assert torch.equal(a, b)  # same seed, same weights
    x = torch.randn(2, 3, res, res, dtype=torch.float64)
    torch.testing.assert_close(residual(x), x + direct(x), rtol=0, atol=1e-12)


def test_build_is_deterministic_given_the_seed():
    a, b = _model("unet", "authors"), _model("unet", "authors")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unet_depth_reduced_on_tiny_grids():
    assert effective_depth(128, 4) == 4
    assert effective_depth(16, 4) == 2  # bottleneck 4x4, not 1x1
    assert effective_depth(8, 4) == 1
    for variant in ("authors", "pdeinf"):
        model = build("unet", channels=2, resolution=16, size="paper", variant=variant)
        assert model.depth == 2
        x = torch.randn(1, 2, 16, 16)
        assert model(x).shape == x.shape


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "resnet", "channels": 4, "resolution": 16, "size": "smoke"}, "model"),
    ({"name": "unet", "channels": 4, "resolution": 16, "size": "huge"}, "size"),
    ({"name": "unet", "channels": 4, "resolution": 16, "size": "smoke", "variant": "v0"}, "variant"),
    ({"name": "unet", "channels": 0, "resolution": 16, "size": "smoke"}, "channels"),
    ({"name": "vit", "channels": 4, "resolution": 18, "size": "smoke"}, "resolution"),
    ({"name": "vit", "channels": 4, "resolution": -16, "size": "smoke"}, "resolution"),
    ({"name": "vit", "channels": 4, "resolution": 16, "size": "smoke", "residual": "yes"}, "residual"),
    ({"name": "vit", "channels": 4, "resolution": 16, "size": "smoke", "layers": 3}, "options"),
    ({"name": "vit", "channels": 4, "resolution": 16, "size": "smoke", "unpatch": "x"}, "options"),
])
def test_bad_arguments_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        build(**kwargs)


@pytest.mark.parametrize("name,variant,res", MODELS, ids=IDS)
def test_per_example_gradients_vmap_equal_autograd_loop(name, variant, res):
    model = _model(name, variant, res)
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


@pytest.mark.parametrize("name,variant,res", MODELS, ids=IDS)
def test_forward_mode_jvp_matches_finite_differences_and_reverse_mode(name, variant, res):
    model = _model(name, variant, res)
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
