"""The labelled influence dataset of one batch at one checkpoint (pure: tensors in, xarray out).

`labelled_influence(model, optimizer_state, inputs, targets, pde=...)` returns an xr.Dataset:

- `pi` (variant, t_resp, c_resp, t_pert, c_pert): raw influence for each variant of
  `variants_for(pde)` (rows = response, columns = perturbation). The gradients, the basis and
  the metric are computed once and shared by the variants (`HatEngine`).
- `losses` (t, c): SMSE per example; `eta_eigenvalues` (mode): undamped eigenvalues of the
  restricted metric, NaN-padded to N; `grad_singular_values` (mode); `rank` (scalar);
- `input_distance` (t_resp, c_resp, t_pert, c_pert): docs/method.md section 6,
  `mean_{c,x,y} (x_n - x_m)^2 / (0.5 (s_nc + s_mc) + 1e-6)` with s_nc the RMS of channel c of
  input n (the per-channel scale of SMSE).

Examples are ordered class-major: n = c * T + t for C classes and T times.
"""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.influence.hat import (
    GRAD_CHUNK,
    JVP_CHUNK,
    HatEngine,
    batch_to_labelled,
    labelled_to_batch,
)
from pdeinf.influence.variants import VARIANT_TABLE, variant, variants_for

PI_DIMS: tuple[str, ...] = ("t_resp", "c_resp", "t_pert", "c_pert")
NTK_DAMPING = 1e-4  # the seed paper's lambda in J J^T + lambda I (fig. 8)
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


def _coords(classes, n_t: int) -> dict:
    """The (t, c) coordinates of a class-major batch and of its response / perturbation pairs."""
    t, c = np.arange(n_t), list(classes)
    return {"t_resp": t, "c_resp": c, "t_pert": t, "c_pert": c, "t": t, "c": c}


def _per_example(values, n_c: int, n_t: int) -> tuple:
    """A (t, c) float64 variable of class-major values `[N]` (tensor or array)."""
    values = values.to(torch.float64).numpy() if isinstance(values, torch.Tensor) else values
    return ("t", "c"), np.asarray(values, dtype=np.float64).reshape(n_c, n_t).T


def _exact_record(n: int) -> dict:
    """The solver record of an exact (subspace) estimate of N examples: no iterations."""
    return {"cg_iterations": np.zeros(n), "cg_residual": np.zeros(n), "converged": True}


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
    # without a joint-basis bra no pass reuses the ket JVPs: never keep them
    specs = [variant(v) for v in variants]  # an unknown name fails here, before any work
    bras = any(v.metric == "gauss-newton" and v.observable != "smse" for v in specs)
    engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
                       jvp_chunk=jvp_chunk, progress=progress, keep_ket_jvps=None if bras else False)
    pis, eigenvalues = _variant_matrices(engine, variants, damping=damping,
                                         optimizer_state=optimizer_state)
    padded = np.full(n, np.nan)
    padded[: eigenvalues.numel()] = eigenvalues.numpy()
    return xr.Dataset(
        {
            "pi": (("variant",) + PI_DIMS, batch_to_labelled(pis, n_c, n_t)),
            "losses": _per_example(engine.losses, n_c, n_t),
            "eta_eigenvalues": (("mode",), padded),
            "grad_singular_values": (("mode",), engine.span.all_singular_values.numpy()),
            "rank": ((), np.int64(engine.span.rank)),
            "input_distance": (PI_DIMS, batch_to_labelled(input_distance(inputs), n_c, n_t)),
        },
        coords={"variant": list(variants), **_coords(classes, n_t), "mode": np.arange(n)},
        attrs={"pde": pde, "damping": float(damping), "energy_tol": float(energy_tol),
               "rank": int(engine.span.rank), "pdeinf_version": __version__,
               "pi_convention": "rows = response (t_resp, c_resp), columns = perturbation; raw",
               **(attrs or {})},
    )


def seed_paper_bras(pde: str) -> tuple[str, ...]:
    """The seed paper's bras for `pde`: "C" (SMSE), and "M" / "E" (mass / energy) when the PDE
    has a density / energy channel. The ket is always C."""
    spec = pde_spec(pde)
    return ("C",) + (("M",) if spec.density_channel is not None else ()) + (
        ("E",) if spec.energy_channel is not None else ())


_BRA_RESPONSE = {"C": "smse", "M": "mass_drift", "E": "energy_drift"}
#: In the subspace estimator the paper's residual bras r^M, r^E are the gradients of half the
#: squared relative drift, up to a positive per-row factor (M[x] + 1e-6) that row
#: standardization removes.
_BRA_SUBSPACE = {"C": "smse", "M": "mass_drift_sq", "E": "energy_drift_sq"}
SEED_PAPER_ESTIMATORS = ("full-space", "subspace")


def _seed_paper_matrices(model, inputs, targets, bras, *, pde, estimator, damping, rtol,
                         energy_tol, state_path, progress):
    """`([bra, N, N] numpy, losses [N], per-column solver record)` of one batch."""
    import tempfile
    from pathlib import Path

    if estimator == "subspace":
        engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, progress=progress)
        pis = [engine.pi("gauss-newton", damping=damping, response=_BRA_SUBSPACE[b])[0].numpy()
               for b in bras]
        return np.stack(pis), engine.losses, _exact_record(inputs.shape[0])
    from pdeinf.influence.fullspace import full_space_hat_matrix

    with tempfile.TemporaryDirectory() as scratch:
        state = Path(state_path) if state_path is not None else Path(scratch) / "cg.pt"
        results = [full_space_hat_matrix(model, inputs, targets, damping=damping, rtol=rtol,
                                         response=_BRA_RESPONSE[b], pde=pde, state_path=state,
                                         stopping="authors", progress=progress) for b in bras]
    first = results[0]
    record = {"cg_iterations": first.iterations.numpy(), "cg_residual": first.residual_norms.numpy(),
              "converged": bool(first.converged.all())}
    return np.stack([r.pi.numpy() for r in results]), first.losses, record


def seed_paper_influence(model, inputs, targets, *, pde: str, damping: float, rtol: float,
                         estimator: str = "full-space", energy_tol: float = 1e-4,
                         state_path=None, attrs: dict | None = None, progress=False):
    """The seed paper's labelled influence of one batch (xr.Dataset): `H` (bra, t_resp,
    c_resp, t_pert, c_pert) raw, from the full-space estimator (`full_space_hat_matrix`, one
    Krylov solve shared by the bras through `state_path`; damping = lambda, rtol per model)
    or, with `estimator="subspace"`, the exact subspace estimator (damping there is the
    follow-up's 1e-6 on eta / M); `input_distance`; `ntk_top_eigenvalue` (scalar,
    `lambda_max(J J^T + lambda I)`, lambda = 1e-4 as the paper); `losses` (t, c);
    `cg_iterations` (t, c) and `cg_residual` (t, c) per right-hand side m (0 for subspace)."""
    _check_classes(inputs, pde)
    if estimator not in SEED_PAPER_ESTIMATORS:
        raise InputError(f"estimator={estimator!r}: expected one of {', '.join(SEED_PAPER_ESTIMATORS)}")
    matrices, losses, record = _seed_paper_matrices(
        model, inputs, targets, seed_paper_bras(pde), pde=pde, estimator=estimator,
        damping=damping, rtol=rtol, energy_tol=energy_tol, state_path=state_path,
        progress=progress)
    return _seed_paper_dataset(model, inputs, matrices, losses, record, pde=pde,
                               estimator=estimator, damping=damping, rtol=rtol, attrs=attrs)


#: The follow-up sweep's variant that holds each seed-paper bra's subspace matrix.
_BRA_VARIANT = {"C": "gauss-newton", "M": "gn-mass", "E": "gn-energy"}


def seed_paper_from_follow_up(follow_up, model, inputs, *, pde: str, damping: float,
                              energy_tol: float, attrs: dict | None = None):
    """`seed_paper_influence(..., estimator="subspace")` of a batch whose follow-up dataset
    (`labelled_influence` of the same model and batch) is already computed: its Gauss-Newton
    SMSE / mass-drift / energy-drift variants ARE the C / M / E bras' subspace matrices (same
    engine, damping and energy tolerance), so only the NTK eigenvalue and the input distances
    are computed here. InputError when `follow_up` was computed with other settings or lacks a
    variant."""
    _check_classes(inputs, pde)
    for name, wanted in (("damping", damping), ("energy_tol", energy_tol)):
        held = follow_up.attrs.get(name)
        if held is None or not np.isclose(float(held), float(wanted), rtol=1e-12, atol=0.0):
            raise InputError(f"follow_up: computed with {name}={held!r}, not {wanted!r}")
    bras = seed_paper_bras(pde)
    variants = [_BRA_VARIANT[b] for b in bras]
    missing = [v for v in variants if v not in follow_up["variant"].values]
    if missing:
        raise InputError(f"follow_up: lacks the variant(s) {missing} of the bras {bras}")
    labelled = follow_up["pi"].sel(variant=variants).transpose("variant", *PI_DIMS).values
    losses = follow_up["losses"].transpose("t", "c").values  # (t, c) -> class-major [N]
    return _seed_paper_dataset(model, inputs, labelled_to_batch(labelled),
                               torch.from_numpy(np.ascontiguousarray(losses.T).reshape(-1)),
                               _exact_record(inputs.shape[0]), pde=pde, estimator="subspace", damping=damping, rtol=0.0,
                               attrs=attrs)


def _check_classes(inputs: torch.Tensor, pde: str) -> None:
    n_c = len(pde_spec(pde).classes)
    if inputs.shape[0] % n_c:
        raise InputError(f"inputs: {inputs.shape[0]} examples is not a multiple of {n_c} classes")


def _seed_paper_dataset(model, inputs, matrices, losses, record, *, pde, estimator, damping, rtol,
                        attrs):
    """The seed-paper dataset of one batch from its `[bra, N, N]` matrices, `losses` [N] and
    solver record; adds the NTK's top eigenvalue and the input distances."""
    import xarray as xr

    from pdeinf import __version__
    from pdeinf.influence.ntk import ntk_top_eigenvalue

    classes = pde_spec(pde).classes
    n_c = len(classes)
    n_t = inputs.shape[0] // n_c
    bras = seed_paper_bras(pde)
    per_m = dict(record)
    converged = per_m.pop("converged")
    top = ntk_top_eigenvalue(model, inputs, damping=NTK_DAMPING)
    return xr.Dataset(
        {
            "H": (("bra",) + PI_DIMS, batch_to_labelled(matrices, n_c, n_t)),
            "input_distance": (PI_DIMS, batch_to_labelled(input_distance(inputs), n_c, n_t)),
            "ntk_top_eigenvalue": ((), float(top["eigenvalue"])),
            "losses": _per_example(losses, n_c, n_t),
            **{k: _per_example(v, n_c, n_t) for k, v in per_m.items()},
        },
        coords={"bra": list(bras), **_coords(classes, n_t)},
        attrs={"pde": pde, "estimator": estimator, "damping": float(damping),
               "rtol": float(rtol) if estimator == "full-space" else 0.0,
               "all_converged": int(converged), "stopping": "authors",
               "pdeinf_version": __version__,
               "H_convention": "rows = response (t_resp, c_resp), columns = perturbation; raw",
               **(attrs or {})},
    )
