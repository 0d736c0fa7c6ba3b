"""Adam-preconditioned and response-observable variants, normalisations, spectrum."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from pdeinf.errors import InputError
from pdeinf.influence import (
    NORMALIZATIONS,
    VARIANTS,
    energy_drift,
    hat_matrix,
    mass_drift,
    normalize,
)
from pdeinf.influence.gradients import trainable_parameters
from pdeinf.influence.hat import HatEngine, adam_preconditioner
from pdeinf.influence.spectrum import condition_number, effective_rank, participation_ratio

pytestmark = pytest.mark.usefixtures("float64_torch", "one_torch_thread")


class CENet(nn.Module):
    """[B, 4, 4, 4] -> [B, 4, 4, 4]: a tiny periodic conv net on CE-like states."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(4, 3, 3, padding=1, padding_mode="circular")
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return x + 0.1 * self.b(torch.tanh(self.a(x)))


def ce_batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 1.0 + 0.2 * torch.rand(n, 4, 4, 4, generator=g)  # positive density and energy
    y = x + 0.05 * torch.randn(n, 4, 4, 4, generator=g)
    return x, y


def smse_ref(pred, target):
    scale = target.pow(2).mean(dim=(-2, -1)).sqrt() + 1e-6
    return ((pred - target).pow(2).mean(dim=(-2, -1)) / scale).mean(dim=-1)


def loop_grads(model, x, y, fn):
    rows = []
    for n in range(x.shape[0]):
        model.zero_grad()
        fn(x[n:n + 1], y[n:n + 1], model(x[n:n + 1])).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(rows)


def trained_adamw(model, x, y, steps=3, amsgrad=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, amsgrad=amsgrad)
    for _ in range(steps):
        opt.zero_grad()
        smse_ref(model(x), y).mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_direction_matches_adamw_step(amsgrad):
    model, (x, y) = CENet(), ce_batch()
    opt = trained_adamw(model, x, y, amsgrad=amsgrad)
    _, layout = trainable_parameters(model)
    d = adam_preconditioner(opt.state_dict(), layout)
    g = torch.randn(layout.size, generator=torch.Generator().manual_seed(3))

    def change(grad_flat):
        m = copy.deepcopy(model)
        o = torch.optim.AdamW(m.parameters())
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        before = torch.cat([p.detach().reshape(-1) for p in m.parameters()]).clone()
        i = 0
        for p in m.parameters():
            p.grad = grad_flat[i:i + p.numel()].reshape(p.shape).clone()
            i += p.numel()
        o.step()
        return torch.cat([p.detach().reshape(-1) for p in m.parameters()]) - before

    # The g^2 term of the second moment is second order, but v is tiny (~1e-9) after a few
    # steps, so the finite-difference step must be small: its relative error is ~ eps * 5e2.
    eps, lr = 1e-9, opt.param_groups[0]["lr"]
    linear = (change(eps * g) - change(0 * g)) / eps  # the part of the step linear in g
    assert torch.allclose(linear, -lr * d * g, rtol=2e-5, atol=1e-6 * (lr * d * g).abs().max())
    assert not torch.allclose(linear, -lr * g, rtol=0.5)  # the preconditioner matters


def test_adam_variant_is_preconditioned_gram():
    model, (x, y) = CENet(seed=2), ce_batch(seed=3)
    opt = trained_adamw(model, x, y)
    _, layout = trainable_parameters(model)
    d = adam_preconditioner(opt.state_dict(), layout)
    G = loop_grads(model, x, y, lambda a, b, p: smse_ref(p, b))
    res = hat_matrix(model, x, y, metric="adam", optimizer_state=opt.state_dict())
    assert torch.allclose(res.pi, (G * d) @ G.T, rtol=1e-10)
    # wrong state: parameter count / shapes
    other = CENet()
    other.b = nn.Conv2d(3, 4, 3, padding=1)
    with pytest.raises(InputError, match="optimizer_state"):
        hat_matrix(other, x, y, metric="adam", optimizer_state=opt.state_dict())
    fresh = torch.optim.AdamW(model.parameters()).state_dict()
    with pytest.raises(InputError, match="optimizer_state"):
        hat_matrix(model, x, y, metric="adam", optimizer_state=fresh)


def test_drift_observables_values():
    x = torch.ones(2, 4, 3, 3)
    pred = x.clone()
    pred[0, 0] *= 1.1  # +10 % mass in example 0
    pred[1, 3] *= 0.5  # -50 % energy in example 1
    assert torch.allclose(mass_drift(x, x, pred), torch.tensor([0.1, 0.0]))
    assert torch.allclose(energy_drift(x, x, pred), torch.tensor([0.0, -0.5]))
    with pytest.raises(InputError, match="mass_drift"):
        mass_drift(x[:, :2], x[:, :2], pred[:, :2][:, :0])


def _dense_gn(model, x, y, bra_rows, damping, basis="joint", energy_tol=0.0):
    """Dense float64 reference of Pi[n, m] = (Q^T r_n)^T eta^{-1} Q^T g_m, explicit Jacobian.

    basis "joint": Q from numpy's SVD of [G | R^T] (the follow-up's recipe); "ket": of G alone.
    """
    G = loop_grads(model, x, y, lambda a, b, p: smse_ref(p, b)).numpy().T
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    names = [(n, p.shape, p.numel()) for n, p in model.named_parameters()]

    def f(t):
        params, i = {}, 0
        for n, s, k in names:
            params[n] = t[i:i + k].reshape(s)
            i += k
        return torch.func.functional_call(model, params, (x,)).reshape(-1)

    J = torch.autograd.functional.jacobian(f, theta, vectorize=True).numpy()
    R = bra_rows.numpy().T
    U, s, _ = np.linalg.svd(np.concatenate([G, R], axis=1) if basis == "joint" else G, full_matrices=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    r = min(int(np.sum(energy < 1 - energy_tol)) + 1, int(np.sum(s > s[0] * 1e-7)))
    Q = U[:, :r]
    eta = Q.T @ (J.T @ J / J.shape[0]) @ Q + damping * np.eye(r)
    return (Q.T @ R).T @ np.linalg.solve(eta, Q.T @ G)


def _rel(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("name,fn", [("mass_drift", mass_drift), ("energy_drift", energy_drift)])
def test_drift_bra_matches_dense(name, fn):
    model, (x, y) = CENet(seed=4), ce_batch(seed=5)
    R = loop_grads(model, x, y, lambda a, b, p: fn(a, b, p))
    for basis in ("joint", "ket"):
        res = hat_matrix(model, x, y, response=name, energy_tol=0.0, bra_basis=basis)
        assert _rel(res.pi.numpy(), _dense_gn(model, x, y, R, 1e-6, basis)) < 1e-8, basis
        assert res.response == name and res.attrs["bra_basis"] == basis
    # the joint basis holds both gradient sets: a rank above the ket span's
    assert res.rank == res.attrs["ket_rank"] == 6
    assert hat_matrix(model, x, y, response=name, energy_tol=0.0).rank > 6


def test_joint_basis_with_energy_cut_and_damping_zero():
    model, (x, y) = CENet(seed=14), ce_batch(n=5, seed=15)
    R = loop_grads(model, x, y, lambda a, b, p: mass_drift(a, b, p))
    res = hat_matrix(model, x, y, response="mass_drift", energy_tol=0.05)
    ref = _dense_gn(model, x, y, R, 1e-6, "joint", energy_tol=0.05)
    assert res.rank < 10  # the cut is exercised on the 2N joint rows
    assert _rel(res.pi.numpy(), ref) < 1e-9
    res0 = hat_matrix(model, x, y, response="mass_drift", energy_tol=0.05, damping=0.0)
    assert _rel(res0.pi.numpy(), _dense_gn(model, x, y, R, 0.0, "joint", energy_tol=0.05)) < 1e-8


def test_transformed_response_and_callable_observable():
    model, (x, y) = CENet(seed=6), ce_batch(seed=7)
    flip = lambda t: torch.flip(t, dims=(-1,))
    R = loop_grads(model, flip(x), flip(y), lambda a, b, p: smse_ref(p, b))
    for basis in ("joint", "ket"):
        res = hat_matrix(model, x, y, response_transform=flip, energy_tol=0.0, bra_basis=basis)
        assert _rel(res.pi.numpy(), _dense_gn(model, x, y, R, 1e-6, basis)) < 1e-10, basis
    # target_transform: bras at (g.x_n, y_n) when the targets are kept
    keep = lambda t: t
    R2 = loop_grads(model, flip(x), y, lambda a, b, p: smse_ref(p, b))
    res = hat_matrix(model, x, y, response_transform=flip, target_transform=keep, energy_tol=0.0)
    assert _rel(res.pi.numpy(), _dense_gn(model, x, y, R2, 1e-6)) < 1e-10
    # identity transform: joint rows [G; G] span what G spans, so Pi is the plain matrix
    plain = hat_matrix(model, x, y, energy_tol=1e-4).pi
    ident = hat_matrix(model, x, y, energy_tol=1e-4, response_transform=keep).pi
    assert torch.allclose(ident, plain, rtol=1e-8, atol=1e-10 * plain.abs().max())
    # a callable bra equal to SMSE reproduces the plain matrix; Euclidean with a bra is R G^T
    plain = hat_matrix(model, x, y, energy_tol=0.0).pi
    as_callable = hat_matrix(model, x, y, energy_tol=0.0, response=lambda a, b, p: smse_ref(p, b)).pi
    assert torch.allclose(as_callable, plain, rtol=1e-8, atol=1e-10 * plain.abs().max())
    eu = hat_matrix(model, x, y, metric="euclidean", response="mass_drift").pi
    Rm = loop_grads(model, x, y, lambda a, b, p: mass_drift(a, b, p))
    G = loop_grads(model, x, y, lambda a, b, p: smse_ref(p, b))
    assert torch.allclose(eu, Rm @ G.T, rtol=1e-10, atol=1e-14)
    with pytest.raises(InputError, match="bra_basis"):
        hat_matrix(model, x, y, response="mass_drift", bra_basis="both")
    with pytest.raises(InputError, match="target_transform"):
        hat_matrix(model, x, y, target_transform=3)
    with pytest.raises(InputError, match="response_transform"):
        hat_matrix(model, x, y, response_transform=lambda t: t[:2])


def _count_work(monkeypatch):
    """Counters of per-example gradient rows and (direction, example) JVP pairs."""
    from pdeinf.influence import gradients as grad_mod

    calls = {"grad_rows": 0, "jvp_dirs": 0}
    real_grads, real_jvps = grad_mod.per_example_gradients, grad_mod.output_jvps

    def counting_grads(model, inputs, *a, **k):
        calls["grad_rows"] += inputs.shape[0]
        return real_grads(model, inputs, *a, **k)

    def counting_jvps(model, inputs, tangents, **k):
        calls["jvp_dirs"] += tangents.shape[0] * inputs.shape[0]
        return real_jvps(model, inputs, tangents, **k)

    monkeypatch.setattr(grad_mod, "per_example_gradients", counting_grads)
    monkeypatch.setattr(grad_mod, "output_jvps", counting_jvps)
    return calls


def test_engine_pushes_basis_directions_not_gradient_rows(monkeypatch):
    """Without kept JVPs every metric pass pushes its basis vectors themselves: r per example
    for the ket metric, the joint rank for a bra (fewer than N, and than N + Nb rows); the
    numbers equal a dense float64 reference of the truncated basis."""
    model, (x, y) = CENet(seed=16), ce_batch(n=12, seed=17)
    calls = _count_work(monkeypatch)
    n, tol = x.shape[0], 1e-3
    engine = HatEngine(model, x, y, energy_tol=tol)
    pi, _ = engine.pi(damping=1e-6)
    r = engine.span.rank
    assert 4 * r <= 3 * n  # the case the folding is for (well below full rank: nothing kept)
    assert calls == {"grad_rows": n, "jvp_dirs": r * n}
    G = loop_grads(model, x, y, lambda a, b, p: smse_ref(p, b))
    assert _rel(pi.numpy(), _dense_gn(model, x, y, G, 1e-6, "ket", energy_tol=tol)) < 1e-8
    for k in (1, 2):
        shift = lambda t, k=k: torch.roll(t, k, dims=-1)
        before = dict(calls)
        pi_k, _ = engine.pi(damping=1e-6, response_transform=shift)
        r_joint = engine.basis(response_transform=shift).rank
        assert r_joint < 2 * n
        assert calls["grad_rows"] - before["grad_rows"] == n
        assert calls["jvp_dirs"] - before["jvp_dirs"] == r_joint * n
        R = loop_grads(model, shift(x), shift(y), lambda a, b, p: smse_ref(p, b))
        assert _rel(pi_k.numpy(), _dense_gn(model, x, y, R, 1e-6, "joint", energy_tol=tol)) < 1e-8


@pytest.mark.parametrize("keep", [True, None])
def test_engine_reuses_kept_ket_jvps_across_bras(monkeypatch, keep):
    """keep_ket_jvps=True, or the default at full rank (r = N): the ket pass pushes (and keeps)
    the N gradient rows once; each bra adds its own gradients and min(its N rows, its joint
    rank) directions, nothing else; the numbers equal those of an engine that keeps nothing."""
    model, (x, y) = CENet(seed=16), ce_batch(seed=17)
    calls = _count_work(monkeypatch)
    n = x.shape[0]
    engine = HatEngine(model, x, y, energy_tol=0.0, keep_ket_jvps=keep)
    assert engine.span.rank == n
    shifts = [lambda t, k=k: torch.roll(t, k, dims=-1) for k in (1, 2, 3)]
    pis = []
    for i, g in enumerate(shifts):
        before = dict(calls)
        pis.append(engine.pi(response_transform=g)[0])
        r_joint = engine.basis(response_transform=g).rank
        ket = n * n if i == 0 else 0
        assert calls["grad_rows"] - before["grad_rows"] == n  # the ket rows: above
        assert calls["jvp_dirs"] - before["jvp_dirs"] == ket + min(n, r_joint) * n
    before = calls["jvp_dirs"]
    assert engine.eta_raw is not None and calls["jvp_dirs"] == before  # plain metric: kept JVPs
    assert torch.allclose(engine.pi()[0], hat_matrix(model, x, y, energy_tol=0.0).pi, rtol=1e-11, atol=1e-15)
    for g, pi in zip(shifts, pis):
        R = loop_grads(model, g(x), g(y), lambda a, b, p: smse_ref(p, b))
        assert _rel(pi.numpy(), _dense_gn(model, x, y, R, 1e-6)) < 1e-10
    # an engine that keeps nothing: same numbers
    other = HatEngine(model, x, y, energy_tol=0.0, keep_ket_jvps=False)
    for g, pi in zip(shifts, pis):
        assert torch.allclose(other.pi(response_transform=g)[0], pi, rtol=1e-12, atol=1e-15)
    with pytest.raises(InputError, match="keep_ket_jvps"):
        HatEngine(model, x, y, keep_ket_jvps="yes")


def test_engine_reuses_gradients_and_metric_across_variants():
    model, (x, y) = CENet(seed=8), ce_batch(seed=9)
    engine = HatEngine(model, x, y)
    gn, _ = engine.pi("gauss-newton")
    eta = engine.eta_raw
    engine.pi("gauss-newton", response="mass_drift")
    assert engine.eta_raw is eta  # not recomputed
    assert torch.equal(gn, hat_matrix(model, x, y).pi)


def test_normalizations_properties_numpy_and_torch():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 5, 7))
    pi = a @ np.swapaxes(a, -1, -2)  # [2, 3, 5, 5] PSD
    losses = rng.uniform(1, 2, size=(2, 3, 5))
    for kind in NORMALIZATIONS:
        out = normalize(pi, kind, losses=losses)
        out_t = normalize(torch.as_tensor(pi), kind, losses=torch.as_tensor(losses))
        assert isinstance(out, np.ndarray) and isinstance(out_t, torch.Tensor)
        assert out.shape == pi.shape and np.allclose(out_t.numpy(), out)
    diag = lambda m: np.diagonal(m, axis1=-2, axis2=-1)
    assert np.allclose(normalize(pi, "none"), pi)
    assert np.allclose(np.std(normalize(pi, "standard"), axis=-1, ddof=1), 1.0)
    assert np.allclose(diag(normalize(pi, "cosine")), 1.0)
    assert np.all(np.abs(normalize(pi, "cosine")) <= 1 + 1e-12)  # Cauchy-Schwarz
    assert np.allclose(diag(normalize(pi, "row")), 1.0) and np.allclose(diag(normalize(pi, "column")), 1.0)
    assert np.allclose(normalize(pi, "row")[..., 1, 2], pi[..., 1, 2] / pi[..., 2, 2])
    assert np.allclose(normalize(pi, "column")[..., 1, 2], pi[..., 1, 2] / pi[..., 1, 1])
    assert np.allclose(diag(normalize(pi, "trace")).sum(-1), 5.0)
    assert np.allclose(normalize(pi, "loss", losses=losses)[..., 3, :], pi[..., 3, :] / losses[..., 3, None])
    # scale invariance of every kind but none/loss
    for kind in ("standard", "cosine", "row", "column", "trace"):
        assert np.allclose(normalize(7.0 * pi, kind), normalize(pi, kind))


def test_normalize_refuses_bad_input():
    pi = np.eye(3)
    with pytest.raises(InputError, match="kind"):
        normalize(pi, "zscore")
    with pytest.raises(InputError, match="losses"):
        normalize(pi, "loss")
    with pytest.raises(InputError, match="losses"):
        normalize(pi, "loss", losses=np.ones(4))
    with pytest.raises(InputError, match="pi"):
        normalize(np.ones((3, 4)), "trace")


def test_hat_matrix_normalization_argument():
    model, (x, y) = CENet(seed=10), ce_batch(seed=11)
    raw = hat_matrix(model, x, y)
    cos = hat_matrix(model, x, y, normalization="cosine")
    assert torch.allclose(cos.pi, normalize(raw.pi, "cosine"))
    assert torch.allclose(torch.diagonal(cos.pi), torch.ones(6, dtype=torch.float64))


def test_spectrum_summaries():
    assert effective_rank([2.0, 2.0, 2.0, 0.0]) == pytest.approx(3.0)
    assert effective_rank([1.0, 1e-30]) == pytest.approx(1.0)
    assert participation_ratio([5.0, 5.0]) == pytest.approx(2.0)
    assert condition_number([4.0, 1.0]) == pytest.approx(4.0)
    assert condition_number([4.0, 0.0]) == float("inf")
    assert condition_number([4.0, 0.0], damping=1.0) == pytest.approx(5.0)
    res = hat_matrix(CENet(seed=12), *ce_batch(seed=13))
    assert res.eta_eigenvalues.numel() == res.rank and (res.eta_eigenvalues > 0).all()
    assert torch.all(res.eta_eigenvalues[:-1] >= res.eta_eigenvalues[1:])


def test_variant_names():
    assert VARIANTS[:3] == ("gauss-newton", "euclidean", "adam")


def test_basis_too_large_for_memory_falls_back_to_the_rows(monkeypatch):
    """When the [r, P] basis rows would not fit in a quarter of the available memory, the pass
    pushes the gradient rows themselves: the same matrix, N directions per example."""
    from pdeinf.influence import gradients as grad_mod

    model, (x, y) = CENet(seed=16), ce_batch(n=12, seed=17)
    n, tol = x.shape[0], 1e-3
    folded = HatEngine(model, x, y, energy_tol=tol).pi(damping=1e-6)[0]
    calls = _count_work(monkeypatch)
    # bytes: the 12 x 127 float64 gradients (12192) fit, a quarter of it (3750) holds no
    # basis of r >= 4 rows of 127
    have = 15_000
    monkeypatch.setattr(grad_mod, "available_memory", lambda: have)
    engine = HatEngine(model, x, y, energy_tol=tol)
    rows, _ = engine.pi(damping=1e-6)
    r = engine.span.rank
    assert r * engine.layout.size * 8 > have // 4 and 4 * r <= 3 * n
    assert calls["jvp_dirs"] == n * n
    assert torch.allclose(rows, folded, rtol=1e-10, atol=1e-14 * float(folded.abs().max()))
