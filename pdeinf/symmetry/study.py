"""The symmetry study of one training seed (follow-up section 7 + the Lie derivative), as one
xarray Dataset: pure (models and batches in, arrays out; no files).

At the final checkpoint, for every batch (n = example, `[N, C, H, W]` one-step pairs):

- `equivariance` (batch, element, example): `SMSE(f(g.x), g.y) / SMSE(f(x), y)` for
  `element` = "e" (exactly 1), the 7 non-identity D4 elements and the axis shifts
  `("shift", a, 0)`, `("shift", 0, a)` (labels "shift(a,0)", "shift(0,a)"), and the box grid
  of joint shifts `("shift", a, b)`, 1 <= a, b <= `box` (labels "shift(a,b)");
- `equivariance_authors` (batch, d4, example): the same under the authors' axis convention
  (`pdeinf.symmetry.actions`; it differs from ours by `v -> -v` on r, r3, s, sr2);
- `orbit_diagonal` (batch, element, example), `orbit_rank` (batch, element): the standardized
  orbit-influence diagonal `H_g[n, n]` (`orbit_influence`, one engine for all elements);
- `lie_norm` (batch, generator, example): per-example RMS of the Lie derivative (per grid cell
  for x / y, per radian for rotation);
- `lie_layer_norm` (batch, layer, example): RMS of each hooked module's contribution to the
  x-translation Lie derivative (plus "remainder"; `LieDecomposition`);
- `shift_axis_error` (batch, axis, shift, example): equivariance error of every circular shift
  0..n-1 along H ("y") and along W ("x");
- `shift_landscape` (batch, shift_y, shift_x): Q3 over examples of the error on a 2D grid of
  shifts (every `landscape_step` cells);
- `axis_check` (batch, assignment): `axis_assignment_check` residual with the PDESpec
  assignment ("ours") and the swap ("swapped").

Across checkpoints (first batch only), `tracked` = ("identity", "worst_d4", "shift1"): "e", the
worst D4 element of this seed (largest Q3 equivariance error over batches x examples at the
final checkpoint; `worst_d4_index` into the `d4` coordinate) and ("shift", 1, 0):

- `lie_norm_epochs` (epoch, generator, example), `equivariance_epochs` (epoch, tracked,
  example), `orbit_diagonal_epochs` (epoch, tracked, example).

`final_orbit_study` is the final-checkpoint `equivariance` / `orbit_diagonal` / `orbit_rank`
part alone, for chosen elements (the same per-batch code; the interventions study compares
augment with one-step on the D4 elements with it).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.errors import InputError
from pdeinf.symmetry.actions import ELEMENTS, axis_assignment_check, resolve_spec
from pdeinf.symmetry.equivariance import equivariance_error
from pdeinf.symmetry.lie import GENERATORS, lie_derivative, rms
from pdeinf.symmetry.orbit import element_label, orbit_influence

__all__ = ["D4_NON_IDENTITY", "TRACKED", "class_trajectories", "final_orbit_study", "study_elements",
           "symmetry_study"]

D4_NON_IDENTITY: tuple[str, ...] = tuple(g for g in ELEMENTS if g != "e")
TRACKED: tuple[str, ...] = ("identity", "worst_d4", "shift1")


def study_elements(shifts: Sequence[int], box: int = 0) -> list:
    """`["e", r, ..., sr3, ("shift", a, 0), ("shift", 0, a) for a in shifts]`, then the box
    grid of joint shifts `("shift", a, b)` for 1 <= a, b <= `box` (the follow-up's translation
    landscape; its axis rows and columns are the axis shifts)."""
    shifts = [int(a) for a in shifts]
    if any(a <= 0 for a in shifts) or len(set(shifts)) != len(shifts):
        raise InputError(f"shifts: expected distinct positive integers, got {shifts}")
    if not isinstance(box, (int, np.integer)) or box < 0:
        raise InputError(f"box: expected a non-negative integer, got {box!r}")
    out: list = ["e", *D4_NON_IDENTITY]
    for a in shifts:
        out += [("shift", a, 0), ("shift", 0, a)]
    out += [("shift", a, b) for a in range(1, box + 1) for b in range(1, box + 1)]
    return out


def class_trajectories(inputs: torch.Tensor, targets: torch.Tensor, c) -> torch.Tensor:
    """Trajectories `[K, T, C, H, W]` of an influence batch whose examples are consecutive
    transitions per class `c` (n = c * (T - 1) + t): the inputs then the last target."""
    c = np.asarray(c)
    out = []
    for k in np.unique(c):
        idx = torch.as_tensor(np.flatnonzero(c == k))
        out.append(torch.cat([inputs[idx], targets[idx[-1:]]]))
    return torch.stack(out)


def _axis_check(inputs, targets, c, spec, dt) -> dict:
    if spec.compressible:
        return axis_assignment_check(class_trajectories(inputs, targets, c).double(), spec, dt=dt)
    return axis_assignment_check(inputs.double(), spec)


def _equivariance(model, inputs, targets, elements, spec, convention="ours") -> np.ndarray:
    rows = []
    for g in elements:
        if g == "e":
            rows.append(np.ones(inputs.shape[0]))
        else:
            rows.append(equivariance_error(model, inputs, targets, g, pde=spec,
                                           convention=convention).double().cpu().numpy())
    return np.stack(rows)


def _lie_norms(model, inputs, spec) -> np.ndarray:
    return np.stack([rms(lie_derivative(model, inputs, gen, pde=spec)).double().cpu().numpy()
                     for gen in GENERATORS])


def _landscape(model, inputs, targets, spec, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = inputs.shape[-2:]
    ys, xs = np.arange(0, h, step), np.arange(0, w, step)
    out = np.ones((len(ys), len(xs)))
    for i, a in enumerate(ys):
        for j, b in enumerate(xs):
            if a or b:
                err = equivariance_error(model, inputs, targets, ("shift", int(a), int(b)), pde=spec)
                out[i, j] = float(torch.quantile(err.double(), 0.75))
    return ys, xs, out


def _axis_curves(model, inputs, targets, spec) -> np.ndarray:
    n = max(inputs.shape[-2:])
    out = np.full((2, n, inputs.shape[0]), np.nan)
    for ax, size in enumerate(inputs.shape[-2:]):
        for a in range(size):
            g = ("shift", a, 0) if ax == 0 else ("shift", 0, a)
            out[ax, a] = 1.0 if a == 0 else \
                equivariance_error(model, inputs, targets, g, pde=spec).double().cpu().numpy()
    return out


def final_orbit_study(model: torch.nn.Module, batches: Sequence, *, pde,
                      elements: Sequence | None = None, damping: float = 1e-6,
                      energy_tol: float = 1e-4, progress: bool = False,
                      attrs: dict | None = None, **engine_kwargs):
    """The equivariance error and the orbit influence of one model (a final checkpoint) on
    `batches`, for `elements` (default: "e" and the 7 non-identity D4 elements): the same
    computation as `symmetry_study`'s `equivariance`, `orbit_diagonal` and `orbit_rank`
    restricted to those elements (one engine per batch for all of them), without the Lie
    derivative, shift curves, landscape, axis check or earlier checkpoints.

    Returns an `xr.Dataset` with `equivariance`, `orbit_diagonal` (batch, element, example)
    and `orbit_rank` (batch, element); element labels as `symmetry_study`'s."""
    import xarray as xr

    spec = resolve_spec(pde)
    if not batches:
        raise InputError("batches: at least one batch is required")
    elements = ["e", *D4_NON_IDENTITY] if elements is None else list(elements)
    labels = [element_label(g) for g in elements]
    eqv, diag, rank = [], [], []
    for b in tqdm(batches, desc=f"orbit {spec.name}", disable=not progress, leave=False):
        eqv.append(_equivariance(model, b.inputs, b.targets, elements, spec))
        orbit = orbit_influence(model, b.inputs, b.targets, elements, pde=spec, damping=damping,
                                energy_tol=energy_tol, **engine_kwargs)
        diag.append(orbit["diagonal"].values)
        rank.append(orbit["rank"].values)
    n = batches[0].inputs.shape[0]
    return xr.Dataset(
        {"equivariance": (("batch", "element", "example"), np.stack(eqv)),
         "orbit_diagonal": (("batch", "element", "example"), np.stack(diag)),
         "orbit_rank": (("batch", "element"), np.stack(rank).astype(np.int64))},
        coords={"batch": np.arange(len(batches)), "element": labels, "example": np.arange(n)},
        attrs={"pde": spec.name, "damping": float(damping), "energy_tol": float(energy_tol),
               **(attrs or {})},
    )


def symmetry_study(models: Mapping[int, torch.nn.Module], batches: Sequence, *, pde,
                   final_epoch: int, shifts: Sequence[int], box: int = 0, dt: float | None = None,
                   damping: float = 1e-6, energy_tol: float = 1e-4,
                   landscape_step: int | None = None, layers: Sequence[str] | None = None,
                   orbit_epochs: Sequence[int] | None = None, progress: bool = False, attrs: dict | None = None, **engine_kwargs):
    """The study of one seed (module docstring) as an `xr.Dataset`.

    `models`: {checkpoint epoch: model in eval mode} (must hold `final_epoch`); `batches`:
    objects with `.inputs`, `.targets` `[N, C, H, W]` and `.c` `[N]` class labels of
    consecutive transitions; `pde`: "CE", "NS" or a PDESpec; `shifts`: positive shift sizes in
    grid cells; `box`: the box grid of joint shifts (a, b), 1 <= a, b <= box, added to the
    elements (`study_elements`); `dt`: snapshot spacing (compressible PDEs' axis check); `landscape_step`: grid
    stride of the 2D shift landscape (default n // 8, at least 1); `layers`: modules of the
    layer-wise Lie derivative (default every leaf module with field input and output);
    `orbit_epochs`: checkpoints at which the tracked orbit diagonals are computed (default all;
    the others hold NaN in `orbit_diagonal_epochs`: one hat matrix per element and epoch is the
    study's main cost).
    """
    import xarray as xr

    spec = resolve_spec(pde)
    if final_epoch not in models:
        raise InputError(f"models: no model for the final epoch {final_epoch} (have {sorted(models)})")
    if not batches:
        raise InputError("batches: at least one batch is required")
    if spec.compressible and (dt is None or not dt > 0):
        raise InputError(f"dt: a positive snapshot spacing is required for {spec.name}")
    elements = study_elements(shifts, box)
    labels = [element_label(g) for g in elements]
    model = models[final_epoch]
    n_grid = min(batches[0].inputs.shape[-2:])
    step = int(landscape_step) if landscape_step else max(1, n_grid // 8)

    final = final_orbit_study(model, batches, pde=spec, elements=elements, damping=damping,
                              energy_tol=energy_tol, progress=progress, **engine_kwargs)
    eqv, diag = final["equivariance"].values, final["orbit_diagonal"].values
    per_batch = _per_batch_measures(model, batches, spec, dt=dt, step=step, layers=layers,
                                    progress=progress)
    worst = _worst_d4(eqv, labels)
    tracked = ["e", worst, ("shift", 1, 0)]
    epochs = sorted(int(e) for e in models)
    x, y = batches[0].inputs, batches[0].targets
    lie_e, eqv_e, diag_e = _tracked_across_epochs(
        models, x, y, tracked, spec, final_epoch=final_epoch,
        final_lie=per_batch["lie"][0], final_diagonal=diag[0], labels=labels,
        orbit_epochs=orbit_epochs, damping=damping, energy_tol=energy_tol, progress=progress,
        **engine_kwargs)
    eqv_auth, lie, layer = per_batch["eqv_auth"], per_batch["lie"], per_batch["layer"]
    axis_c, landscape, curves = per_batch["axis_c"], per_batch["landscape"], per_batch["curves"]
    layer_names, ys, xs = per_batch["layer_names"], per_batch["ys"], per_batch["xs"]

    n_batches, n = len(batches), x.shape[0]
    n_axis = max(x.shape[-2:])
    ds = xr.Dataset(
        {
            "equivariance": final["equivariance"],
            "equivariance_authors": (("batch", "d4", "example"), np.stack(eqv_auth)),
            "orbit_diagonal": final["orbit_diagonal"],
            "orbit_rank": final["orbit_rank"],
            "lie_norm": (("batch", "generator", "example"), np.stack(lie)),
            "lie_layer_norm": (("batch", "layer", "example"), np.stack(layer)),
            "axis_check": (("batch", "assignment"), np.asarray(axis_c, dtype=np.float64)),
            "shift_axis_error": (("batch", "axis", "shift", "example"), np.stack(curves)),
            "shift_landscape": (("batch", "shift_y", "shift_x"), np.stack(landscape)),
            "lie_norm_epochs": (("epoch", "generator", "example"), np.stack(lie_e)),
            "equivariance_epochs": (("epoch", "tracked", "example"), np.stack(eqv_e)),
            "orbit_diagonal_epochs": (("epoch", "tracked", "example"), np.stack(diag_e)),
            "worst_d4_index": ((), np.int64(ELEMENTS.index(worst))),
        },
        coords={
            "batch": np.arange(n_batches), "element": labels, "d4": list(ELEMENTS),
            "example": np.arange(n), "generator": list(GENERATORS), "layer": layer_names,
            "assignment": ["ours", "swapped"], "axis": ["y", "x"], "shift": np.arange(n_axis),
            "shift_y": ys, "shift_x": xs, "epoch": epochs, "tracked": list(TRACKED),
        },
        attrs={"pde": spec.name, "final_epoch": int(final_epoch), "worst_d4": worst,
               "damping": float(damping), "energy_tol": float(energy_tol),
               "landscape_step": step, "lie_units": "x, y: per grid cell; rotation: per radian",
               **(attrs or {})},
    )
    return ds


def _per_batch_measures(model, batches, spec, *, dt, step: int, layers, progress: bool) -> dict:
    """At the final checkpoint, per batch: the authors' D4 equivariance, the Lie derivative
    norms (total and per layer), the axis-assignment check, the 2D shift landscape and the
    per-axis shift curves (lists over batches, keyed as `symmetry_study` stores them)."""
    out = {k: [] for k in ("eqv_auth", "lie", "layer", "axis_c", "landscape", "curves")}
    out["layer_names"] = None
    for b in tqdm(batches, desc=f"symmetry {spec.name}", disable=not progress, leave=False):
        x, y = b.inputs, b.targets
        out["eqv_auth"].append(_equivariance(model, x, y, ELEMENTS, spec, convention="authors"))
        out["lie"].append(_lie_norms(model, x, spec))
        dec = lie_derivative(model, x, "x", pde=spec, layerwise=True, layers=layers)
        norms = {k: v.double().cpu().numpy() for k, v in dec.norms().items() if k != "total"}
        out["layer_names"] = out["layer_names"] or list(norms)
        out["layer"].append(np.stack([norms[k] for k in out["layer_names"]]))
        check = _axis_check(x, y, b.c, spec, dt)
        out["axis_c"].append([check["ours"], check["swapped"]])
        out["ys"], out["xs"], land = _landscape(model, x, y, spec, step)
        out["landscape"].append(land)
        out["curves"].append(_axis_curves(model, x, y, spec))
    return out


def _worst_d4(equivariance: np.ndarray, labels: Sequence[str]):
    """The D4 element (not the identity) with the largest upper quartile of the equivariance
    error over batches x examples; `equivariance` `[batch, element, example]`."""
    d4_idx = [labels.index(g) for g in D4_NON_IDENTITY]
    q3 = np.quantile(equivariance[:, d4_idx].transpose(1, 0, 2).reshape(len(d4_idx), -1), 0.75, axis=1)
    return D4_NON_IDENTITY[int(np.argmax(q3))]


def _tracked_across_epochs(models, x, y, tracked, spec, *, final_epoch: int, final_lie,
                           final_diagonal, labels, orbit_epochs, damping: float,
                           energy_tol: float, progress: bool, **engine_kwargs):
    """Per checkpoint on batch 0: Lie norms `[generator, example]`, equivariance of the tracked
    elements `[tracked, example]` and their orbit diagonals `[tracked, example]` (NaN at epochs
    outside `orbit_epochs`). The final checkpoint reuses what the final-epoch study computed."""
    tracked_labels = [element_label(g) for g in tracked]
    lie_e, eqv_e, diag_e = [], [], []
    for epoch in tqdm(sorted(int(e) for e in models), desc="checkpoints", disable=not progress,
                      leave=False):
        m = models[epoch]
        lie_e.append(final_lie if epoch == final_epoch else _lie_norms(m, x, spec))
        eqv_e.append(_equivariance(m, x, y, tracked, spec))
        if epoch == final_epoch and tracked_labels[2] in labels:
            diag_e.append(np.stack([final_diagonal[labels.index(t)] for t in tracked_labels]))
            continue
        if orbit_epochs is not None and epoch not in orbit_epochs and epoch != final_epoch:
            diag_e.append(np.full((len(tracked), x.shape[0]), np.nan))
            continue
        orbit = orbit_influence(m, x, y, tracked, pde=spec, damping=damping,
                                energy_tol=energy_tol, **engine_kwargs)
        diag_e.append(orbit["diagonal"].values)
    return lie_e, eqv_e, diag_e
