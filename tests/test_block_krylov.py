"""The block Krylov (Galerkin) solver of the full-space estimator on dense float64 systems."""
from __future__ import annotations

import pytest
import torch

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence import block_krylov as bk
from pdeinf.influence.block_krylov import block_galerkin, orthonormal_extension
from pdeinf.influence.krylov import batched_cg


def _spd(size=30, decades=4, seed=11):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, decades, size, dtype=torch.float64)) @ q.T, g


def _a_norm_error(a, x, exact):
    e = x - exact
    return ((e @ a) * e).sum(dim=1).sqrt()


def test_solves_a_dense_ill_conditioned_system_with_dependent_columns():
    a, g = _spd()
    b = torch.randn(6, 30, generator=g, dtype=torch.float64)
    b[2] = 0.0  # a zero right-hand side is solved by x = 0 and never enters the basis
    b[4] = 3.0 * b[1]  # a dependent column adds no direction of its own
    exact = torch.linalg.solve(a, b.T).T
    calls = []

    def matvec(v):
        calls.append(v.shape[0])
        return v @ a

    out = block_galerkin(matvec, b, rtol=1e-12, maxiter=100)
    assert bool(out.converged.all()) and int(out.iterations[2]) == 0
    assert torch.allclose(out.x, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))
    # the reported residuals are the true ones (formed from A V, not by a recursion)
    big, g = _spd(size=300, decades=4, seed=12)
    b = torch.randn(4, 300, generator=g, dtype=torch.float64)
    loose = block_galerkin(lambda v: v @ big, b, rtol=1e-6, maxiter=300)
    true = (b - loose.x @ big).norm(dim=1) / b.norm(dim=1)
    assert bool(loose.converged.all()) and float(loose.residual_norms.max()) <= 1e-6
    assert float(true.min()) > 1e-9 and loose.matvecs < 300  # stopped before the whole space
    assert torch.allclose(loose.residual_norms, true, rtol=1e-5, atol=1e-14)
    assert out.matvecs == sum(calls) and out.sweeps == len(calls)
    assert calls[0] == 4  # 6 columns, one zero and one dependent: 4 directions in the first sweep
    assert sum(calls) <= 30  # never more directions than the dimension (exact arithmetic: 30)


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_each_column_is_at_least_as_good_as_its_own_cg(steps):
    """The shared space holds every column's own Krylov space, so after j sweeps each column's
    A-norm error is at most that of j steps of CG on that column alone."""
    a, g = _spd(size=60, decades=5, seed=3)
    b = torch.randn(3, 60, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(a, b.T).T
    block = block_galerkin(lambda v: v @ a, b, rtol=1e-14, maxiter=steps)
    alone = batched_cg(lambda v: v @ a, b, rtol=1e-14, maxiter=steps)
    assert int(block.iterations.max()) == steps
    e_block, e_alone = _a_norm_error(a, block.x, exact), _a_norm_error(a, alone.x, exact)
    assert bool((e_block <= e_alone * (1 + 1e-9)).all())


@pytest.mark.parametrize("cap", [3, 12])
def test_a_small_basis_restarts_and_still_converges(cap):
    a, g = _spd(size=40, decades=1, seed=5)
    b = torch.randn(5, 40, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(a, b.T).T
    sizes, states = [], []

    def matvec(v):
        sizes.append(v.shape[0])
        return v @ a

    out = block_galerkin(matvec, b, rtol=1e-10, maxiter=500, max_basis=cap, checkpoint=states.append,
                         checkpoint_every=1)
    assert bool(out.converged.all())
    assert torch.allclose(out.x, exact, rtol=0, atol=1e-7 * float(exact.abs().max()))
    assert max(sizes) <= cap and states[-1]["restarts"] > 0  # fewer directions than 5 columns: cap 3
    # the checkpointed image A x0 is the operator applied to the checkpointed iterate
    last = states[-1]
    assert torch.allclose(last["ax"], last["x"] @ a, rtol=0, atol=1e-8 * float((b).abs().max()))


def test_resume_from_a_capped_solve():
    a, g = _spd(seed=7)
    b = torch.randn(4, 30, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(a, b.T).T
    states = []
    capped = block_galerkin(lambda v: v @ a, b, rtol=1e-12, maxiter=2, checkpoint=states.append)
    assert not bool(capped.converged.all()) and int(capped.iterations.max()) == 2
    resumed = block_galerkin(lambda v: v @ a, b, rtol=1e-12, maxiter=100, resume=states[-1])
    assert bool(resumed.converged.all()) and resumed.sweeps > capped.sweeps
    assert torch.allclose(resumed.x, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))
    with pytest.raises(InputError, match="resume"):
        block_galerkin(lambda v: v @ a, b, rtol=1e-12, maxiter=5, resume={"x": b, "r": b})


def test_floor_at_the_known_lower_bound_matches_the_unfloored_solve():
    """A = J^T J + lambda I: the projected operator's eigenvalues are >= lambda, so flooring at
    lambda changes nothing for an exactly represented operator."""
    g = torch.Generator().manual_seed(9)
    jac = torch.randn(20, 50, generator=g, dtype=torch.float64)
    a = jac.T @ jac + 1e-3 * torch.eye(50, dtype=torch.float64)
    b = torch.randn(3, 20, generator=g, dtype=torch.float64) @ jac
    plain = block_galerkin(lambda v: v @ a, b, rtol=1e-11, maxiter=100)
    floored = block_galerkin(lambda v: v @ a, b, rtol=1e-11, maxiter=100, lower_bound=1e-3)
    assert torch.allclose(plain.x, floored.x, rtol=1e-9, atol=0)


def test_bad_operators_and_arguments():
    a, g = _spd(size=10)
    b = torch.randn(2, 10, generator=g, dtype=torch.float64)
    indefinite = a.clone()
    indefinite[0, 0] = -1e6
    with pytest.raises(NumericalError, match="positive"):
        block_galerkin(lambda v: v @ indefinite, torch.eye(10, dtype=torch.float64)[:2], rtol=1e-8, maxiter=20)
    with pytest.raises(NumericalError, match="NaN"):
        block_galerkin(lambda v: v * float("nan"), b, rtol=1e-8, maxiter=20)
    for kw, word in (({"max_basis": 0}, "max_basis"), ({"rtol": 1.5}, "rtol"), ({"maxiter": 0}, "maxiter")):
        with pytest.raises(InputError, match=word):
            block_galerkin(lambda v: v @ a, b, **{"rtol": 1e-8, "maxiter": 20, **kw})


def test_orthonormal_extension_drops_directions_already_spanned():
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(50, 3, generator=g, dtype=torch.float64))
    basis = basis.T
    inside = torch.randn(2, 3, generator=g, dtype=torch.float64) @ basis
    outside = torch.randn(2, 50, generator=g, dtype=torch.float64)
    new = orthonormal_extension(torch.cat([inside, outside, outside[:1] * 2.0]), basis)
    assert new.shape == (2, 50)
    joint = torch.cat([basis, new])
    assert torch.allclose(joint @ joint.T, torch.eye(5, dtype=torch.float64), atol=1e-12)


def test_default_basis_fits_a_quarter_of_the_free_memory_of_the_operands_device(monkeypatch):
    """Host memory for CPU operands, the accelerator's own free memory for CUDA ones (a GPU
    solve must not size its basis by the host's RAM)."""
    length, gib = 10_000_000, 2**30
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 24 * gib})())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * gib, 80 * gib))
    per_direction = 2 * length * 4  # V and W, float32
    assert bk.default_max_basis(length, torch.float32) == 24 * gib // 4 // per_direction
    assert bk.default_max_basis(length, torch.float32, "cpu") == 24 * gib // 4 // per_direction
    assert bk.default_max_basis(length, torch.float32, torch.device("cuda", 0)) == 80 * gib // 4 // per_direction
    assert bk.default_max_basis(10, torch.float64, "cpu") == bk.MAX_BASIS_CAP
