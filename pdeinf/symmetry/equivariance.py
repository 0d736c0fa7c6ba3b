"""Forward equivariance error of a one-step surrogate (follow-up, `err_eqv.jl`): per example n
and group element g, `rho_g[n] = SMSE(f(g.x_n), g.y_n) / SMSE(f(x_n), y_n)` (channel scales
from the target, so from g.y_n in the numerator). An exactly equivariant f gives 1 (SMSE is
invariant under the action). Aggregation as in the follow-up's figures: per seed Q3 over
batches x examples, then over seeds the median and the quartiles.
"""
from __future__ import annotations

import torch
import xarray as xr

from pdeinf.errors import InputError, NumericalError
from pdeinf.influence.gradients import cast_to_model
from pdeinf.influence.untouched import keeps_model
from pdeinf.symmetry.actions import act, check_batch, parse_element, resolve_spec
from pdeinf.training.loss import smse


@keeps_model
def smse_under(model, inputs, targets, element, *, pde, convention: str = "ours",
               chunk: int | None = None) -> torch.Tensor:
    """`SMSE(f(g.x_n), g.y_n)` per example, `[N]` (the follow-up's e_g[n])."""
    g = parse_element(element)
    spec = resolve_spec(pde)
    check_batch(spec, inputs, targets)
    inputs, targets = cast_to_model(model, inputs, targets)
    gx = act(inputs, g, pde=spec, convention=convention)
    gy = act(targets, g, pde=spec, convention=convention)
    with torch.no_grad():
        pred = model(gx) if chunk is None or chunk >= gx.shape[0] else \
            torch.cat([model(gx[i:i + chunk]) for i in range(0, gx.shape[0], chunk)])
    return smse(pred, gy)


@keeps_model
def equivariance_error(model, inputs: torch.Tensor, targets: torch.Tensor, element, *, pde,
                       convention: str = "ours", chunk: int | None = None) -> torch.Tensor:
    """`SMSE(f(g.x), g.y) / SMSE(f(x), y)` per example, `[N]`, of a model in eval mode on
    transitions `[N, C, H, W]` of `pde` (cast to the model's real dtype), `chunk` examples per
    forward call (None: all). Near 1 does NOT mean equivariant when SMSE(f(x), y) is dominated
    by the target (compare with the training start, docs/models.md). NumericalError when a
    reference SMSE is zero or a value is not finite."""
    moved = smse_under(model, inputs, targets, element, pde=pde, convention=convention, chunk=chunk)
    base = smse_under(model, inputs, targets, "e", pde=pde, chunk=chunk)  # act(u, "e") is u itself
    if not bool(torch.isfinite(base).all() & torch.isfinite(moved).all()):
        raise NumericalError("equivariance_error: non-finite SMSE (the model output has NaN/Inf)")
    if bool((base == 0).any()):
        bad = torch.nonzero(base == 0).flatten().tolist()[:10]
        raise NumericalError(f"equivariance_error: SMSE(f(x), y) = 0 for example(s) {bad}; "
                             "the ratio is undefined")
    return moved / base


def aggregate_equivariance(errors, *, q: float = 0.75):
    """Follow-up aggregation of ratios `errors` (DataArray with dims seed, batch, example and
    any others such as element): per seed the `q` quantile over batch x example, then over
    seeds the median and the quartiles. Returns a Dataset with `per_seed` (seed, ...), and over
    seeds `median`, `q1`, `q3` (the follow-up plots median with bars q1..q3), `iqr` = q3 - q1.
    """
    if not isinstance(errors, xr.DataArray):
        raise InputError(f"errors: expected an xarray DataArray, got {type(errors).__name__}")
    missing = {"seed", "batch", "example"} - set(errors.dims)
    if missing:
        raise InputError(f"errors: missing dims {sorted(missing)} (has {list(errors.dims)})")
    if not 0.0 <= float(q) <= 1.0:
        raise InputError(f"q: must lie in [0, 1], got {q!r}")
    per_seed = errors.quantile(float(q), dim=("batch", "example")).drop_vars("quantile")
    quartiles = per_seed.quantile([0.25, 0.5, 0.75], dim="seed")
    q1, med, q3 = (quartiles.sel(quantile=v).drop_vars("quantile") for v in (0.25, 0.5, 0.75))
    return xr.Dataset(
        {"per_seed": per_seed, "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1},
        attrs={"quantile_per_seed": float(q),
               "description": "per seed quantile over batch x example; median and quartiles over seeds"},
    )
