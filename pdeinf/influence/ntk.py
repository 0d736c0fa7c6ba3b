"""The largest eigenvalue of the unnormalised NTK of a batch (seed paper, fig. 8 / 34 / 35):
`lambda_max(J J^T + lambda I) = lambda_max(J^T J) + lambda` (J of all N*C*H*W raw outputs, no
1/M), by Lanczos (`scipy.sparse.linalg.eigsh`) on the matrix-free `v -> J^T J v + lambda v`.
"""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.errors import NumericalError
from pdeinf.influence import gradients as _grad
from pdeinf.influence.fullspace import GaussNewtonOperator
from pdeinf.influence.untouched import keeps_model

#: Lanczos basis size of each ARPACK restart: the top eigenvalue is well separated, so 6 takes 7
#: products against 21 with scipy's 20 (`benchmarks/bench_ntk_lanczos.py --trained`).
LANCZOS_VECTORS = 6


@keeps_model
def ntk_top_eigenvalue(model: torch.nn.Module, inputs: torch.Tensor, *, damping: float = 1e-4,
                       tol: float = 1e-2, maxiter: int | None = None, seed: int = 0) -> dict:
    """`{"eigenvalue": float, "matvecs": int}`: the top eigenvalue of `J J^T + damping I` for
    `inputs` `[N, C, H, W]` to relative tolerance `tol` (the paper's 1e-2); `seed`: the start vector."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    _grad.check_model_mode(model)
    params, layout = _grad.trainable_parameters(model)
    dtype = _grad.real_dtype(params, layout.complex_names)
    inputs, _ = _grad.check_batch(inputs, inputs, dtype)
    operator = GaussNewtonOperator(model, inputs, params, layout, damping)
    count = {"matvecs": 0}

    def matvec(v: np.ndarray) -> np.ndarray:
        count["matvecs"] += 1
        vt = torch.as_tensor(np.asarray(v).reshape(1, -1), dtype=dtype)
        return operator(vt)[0].detach().to(torch.float64).numpy()

    size = layout.size
    op = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(size)
    try:
        values = eigsh(op, k=1, which="LA", tol=tol, v0=start, maxiter=maxiter,
                       ncv=min(size, LANCZOS_VECTORS), return_eigenvectors=False)
    except ArpackNoConvergence as err:
        raise NumericalError(f"ntk_top_eigenvalue: Lanczos did not converge ({err})") from None
    return {"eigenvalue": float(values[0]), "matvecs": count["matvecs"]}
