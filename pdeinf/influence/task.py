"""The labelled influence dataset of one batch at one checkpoint (pure: tensors in, xarray out).

`labelled_influence(model, optimizer_state, inputs, targets, pde=...)` returns an xr.Dataset:

- `pi` (variant, t_resp, c_resp, t_pert, c_pert): raw influence for each variant of
  `variants_for(pde)` (rows = response, columns = perturbation). The gradients, the basis and
  the metric are computed once and shared by the variants (`HatEngine`).
- `losses` (t, c): SMSE per example; `eta_eigenvalues` (mode): undamped eigenvalues of the
  restricted metric, NaN-padded to N; `grad_singular_values` (mode); `rank` (scalar);
- `input_distance` (t_resp, c_resp, t_pert, c_pert): method.md section 6 item 6,
  `mean_{c,x,y} (x_n - x_m)^2 / (0.5 (s_nc + s_mc) + 1e-6)` with s_nc the RMS of channel c of
  input n (the per-channel scale of SMSE).

Examples are ordered class-major: n = c * T + t for C classes and T times.
"""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.influence.hat import GRAD_CHUNK, JVP_CHUNK, HatEngine, batch_to_labelled
from pdeinf.influence.variants import VARIANT_TABLE, variants_for

PI_DIMS: tuple[str, ...] = ("t_resp", "c_resp", "t_pert", "c_pert")
DATA_VARS: tuple[str, ...] = ("pi", "losses", "eta_eigenvalues", "grad_singular_values", "rank",
                              "input_distance")


def input_distance(inputs: torch.Tensor) -> np.ndarray:
    """Scaled squared input distance `[N, N]` (float64) of `inputs` `[N, C, H, W]` (module doc)."""
    x = inputs.detach().to(torch.float64).flatten(2)  # [N, C, HW]
    scale = x.pow(2).mean(-1).sqrt()  # [N, C]
    out = torch.empty(x.shape[0], x.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        sq = (x[n:n + 1] - x).pow(2).mean(-1)  # [N, C]
        out[n] = (sq / (0.5 * (scale[n:n + 1] + scale) + 1e-6)).mean(-1)
    return out.numpy()


def _variant_matrices(engine: HatEngine, variants, *, damping: float, optimizer_state):
    """`([variant, N, N] numpy, undamped Gauss-Newton eigenvalues)` for the named variants."""
    pis, eigenvalues = [], None
    for name in variants:
        spec = VARIANT_TABLE[name]
        if spec.observable != "smse":
            pi, _ = engine.pi(spec.metric, damping=damping, response=spec.observable)
        else:
            pi, ev = engine.pi(spec.metric, damping=damping, optimizer_state=optimizer_state)
            if spec.metric == "gauss-newton":
                eigenvalues = ev
        pis.append(pi.numpy())
    if eigenvalues is None:
        _, eigenvalues = engine.pi("gauss-newton", damping=damping)
    return np.stack(pis), eigenvalues


def labelled_influence(model, optimizer_state, inputs, targets, *, pde: str, damping: float,
                       energy_tol: float, attrs: dict | None = None, variants=None,
                       grad_chunk=GRAD_CHUNK, jvp_chunk=JVP_CHUNK, progress=False):
    """The xr.Dataset of one batch (module docstring); N = 3 classes x T times, class-major."""
    import xarray as xr

    from pdeinf import __version__

    classes = pde_spec(pde).classes
    n = inputs.shape[0]
    n_c = len(classes)
    if n % n_c:
        raise InputError(f"inputs: {n} examples is not a multiple of {n_c} classes")
    n_t = n // n_c
    variants = tuple(variants or variants_for(pde))
    engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
                       jvp_chunk=jvp_chunk, progress=progress)
    pis, eigenvalues = _variant_matrices(engine, variants, damping=damping,
                                         optimizer_state=optimizer_state)
    padded = np.full(n, np.nan)
    padded[: eigenvalues.numel()] = eigenvalues.numpy()
    t_idx, c_idx = np.arange(n_t), list(classes)
    return xr.Dataset(
        {
            "pi": (("variant",) + PI_DIMS, batch_to_labelled(pis, n_c, n_t)),
            "losses": (("t", "c"), engine.losses.to(torch.float64).numpy().reshape(n_c, n_t).T),
            "eta_eigenvalues": (("mode",), padded),
            "grad_singular_values": (("mode",), engine.span.all_singular_values.numpy()),
            "rank": ((), np.int64(engine.span.rank)),
            "input_distance": (PI_DIMS, batch_to_labelled(input_distance(inputs), n_c, n_t)),
        },
        coords={"variant": list(variants), "t_resp": t_idx, "c_resp": c_idx, "t_pert": t_idx,
                "c_pert": c_idx, "t": t_idx, "c": c_idx, "mode": np.arange(n)},
        attrs={"pde": pde, "damping": float(damping), "energy_tol": float(energy_tol),
               "rank": int(engine.span.rank), "pdeinf_version": __version__,
               "pi_convention": "rows = response (t_resp, c_resp), columns = perturbation; raw",
               **(attrs or {})},
    )
