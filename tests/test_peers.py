"""Cross-checks against peer libraries (the [peers] extra), float64, tiny model.

- captum TracInCP (per-example loop path) gives the Euclidean matrix G G^T;
- nngeometry's FIM(variant="regression", PMatDense), (1/N) sum_i J_i^T J_i from module hooks
  (no torch.func), projected on our basis Q, divided by the outputs per example and damped,
  gives the restricted Gauss-Newton metric and hence Pi;
- pyDVL's CG and direct influence (reverse-over-reverse Hessian-vector products, no JVPs) on
  the subspace model theta_0 + Q alpha, with the Hessian fitted on zero-residual targets, give
  Pi too (pdeinf.influence.peers explains why the two quantities coincide).
Zero padding (not circular) because the hook-based per-example Jacobians of nngeometry assume it.
"""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pdeinf.influence import hat_matrix
from pdeinf.influence.hat import HatEngine
from pdeinf.training.loss import smse

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("float64_torch", "one_torch_thread")]


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def data(n=6):
    g = torch.Generator().manual_seed(1)
    x = 1.0 + torch.rand(n, 2, 6, 6, generator=g, dtype=torch.float64)
    return x, x + 0.1 * torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64)


def test_captum_tracin_equals_euclidean(tmp_path):
    captum_influence = pytest.importorskip("captum.influence")
    model, (x, y) = Small().double(), data()
    ckpt = tmp_path / "c.pt"
    torch.save(model.state_dict(), ckpt)

    def loss_fn(out, target):
        return smse(out, target)
    loss_fn.reduction = "none"

    def load(m, path):
        m.load_state_dict(torch.load(path))
        return 1.0  # learning rate factor

    tracin = captum_influence.TracInCP(model, TensorDataset(x, y), checkpoints=[str(ckpt)],
                                       checkpoints_load_func=load, loss_fn=loss_fn, batch_size=6,
                                       sample_wise_grads_per_batch=False)
    scores = tracin.influence((x, y), show_progress=False)
    eu = hat_matrix(model, x, y, metric="euclidean").pi
    assert float((scores - eu).norm() / eu.norm()) < 1e-12


def test_nngeometry_regression_fisher_gives_gauss_newton_pi():
    metrics = pytest.importorskip("nngeometry.metrics")
    obj = pytest.importorskip("nngeometry.object")
    model, (x, y) = Small().double(), data()
    damping = 1e-4
    res = hat_matrix(model, x, y, damping=damping, energy_tol=0.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    fim = metrics.FIM(model, loader, obj.PMatDense, variant="regression",
                      function=lambda *d: model(d[0]).reshape(d[0].shape[0], -1))
    F = fim.get_dense_tensor().double() if hasattr(fim, "get_dense_tensor") else fim.to_torch().double()
    # our basis, in nngeometry's parameter order (module order = model.parameters() here)
    engine = HatEngine(model, x, y, energy_tol=0.0)
    span = engine.span
    Q = span.basis_rows(slice(0, span.rank)).T  # [P, r]
    d = x[0].numel()
    eta = Q.T @ F @ Q / d + damping * torch.eye(span.rank)
    gp = span.coordinates()
    ref = gp.T @ torch.linalg.solve(eta, gp)
    assert float((res.pi - ref).norm() / ref.norm()) < 1e-10
    np.testing.assert_allclose(np.sort(res.eta_eigenvalues.numpy()),
                               np.sort(torch.linalg.eigvalsh(eta - damping * torch.eye(span.rank)).numpy()),
                               rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("method", ["cg", "cg-block", "direct"])
def test_pydvl_influence_on_subspace_model_gives_gauss_newton_pi(method):
    pytest.importorskip("pydvl.influence.torch")
    from pdeinf.influence.peers import pydvl_hat_matrix

    model, (x, y) = Small().double(), data()
    damping = 1e-3
    res = hat_matrix(model, x, y, damping=damping, energy_tol=0.0)
    span = HatEngine(model, x, y, energy_tol=0.0).span
    # two fit batches of 3: pyDVL averages the batch Hessians, equal sizes keep the mean over M
    theirs = pydvl_hat_matrix(model, x, y, span, damping=damping, method=method, fit_batch=3,
                              rtol=1e-13)
    assert float((theirs - res.pi).norm() / res.pi.norm()) < 1e-9
    # the check can fail: a different damping changes Pi by far more than the tolerance
    other = pydvl_hat_matrix(model, x, y, span, damping=10 * damping, method="direct", fit_batch=3)
    assert float((other - res.pi).norm() / res.pi.norm()) > 1e-3
