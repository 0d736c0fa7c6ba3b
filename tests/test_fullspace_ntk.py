"""Top NTK eigenvalue (seed paper fig. 8) against a dense float64 Jacobian."""
import torch

from pdeinf.influence.ntk import ntk_top_eigenvalue


def test_top_eigenvalue_matches_dense_jacobian(float64_torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), torch.nn.Tanh(),
        torch.nn.Conv2d(3, 2, 1)).double().eval()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    params = dict(model.named_parameters())
    names = list(params)

    def outputs(*flat):
        return torch.func.functional_call(model, dict(zip(names, flat)), (x,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(outputs, tuple(params.values()))
    J = torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)  # [M, P]
    damping = 1e-4
    dense = torch.linalg.eigvalsh(J @ J.T).max().item() + damping
    got = ntk_top_eigenvalue(model, x, damping=damping, tol=1e-10)
    assert abs(got["eigenvalue"] - dense) <= 1e-8 * dense
    assert got["matvecs"] > 0
