"""Errors in the user's terms, before any work, and one dtype policy for every public function."""
import numpy as np
import pytest
import torch
from torch import nn

from pdeinf.errors import InputError
from pdeinf.influence import gradients as grad_mod
from pdeinf.influence import hat_matrix
from pdeinf.symmetry import equivariance_error, lie_derivative

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(channels=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, channels, 3, padding=1)).eval()


def _batch(n=4, c=2, h=8, w=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    return x, x + 0.1 * torch.randn(n, c, h, w, generator=g).to(dtype)


class Refuses(nn.Module):
    """Fails the test if the estimator reaches a second forward after its first check."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("estimator", ["subspace", "full-space"])
def test_channel_mismatch_names_the_first_layer_before_any_work(estimator):
    model = Refuses(_conv(3))
    x, y = _batch(c=4)
    with pytest.raises(InputError, match=r"4 channels, but the model's first layer 'inner.0' \(Conv2d\) takes 3"):
        hat_matrix(model, x, y, estimator=estimator)
    assert model.calls == 1


@pytest.mark.parametrize("estimator", ["subspace", "full-space"])
def test_channels_last_batch_is_named_even_for_a_channel_agnostic_model(estimator):
    agnostic = nn.Sequential(nn.Tanh()).eval()
    agnostic.scale = nn.Parameter(torch.ones(()))
    x, y = _batch(c=2, h=16, w=16)
    with pytest.raises(InputError, match="channels-last"):
        hat_matrix(agnostic, x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1), estimator=estimator)


def test_complex_parameters_of_another_precision_are_named():
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.randn(2, 8, 5, dtype=torch.complex64))
            self.mix = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.mix(torch.fft.irfft2(torch.fft.rfft2(x) * self.gain, s=x.shape[-2:]))

    model = Spectral().double().eval()  # .double() leaves the complex64 gain
    x, y = _batch(dtype=torch.float64)
    with pytest.raises(InputError, match=r"gain \(complex64\)"):
        hat_matrix(model, x, y)


def test_sizes_are_checked_up_front_with_the_estimate(monkeypatch):
    monkeypatch.setattr(grad_mod, "available_memory", lambda device=None: 10 * 2**20)
    model = Refuses(_conv())
    x, y = _batch(n=700)
    with pytest.raises(InputError, match=r"N x N matrices .* needs 0\.01 GiB"):
        hat_matrix(model, x, y)
    assert model.calls == 0


def test_every_public_function_casts_inputs_to_the_model_dtype():
    model = _conv().double()
    x32, y32 = _batch()
    x64, y64 = x32.double(), y32.double()
    assert torch.equal(hat_matrix(model, x32, y32).pi, hat_matrix(model, x64, y64).pi)
    assert torch.equal(equivariance_error(model, x32, y32, "r", pde="NS"),
                       equivariance_error(model, x64, y64, "r", pde="NS"))
    assert torch.equal(lie_derivative(model, x32, "x", pde="NS"), lie_derivative(model, x64, "x", pde="NS"))


def test_options_of_the_other_estimator_are_refused():
    model, (x, y) = _conv(), _batch()
    for option in ({"maxiter": 10}, {"reference_rtol": 1e-8}, {"rtol": 1e-3}):
        with pytest.raises(InputError, match="only used by estimator='full-space'"):
            hat_matrix(model, x, y, **option)
    with pytest.raises(InputError, match="reference_rtol"):
        hat_matrix(model, x, y, estimator="full-space", rtol=1e-3, reference_rtol=1e-2)


def test_maxiter_reaches_the_full_space_solve_and_converged_means_rtol_met():
    model, (x, y) = _conv().double(), _batch(dtype=torch.float64)
    with pytest.warns(UserWarning, match="did not reach rtol"):
        short = hat_matrix(model, x, y, estimator="full-space", rtol=1e-10, maxiter=1)
    assert int(short.iterations.max()) <= 1
    assert torch.equal(short.converged, short.residual_norms <= 1e-10)
    tight = hat_matrix(model, x, y, estimator="full-space", rtol=1e-3, reference_rtol=1e-10, maxiter=1000)
    exact = hat_matrix(model, x, y, estimator="full-space", rtol=1e-11, maxiter=1000)
    distance = float((tight.pi - exact.pi).abs().max() / exact.pi.abs().max())
    assert tight.attrs["distance_to_reference"] == pytest.approx(distance, rel=1e-3, abs=1e-9)
    assert bool(((tight.pi - exact.pi).abs() <= tight.error_bound + 1e-12).all())


def test_to_xarray_takes_any_batch_size():
    model, (x, y) = _conv(), _batch(n=6)
    res = hat_matrix(model, x, y)
    one = res.to_xarray()
    assert one.sizes == {"t_resp": 6, "c_resp": 1, "t_pert": 6, "c_pert": 1}
    two = res.to_xarray(classes=["a", "b"])
    np.testing.assert_array_equal(two.sel(c_resp="b", c_pert="a").values, res.pi.numpy()[3:, :3])
    with pytest.raises(InputError, match="multiple of 4 classes"):
        res.to_xarray(classes=list("abcd"))


def test_a_krylov_basis_too_large_is_refused_up_front(monkeypatch):
    from pdeinf.influence.fullspace import full_space_hat_matrix

    monkeypatch.setattr(grad_mod, "available_memory", lambda device=None: 2**20)
    model, (x, y) = _conv(), _batch()
    with pytest.raises(InputError, match=r"max_basis: the block Krylov basis .* needs"):
        full_space_hat_matrix(model, x, y, max_basis=10**6)


def test_the_energy_cut_is_reported_and_off_by_default():
    from test_foreign_models import loop_grads

    model, (x, y) = _conv().double(), _batch(n=6, dtype=torch.float64)
    s = np.linalg.svd(loop_grads(model, x, y).numpy(), compute_uv=False)
    assert hat_matrix(model, x, y).attrs["cut_directions"] == 0
    cut = hat_matrix(model, x, y, energy_tol=0.2)
    energy = np.cumsum(s**2) / np.sum(s**2)
    rank = int(np.sum(energy < 0.8)) + 1
    assert cut.rank == rank < 6 and cut.attrs["cut_directions"] == 6 - rank
    assert cut.attrs["cut_energy"] == pytest.approx(1 - energy[rank - 1], rel=1e-9)
