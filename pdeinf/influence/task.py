"""The labelled influence datasets of one batch at one checkpoint (pure: tensors in, xarray out):
`labelled_influence` (one `pi` per variant of `variants_for(pde)`, one shared `HatEngine`) and
`seed_paper_influence` (the seed paper's C / M / E bras). Examples are class-major, n = c * T + t.
"""
from __future__ import annotations

import numpy as np
import torch

from pdeinf.checks import one_of
from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.influence.hat import (
    GRAD_CHUNK,
    JVP_CHUNK,
    HatEngine,
    batch_to_labelled,
    labelled_to_batch,
)
from pdeinf.influence.variants import variant, variants_for

PI_DIMS: tuple[str, ...] = ("t_resp", "c_resp", "t_pert", "c_pert")
NTK_DAMPING = 1e-4  # the seed paper's lambda in J J^T + lambda I (fig. 8)
DATA_VARS: tuple[str, ...] = ("pi", "losses", "eta_eigenvalues", "grad_singular_values", "rank",
                              "input_distance")


def input_distance(inputs: torch.Tensor) -> np.ndarray:
    """`[N, N]` float64 `mean_{c,x,y} (x_n - x_m)^2 / (0.5 (s_nc + s_mc) + 1e-6)` for `inputs`
    `[N, C, H, W]`, s_nc the RMS of channel c of input n."""
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


def _check_classes(inputs: torch.Tensor, pde: str) -> tuple[tuple, int, int]:
    """`(classes, n_c, n_t)` of a class-major batch of `pde`; InputError unless N = n_c * n_t."""
    classes = pde_spec(pde).classes
    n_c = len(classes)
    if inputs.shape[0] % n_c:
        raise InputError(f"inputs: {inputs.shape[0]} examples is not a multiple of {n_c} classes")
    return classes, n_c, inputs.shape[0] // n_c


def labelled_influence(model, optimizer_state, inputs, targets, *, pde: str, damping: float,
                       energy_tol: float, attrs: dict | None = None, variants=None,
                       grad_chunk=GRAD_CHUNK, jvp_chunk=JVP_CHUNK, progress=False):
    """xr.Dataset of one class-major batch: `pi` (variant, t_resp, c_resp, t_pert, c_pert) raw,
    `losses` (t, c), `eta_eigenvalues` (mode, NaN-padded to N), `grad_singular_values` (mode),
    `rank` and `input_distance` (docs/method.md section 6)."""
    import xarray as xr

    from pdeinf import __version__

    classes, n_c, n_t = _check_classes(inputs, pde)
    n = inputs.shape[0]
    variants = tuple(variants or variants_for(pde))
    specs = [variant(v) for v in variants]  # an unknown name fails here, before any work
    # without a joint-basis bra no pass reuses the ket JVPs: never keep them
    bras = any(v.metric == "gauss-newton" and v.observable != "smse" for v in specs)
    engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, grad_chunk=grad_chunk,
                       jvp_chunk=jvp_chunk, progress=progress, keep_ket_jvps=None if bras else False)
    pis, eigenvalues = [], None
    for spec in specs:
        pi, ev = engine.pi(spec.metric, damping=damping, response=spec.observable,
                           optimizer_state=optimizer_state)
        pis.append(pi.numpy())
        if (spec.metric, spec.observable) == ("gauss-newton", "smse"):
            eigenvalues = ev
    if eigenvalues is None:
        _, eigenvalues = engine.pi("gauss-newton", damping=damping)
    padded = np.full(n, np.nan)
    padded[: eigenvalues.numel()] = eigenvalues.numpy()
    data = {"pi": (("variant",) + PI_DIMS, batch_to_labelled(np.stack(pis), n_c, n_t)),
            "losses": _per_example(engine.losses, n_c, n_t),
            "eta_eigenvalues": (("mode",), padded),
            "grad_singular_values": (("mode",), engine.span.all_singular_values.numpy()),
            "rank": ((), np.int64(engine.span.rank)),
            "input_distance": (PI_DIMS, batch_to_labelled(input_distance(inputs), n_c, n_t))}
    return xr.Dataset(data, coords={"variant": list(variants), **_coords(classes, n_t), "mode": np.arange(n)},
                      attrs={"pde": pde, "damping": float(damping), "energy_tol": float(energy_tol),
                             "rank": int(engine.span.rank), "pdeinf_version": __version__,
                             "pi_convention": "rows = response (t_resp, c_resp), columns = perturbation; raw",
                             **(attrs or {})})


def seed_paper_bras(pde: str) -> tuple[str, ...]:
    """The seed paper's bras for `pde`: "C" (SMSE), "M" / "E" (mass / energy) where it has a
    density / energy channel (the ket is always C)."""
    spec = pde_spec(pde)
    return ("C",) + (("M",) if spec.density_channel is not None else ()) + (
        ("E",) if spec.energy_channel is not None else ())


_BRA_RESPONSE = {"C": "smse", "M": "mass_drift", "E": "energy_drift"}
#: Subspace: the residual bras r^M, r^E are the gradients of half the squared relative drift
#: up to a positive per-row factor (M[x] + 1e-6) that row standardization removes.
_BRA_SUBSPACE = {"C": "smse", "M": "mass_drift_sq", "E": "energy_drift_sq"}
_BRA_VARIANT = {"C": "gauss-newton", "M": "gn-mass", "E": "gn-energy"}  # follow-up variant of each bra
SEED_PAPER_ESTIMATORS = ("full-space", "subspace")


def _exact_record(n: int) -> dict:
    """The solver record of an exact (subspace) estimate of N examples: no iterations."""
    return {"cg_iterations": np.zeros(n), "cg_residual": np.zeros(n), "converged": True}


def seed_paper_influence(model, inputs, targets, *, pde: str, damping: float, rtol: float,
                         estimator: str = "full-space", energy_tol: float = 1e-4,
                         state_path=None, attrs: dict | None = None, progress=False):
    """The seed paper's labelled influence of one batch (xr.Dataset): `H` (bra, t_resp, c_resp,
    t_pert, c_pert) raw from `full_space_hat_matrix` (one solve shared through `state_path`) or
    the exact subspace estimator; `input_distance`; `ntk_top_eigenvalue` (lambda = 1e-4);
    `losses`, `cg_iterations`, `cg_residual` (t, c) per right-hand side m (0 for subspace)."""
    import tempfile
    from pathlib import Path

    _check_classes(inputs, pde)
    one_of(estimator, SEED_PAPER_ESTIMATORS, "estimator")
    bras = seed_paper_bras(pde)
    if estimator == "subspace":
        engine = HatEngine(model, inputs, targets, energy_tol=energy_tol, progress=progress)
        pis = [engine.pi("gauss-newton", damping=damping, response=_BRA_SUBSPACE[b])[0].numpy()
               for b in bras]
        matrices, losses, record = np.stack(pis), engine.losses, _exact_record(inputs.shape[0])
    else:
        from pdeinf.influence.fullspace import full_space_hat_matrix

        with tempfile.TemporaryDirectory() as scratch:
            state = Path(state_path) if state_path is not None else Path(scratch) / "cg.pt"
            results = [full_space_hat_matrix(model, inputs, targets, damping=damping, rtol=rtol,
                                             response=_BRA_RESPONSE[b], pde=pde, state_path=state,
                                             stopping="authors", progress=progress) for b in bras]
        first = results[0]
        record = {"cg_iterations": first.iterations.numpy(), "cg_residual": first.residual_norms.numpy(),
                  "converged": bool(first.converged.all())}
        matrices, losses = np.stack([r.pi.numpy() for r in results]), first.losses
    return _seed_paper_dataset(model, inputs, matrices, losses, record, pde=pde,
                               estimator=estimator, damping=damping, rtol=rtol, attrs=attrs)


def seed_paper_from_follow_up(follow_up, model, inputs, *, pde: str, damping: float,
                              energy_tol: float, attrs: dict | None = None):
    """`seed_paper_influence(..., estimator="subspace")` from the batch's `labelled_influence`, whose
    Gauss-Newton SMSE / mass / energy variants ARE the C / M / E bras' matrices; InputError when
    `follow_up` was computed with another damping / energy_tol or lacks a variant."""
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
                               _exact_record(inputs.shape[0]), pde=pde, estimator="subspace",
                               damping=damping, rtol=0.0, attrs=attrs)


def _seed_paper_dataset(model, inputs, matrices, losses, record, *, pde, estimator, damping, rtol,
                        attrs):
    """The seed-paper dataset from `[bra, N, N]` matrices, `losses` [N] and the solver record."""
    import xarray as xr

    from pdeinf import __version__
    from pdeinf.influence.ntk import ntk_top_eigenvalue

    classes, n_c, n_t = _check_classes(inputs, pde)
    bras = seed_paper_bras(pde)
    per_m = dict(record)
    converged = per_m.pop("converged")
    top = ntk_top_eigenvalue(model, inputs, damping=NTK_DAMPING)
    data = {"H": (("bra",) + PI_DIMS, batch_to_labelled(matrices, n_c, n_t)),
            "input_distance": (PI_DIMS, batch_to_labelled(input_distance(inputs), n_c, n_t)),
            "ntk_top_eigenvalue": ((), float(top["eigenvalue"])),
            "losses": _per_example(losses, n_c, n_t),
            **{k: _per_example(v, n_c, n_t) for k, v in per_m.items()}}
    return xr.Dataset(data, coords={"bra": list(bras), **_coords(classes, n_t)},
                      attrs={"pde": pde, "estimator": estimator, "damping": float(damping),
                             "rtol": float(rtol) if estimator == "full-space" else 0.0,
                             "all_converged": int(converged), "stopping": "authors",
                             "pdeinf_version": __version__,
                             "H_convention": "rows = response (t_resp, c_resp), columns = perturbation; raw",
                             **(attrs or {})})
