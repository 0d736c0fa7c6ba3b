"""The symmetry study of one training seed (follow-up section 7 + the Lie derivative) as one
xarray Dataset (pure: models and batches in, arrays out). At the final checkpoint, per batch:
`equivariance`, `orbit_diagonal` (batch, element, example) and `orbit_rank` for the elements of
`study_elements`; `equivariance_authors` (batch, d4, example) under the authors' convention;
`lie_norm` (batch, generator, example) and `lie_layer_norm` (batch, layer, example; plus
"remainder") of the x-translation Lie derivative; `shift_axis_error` (batch, axis, shift,
example) for every circular shift along "y" and "x"; `shift_landscape` (batch, shift_y,
shift_x): Q3 over examples on a grid of shifts; `axis_check` (batch, assignment). Across
checkpoints, on the first batch, for `TRACKED` ("e", the seed's worst D4 element by Q3 at the
final checkpoint, `worst_d4_index` into `d4`, and ("shift", 1, 0)): `lie_norm_epochs`,
`equivariance_epochs`, `orbit_diagonal_epochs`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pdeinf.errors import InputError
from pdeinf.symmetry.actions import ELEMENTS, axis_assignment_check, resolve_spec
from pdeinf.symmetry.equivariance import equivariance_error
from pdeinf.symmetry.lie import GENERATORS, lie_derivative, rms
from pdeinf.symmetry.orbit import element_label, orbit_influence

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
    return ["e", *D4_NON_IDENTITY, *(g for a in shifts for g in (("shift", a, 0), ("shift", 0, a))),
            *(("shift", a, b) for a in range(1, box + 1) for b in range(1, box + 1))]


def class_trajectories(inputs: torch.Tensor, targets: torch.Tensor, c) -> torch.Tensor:
    """Trajectories `[K, T, C, H, W]` of an influence batch whose examples are consecutive
    transitions per class `c` (n = c * (T - 1) + t): the inputs then the last target."""
    c = np.asarray(c)
    return torch.stack([torch.cat([inputs[idx], targets[idx[-1:]]]) for idx in
                        (torch.as_tensor(np.flatnonzero(c == k)) for k in np.unique(c))])


def _equivariance(model, inputs, targets, elements, spec, convention="ours") -> np.ndarray:
    return np.stack([np.ones(inputs.shape[0]) if g == "e" else
                     equivariance_error(model, inputs, targets, g, pde=spec,
                                        convention=convention).double().cpu().numpy()
                     for g in elements])


def _lie_norms(model, inputs, spec) -> np.ndarray:
    return np.stack([rms(lie_derivative(model, inputs, gen, pde=spec)).double().cpu().numpy()
                     for gen in GENERATORS])


def _landscape(model, inputs, targets, spec, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifts along H and W every `step` cells and the Q3 over examples of their errors."""
    ys, xs = np.arange(0, inputs.shape[-2], step), np.arange(0, inputs.shape[-1], step)
    q3 = [float(torch.quantile(equivariance_error(model, inputs, targets, ("shift", int(a), int(b)),
                                                  pde=spec).double(), 0.75)) if a or b else 1.0
          for a in ys for b in xs]
    return ys, xs, np.reshape(q3, (len(ys), len(xs)))


def _axis_curves(model, inputs, targets, spec) -> np.ndarray:
    """`[axis, shift, example]`: errors of every shift along H, then W (NaN past a short axis)."""
    out = np.full((2, max(inputs.shape[-2:]), inputs.shape[0]), np.nan)
    for ax, size in enumerate(inputs.shape[-2:]):
        out[ax, :size] = _equivariance(model, inputs, targets, ["e"] + [
            ("shift", a, 0) if ax == 0 else ("shift", 0, a) for a in range(1, size)], spec)
    return out


def final_orbit_study(model: torch.nn.Module, batches: Sequence, *, pde,
                      elements: Sequence | None = None, damping: float = 1e-6,
                      energy_tol: float = 1e-4, progress: bool = False,
                      attrs: dict | None = None, **engine_kwargs):
    """`symmetry_study`'s `equivariance`, `orbit_diagonal` and `orbit_rank` alone, of one model
    on `batches` for `elements` (default: "e" and the 7 non-identity D4 elements)."""
    spec = resolve_spec(pde)
    if not batches:
        raise InputError("batches: at least one batch is required")
    elements = ["e", *D4_NON_IDENTITY] if elements is None else list(elements)
    eqv, diag, rank = [], [], []
    for b in tqdm(batches, desc=f"orbit {spec.name}", disable=not progress, leave=False):
        eqv.append(_equivariance(model, b.inputs, b.targets, elements, spec))
        orbit = orbit_influence(model, b.inputs, b.targets, elements, pde=spec, damping=damping,
                                energy_tol=energy_tol, **engine_kwargs)
        diag.append(orbit["diagonal"].values)
        rank.append(orbit["rank"].values)
    return xr.Dataset(
        {"equivariance": (("batch", "element", "example"), np.stack(eqv)),
         "orbit_diagonal": (("batch", "element", "example"), np.stack(diag)),
         "orbit_rank": (("batch", "element"), np.stack(rank).astype(np.int64))},
        coords={"batch": np.arange(len(batches)), "element": [element_label(g) for g in elements],
                "example": np.arange(batches[0].inputs.shape[0])},
        attrs={"pde": spec.name, "damping": float(damping), "energy_tol": float(energy_tol),
               **(attrs or {})},
    )


def symmetry_study(models: Mapping[int, torch.nn.Module], batches: Sequence, *, pde,
                   final_epoch: int, shifts: Sequence[int], box: int = 0, dt: float | None = None,
                   damping: float = 1e-6, energy_tol: float = 1e-4,
                   landscape_step: int | None = None, layers: Sequence[str] | None = None,
                   orbit_epochs: Sequence[int] | None = None, progress: bool = False,
                   attrs: dict | None = None, **engine_kwargs):
    """The study of one seed (module docstring) as an `xr.Dataset`.

    `models`: {checkpoint epoch: model in eval mode}, with `final_epoch`; `batches`: with
    `.inputs`, `.targets` `[N, C, H, W]` and `.c` `[N]` class labels of consecutive
    transitions; `shifts`, `box`: see `study_elements` (grid cells); `dt`: snapshot spacing
    (compressible PDEs); `landscape_step`: default n // 8; `layers`: hooked modules of the Lie
    derivative (default `lie_derivative`'s); `orbit_epochs`: checkpoints with tracked orbit
    diagonals (default all; NaN elsewhere).
    """
    spec = resolve_spec(pde)
    if final_epoch not in models:
        raise InputError(f"models: no model for the final epoch {final_epoch} (have {sorted(models)})")
    if spec.compressible and (dt is None or not dt > 0):
        raise InputError(f"dt: a positive snapshot spacing is required for {spec.name}")
    elements = study_elements(shifts, box)
    labels = [element_label(g) for g in elements]
    model = models[final_epoch]
    final = final_orbit_study(model, batches, pde=spec, elements=elements, damping=damping,
                              energy_tol=energy_tol, progress=progress, **engine_kwargs)
    step = int(landscape_step) if landscape_step else max(1, min(batches[0].inputs.shape[-2:]) // 8)
    per_batch, found = _per_batch_measures(model, batches, spec, dt=dt, step=step, layers=layers,
                                           progress=progress)
    # the worst D4 element: the largest Q3 over batches x examples
    d4 = final["equivariance"].values[:, [labels.index(g) for g in D4_NON_IDENTITY]]
    worst = D4_NON_IDENTITY[int(np.argmax(np.quantile(
        d4.transpose(1, 0, 2).reshape(len(D4_NON_IDENTITY), -1), 0.75, axis=1)))]
    # across checkpoints on batch 0 (the final one reuses what was computed)
    x, y = batches[0].inputs, batches[0].targets
    tracked = ["e", worst, ("shift", 1, 0)]
    tracked_labels = [element_label(g) for g in tracked]
    epochs = sorted(int(e) for e in models)
    lie_e, eqv_e, diag_e = [], [], []
    for epoch in tqdm(epochs, desc="checkpoints", disable=not progress, leave=False):
        m = models[epoch]
        lie_e.append(per_batch["lie_norm"][1][0] if epoch == final_epoch else _lie_norms(m, x, spec))
        eqv_e.append(_equivariance(m, x, y, tracked, spec))
        if epoch == final_epoch and tracked_labels[2] in labels:
            diag = final["orbit_diagonal"].values[0]
            diag_e.append(np.stack([diag[labels.index(t)] for t in tracked_labels]))
        elif orbit_epochs is not None and epoch not in orbit_epochs and epoch != final_epoch:
            diag_e.append(np.full((len(tracked), x.shape[0]), np.nan))
        else:
            diag_e.append(orbit_influence(m, x, y, tracked, pde=spec, damping=damping,
                                          energy_tol=energy_tol, **engine_kwargs)["diagonal"].values)
    return xr.Dataset(
        {"equivariance": final["equivariance"],
         "equivariance_authors": per_batch.pop("equivariance_authors"),
         "orbit_diagonal": final["orbit_diagonal"], "orbit_rank": final["orbit_rank"], **per_batch,
         "lie_norm_epochs": (("epoch", "generator", "example"), np.stack(lie_e)),
         "equivariance_epochs": (("epoch", "tracked", "example"), np.stack(eqv_e)),
         "orbit_diagonal_epochs": (("epoch", "tracked", "example"), np.stack(diag_e)),
         "worst_d4_index": ((), np.int64(ELEMENTS.index(worst)))},
        coords={"batch": np.arange(len(batches)), "element": labels, "d4": list(ELEMENTS),
                "example": np.arange(x.shape[0]), "generator": list(GENERATORS),
                "layer": found["layer"], "assignment": ["ours", "swapped"], "axis": ["y", "x"],
                "shift": np.arange(max(x.shape[-2:])), "shift_y": found["shift_y"],
                "shift_x": found["shift_x"], "epoch": epochs, "tracked": list(TRACKED)},
        attrs={"pde": spec.name, "final_epoch": int(final_epoch), "worst_d4": worst,
               "damping": float(damping), "energy_tol": float(energy_tol),
               "landscape_step": step, "lie_units": "x, y: per grid cell; rotation: per radian",
               **(attrs or {})})


#: The final checkpoint's other per-batch variables and their dims.
_PER_BATCH = {"equivariance_authors": ("batch", "d4", "example"),
              "lie_norm": ("batch", "generator", "example"),
              "lie_layer_norm": ("batch", "layer", "example"), "axis_check": ("batch", "assignment"),
              "shift_axis_error": ("batch", "axis", "shift", "example"),
              "shift_landscape": ("batch", "shift_y", "shift_x")}


def _per_batch_measures(model, batches, spec, *, dt, step: int, layers, progress: bool):
    """`_PER_BATCH` as `{name: (dims, array)}` and the coordinates they define (`layer`,
    `shift_y`, `shift_x`)."""
    rows = {name: [] for name in _PER_BATCH}
    found: dict = {}
    for b in tqdm(batches, desc=f"symmetry {spec.name}", disable=not progress, leave=False):
        x, y = b.inputs, b.targets
        rows["equivariance_authors"].append(_equivariance(model, x, y, ELEMENTS, spec, convention="authors"))
        rows["lie_norm"].append(_lie_norms(model, x, spec))
        dec = lie_derivative(model, x, "x", pde=spec, layerwise=True, layers=layers)
        norms = {k: v.double().cpu().numpy() for k, v in dec.norms().items() if k != "total"}
        found["layer"] = found.get("layer") or list(norms)
        rows["lie_layer_norm"].append(np.stack([norms[k] for k in found["layer"]]))
        check = (axis_assignment_check(class_trajectories(x, y, b.c).double(), spec, dt=dt)
                 if spec.compressible else axis_assignment_check(x.double(), spec))
        rows["axis_check"].append([check["ours"], check["swapped"]])
        found["shift_y"], found["shift_x"], land = _landscape(model, x, y, spec, step)
        rows["shift_landscape"].append(land)
        rows["shift_axis_error"].append(_axis_curves(model, x, y, spec))
    return {name: (_PER_BATCH[name], np.stack(v)) for name, v in rows.items()}, found
