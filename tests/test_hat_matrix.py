"""The Gauss-Newton hat matrix against an independent dense float64 computation.

Reference path (no torch.func): per-example gradients by a loop of autograd.grad, the full
output Jacobian by torch.autograd.functional.jacobian, the basis from numpy's SVD of G^T, the
Gauss-Newton matrix J^T J / M formed explicitly and projected on the basis, and a linear solve.
"""
import numpy as np
import pytest
import torch
from torch import nn

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import hat_matrix
from pdeinf.influence.hat import HatEngine, gradient_span, solve_hat

pytestmark = pytest.mark.usefixtures("float64_torch", "one_torch_thread")


def smse_ref(pred, target):
    scale = target.pow(2).mean(dim=(-2, -1)).sqrt() + 1e-6
    return ((pred - target).pow(2).mean(dim=(-2, -1)) / scale).mean(dim=-1)


class TinyNet(nn.Module):
    """Two periodic convolutions with a tanh: [B, 2, 5, 4] -> [B, 2, 5, 4] (H != W on purpose)."""

    def __init__(self, seed=0, hidden=3):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(2, hidden, 3, padding=1, padding_mode="circular")
        self.b = nn.Conv2d(hidden, 2, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 4, generator=g)
    y = x + 0.3 * torch.randn(n, 2, 5, 4, generator=g)
    return x, y


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def functional(model):
    shapes = [(n, p.shape, p.numel()) for n, p in model.named_parameters()]

    def f(theta, x):
        params, i = {}, 0
        for n, s, k in shapes:
            params[n] = theta[i:i + k].reshape(s)
            i += k
        return torch.func.functional_call(model, params, (x,))

    return f


def dense_reference(model, x, y, damping, energy_tol, response=None):
    """Pi by explicit matrices; response(x, y, pred) -> [N] gives other bras."""
    f = functional(model)
    theta = flat_params(model)
    grads, bras = [], []
    for n in range(x.shape[0]):
        t = theta.clone().requires_grad_(True)
        pred = f(t, x[n:n + 1])
        grads.append(torch.autograd.grad(smse_ref(pred, y[n:n + 1]).sum(), t)[0])
        if response is not None:
            t2 = theta.clone().requires_grad_(True)
            pred2 = f(t2, x[n:n + 1])
            bras.append(torch.autograd.grad(response(x[n:n + 1], y[n:n + 1], pred2).sum(), t2)[0])
    G = torch.stack(grads).numpy().T  # [P, N]
    J = torch.autograd.functional.jacobian(lambda t: f(t, x).reshape(-1), theta, vectorize=True).numpy()  # [M, P]
    U, s, _ = np.linalg.svd(G, full_matrices=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    r = int(np.sum(energy < 1 - energy_tol)) + 1
    r = min(r, int(np.sum(s > s[0] * 1e-7)))
    Q = U[:, :r]
    gn = J.T @ J / J.shape[0]
    eta = Q.T @ gn @ Q + damping * np.eye(r)
    ket = Q.T @ G
    bra = ket if response is None else Q.T @ torch.stack(bras).numpy().T
    return bra.T @ np.linalg.solve(eta, ket), G, r, np.linalg.eigvalsh(Q.T @ gn @ Q)[::-1]


def rel(a, b):
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("energy_tol", [0.0, 1e-4, 0.1])
def test_gauss_newton_matches_dense(energy_tol):
    model, (x, y) = TinyNet(), batch()
    res = hat_matrix(model, x, y, damping=1e-6, energy_tol=energy_tol)
    ref, _, r, ref_eigs = dense_reference(model, x, y, 1e-6, energy_tol)
    assert res.rank == r
    if energy_tol == 0.1:
        assert r < x.shape[0]  # the truncation is exercised
    assert rel(res.pi, ref) < 1e-10
    assert np.allclose(res.eta_eigenvalues.numpy(), ref_eigs, rtol=1e-9, atol=1e-14)
    assert torch.allclose(res.losses, smse_ref(model(x), y).detach(), rtol=1e-12)


def test_damping_zero_and_large():
    model, (x, y) = TinyNet(seed=3), batch(seed=4)
    for damping in (0.0, 10.0):
        res = hat_matrix(model, x, y, damping=damping, energy_tol=0.0)
        ref, *_ = dense_reference(model, x, y, damping, 0.0)
        assert rel(res.pi, ref) < 1e-9
    # large damping: eta ~ damping I, so Pi -> G G^T / damping (the Euclidean limit)
    big = hat_matrix(model, x, y, damping=1e8, energy_tol=0.0).pi * 1e8
    eu = hat_matrix(model, x, y, metric="euclidean").pi
    assert rel(big, eu.numpy()) < 1e-5


def test_euclidean_is_gram_of_gradients():
    model, (x, y) = TinyNet(), batch()
    _, G, *_ = dense_reference(model, x, y, 1e-6, 0.0)
    res = hat_matrix(model, x, y, metric="euclidean")
    assert rel(res.pi, G.T @ G) < 1e-12


def test_symmetric_positive_semidefinite_and_permutation():
    model, (x, y) = TinyNet(seed=5), batch(n=8, seed=6)
    pi = hat_matrix(model, x, y).pi
    assert torch.equal(pi, pi.T)
    ev = torch.linalg.eigvalsh(pi)
    assert ev.min() > -1e-12 * ev.max()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    pi_p = hat_matrix(model, x[perm], y[perm]).pi
    assert torch.allclose(pi_p, pi[perm][:, perm], rtol=1e-10, atol=1e-14 * pi.abs().max())


def test_duplicates_and_zero_gradients():
    model, (x, y) = TinyNet(seed=7), batch(n=5, seed=8)
    # example 5 duplicates example 1; example 6 has target = prediction (zero gradient)
    x2 = torch.cat([x, x[1:2], x[2:3] * 0.5])
    y2 = torch.cat([y, y[1:2], model(x[2:3] * 0.5).detach()])
    res = hat_matrix(model, x2, y2, energy_tol=0.0)
    assert res.rank == 5  # 7 examples, one duplicate and one zero gradient
    ref, *_ = dense_reference(model, x2, y2, 1e-6, 0.0)
    assert rel(res.pi, ref) < 1e-10
    assert torch.allclose(res.pi[5], res.pi[1], rtol=1e-10, atol=1e-14)
    assert res.pi[6].abs().max() < 1e-12 * res.pi.abs().max()


def test_all_zero_gradients_give_zero_matrix():
    model, (x, _) = TinyNet(), batch(n=3)
    res = hat_matrix(model, x, model(x).detach())
    assert res.rank == 0 and res.pi.shape == (3, 3) and torch.count_nonzero(res.pi) == 0


def test_singular_metric_with_zero_damping_is_refused():
    eta = torch.diag(torch.tensor([2.0, 1.0, 0.0]))
    ket = torch.randn(3, 4)
    with pytest.raises(NumericalError, match="singular"):
        solve_hat(eta, 0.0, ket)
    pi, _ = solve_hat(eta, 1e-3, ket)
    assert torch.allclose(pi, ket.T @ torch.linalg.solve(eta + 1e-3 * torch.eye(3), ket))
    with pytest.raises(InputError, match="damping"):
        solve_hat(eta, -1.0, ket)


def test_chunking_and_tangent_loop_do_not_change_result():
    model, (x, y) = TinyNet(seed=9), batch(n=7, seed=10)
    ref = hat_matrix(model, x, y, energy_tol=0.0).pi
    for kw in ({"grad_chunk": 1, "jvp_chunk": 1}, {"grad_chunk": None, "jvp_chunk": 100},
               {"jvp_chunk": 3, "vmap_tangents": False}):
        pi = hat_matrix(model, x, y, energy_tol=0.0, **kw).pi
        assert torch.allclose(pi, ref, rtol=1e-11, atol=1e-14 * ref.abs().max()), kw


def test_float32_model_agrees_with_float64():
    model, (x, y) = TinyNet(seed=11), batch(seed=12)
    ref = hat_matrix(model, x, y, damping=1e-3, energy_tol=1e-4).pi
    pi32 = hat_matrix(TinyNet(seed=11).float(), x.float(), y.float(), damping=1e-3, energy_tol=1e-4).pi
    assert rel(pi32, ref.numpy()) < 1e-3


def test_gradient_span_is_orthonormal_basis():
    g = torch.randn(5, 40)
    g[4] = g[0] + g[1]
    span = gradient_span(g, 0.0)
    assert span.rank == 4
    q = span.basis_rows(slice(0, span.rank))
    assert torch.allclose(q @ q.T, torch.eye(4), atol=1e-12)
    assert torch.allclose(q.T @ span.coordinates(), g.T, atol=1e-12)  # G^T = Q Gp


def test_bad_input_is_refused():
    model, (x, y) = TinyNet(), batch()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    cases = [
        ({"inputs": bad, "targets": y}, "inputs"),
        ({"inputs": x, "targets": y[:, :1]}, "targets"),
        ({"inputs": x[0], "targets": y[0]}, "inputs"),
        ({"inputs": x, "targets": y, "metric": "fisher"}, "metric"),
        ({"inputs": x, "targets": y, "grad_chunk": 0}, "grad_chunk"),
        ({"inputs": x, "targets": y, "jvp_chunk": -2}, "jvp_chunk"),
        ({"inputs": x, "targets": y, "energy_tol": 1.0}, "energy_tol"),
        ({"inputs": x, "targets": y, "metric": "adam"}, "optimizer_state"),
        ({"inputs": x, "targets": y, "response": "vorticity"}, "response"),
    ]
    for kw, name in cases:
        with pytest.raises(InputError, match=name):
            hat_matrix(model, **kw)


def test_train_mode_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    x, y = batch()
    with pytest.raises(InputError, match="BatchNorm"):
        HatEngine(model, x, y)
    model.eval()
    assert hat_matrix(model, x, y).pi.shape == (6, 6)


def test_labelled_output_follows_batch_order():
    model, (x, y) = TinyNet(seed=13), batch(n=6, seed=14)  # 3 classes x 2 times (t_max = 3)
    res = hat_matrix(model, x, y)
    da = res.to_xarray(t_max=3, classes=["A", "B", "C"], attrs={"model": "tiny"})
    assert da.dims == ("t_resp", "c_resp", "t_pert", "c_pert")
    for n in range(6):
        for m in range(6):
            c_n, t_n, c_m, t_m = n // 2, n % 2, m // 2, m % 2
            v = da.sel(t_resp=t_n, c_resp="ABC"[c_n], t_pert=t_m, c_pert="ABC"[c_m]).item()
            assert v == res.pi[n, m].item()
    assert da.attrs["model"] == "tiny" and da.attrs["rank"] == res.rank
    with pytest.raises(InputError, match="t_max"):
        res.to_xarray(t_max=5)


@pytest.mark.parametrize("name", ["unet", "vit"])
def test_real_surrogates_match_reverse_mode_reference(name):
    """UNet (circular convs, norms) and ViT (attention under forward-mode AD), smoke size.

    Reference without torch.func: loop gradients, J q by torch.autograd.functional.jvp (the
    double-backward trick, reverse mode only), numpy SVD and solve.
    """
    from pdeinf.models import build

    torch.manual_seed(0)
    model = build(name, channels=4, resolution=16, size="smoke").double().eval()
    g = torch.Generator().manual_seed(2)
    x = 1.0 + 0.3 * torch.rand(4, 4, 16, 16, generator=g)
    y = x + 0.05 * torch.randn(4, 4, 16, 16, generator=g)
    res = hat_matrix(model, x, y, damping=1e-6, energy_tol=0.0)
    params = list(model.parameters())
    rows = []
    for n in range(4):
        gs = torch.autograd.grad(smse_ref(model(x[n:n + 1]), y[n:n + 1]).sum(), params)
        rows.append(torch.cat([t.reshape(-1) for t in gs]))
    G = torch.stack(rows).numpy().T
    U, s, _ = np.linalg.svd(G, full_matrices=False)
    Q = U[:, s > 1e-7 * s[0]]
    f = functional(model)
    theta = flat_params(model)
    JQ = np.stack([
        torch.autograd.functional.jvp(lambda t: f(t, x).reshape(-1), theta, torch.from_numpy(q))[1].numpy()
        for q in Q.T
    ], axis=1)
    eta = JQ.T @ JQ / JQ.shape[0] + 1e-6 * np.eye(Q.shape[1])
    ref = (Q.T @ G).T @ np.linalg.solve(eta, Q.T @ G)
    assert res.rank == Q.shape[1]
    assert rel(res.pi, ref) < 1e-9


def test_estimator_keyword_dispatches_and_refuses():
    import sys

    model, (x, y) = TinyNet(seed=15), batch(n=4, seed=16)
    with pytest.raises(InputError, match="estimator"):
        hat_matrix(model, x, y, estimator="kfac")
    with pytest.raises(InputError, match="rtol"):
        hat_matrix(model, x, y, rtol=1e-3)  # the subspace estimator has no tolerance
    res = hat_matrix(model, x, y)
    assert res.attrs["estimator"] == "subspace" and res.damping == 1e-6
    try:
        import pdeinf.influence.fullspace  # noqa: F401
    except ImportError:
        pytest.skip("pdeinf.influence.fullspace is not installed")
    full = hat_matrix(model, x, y, estimator="full-space", damping=1e-3, rtol=1e-8)
    assert full.pi.shape == (4, 4) and full.damping == 1e-3
    with pytest.raises(InputError, match="metric"):
        hat_matrix(model, x, y, estimator="full-space", metric="euclidean")
    saved = sys.modules.get("pdeinf.influence.fullspace")
    sys.modules["pdeinf.influence.fullspace"] = None  # as if the module were missing
    try:
        with pytest.raises(InputError, match="full-space"):
            hat_matrix(model, x, y, estimator="full-space")
    finally:
        sys.modules["pdeinf.influence.fullspace"] = saved
