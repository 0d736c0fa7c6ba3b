"""Cheap checks before long work: physical validation of data files, and the size of a
generation request.

Data (`validate_dataset`, `validate_reader`): every value of every PDEGym file is read once,
a block of samples at a time, and checked:

- dtype float32 or float64 (an int16 rewrite of a file is refused, it would silently quantise);
- every value finite;
- positive where physics requires it (`POSITIVE_VARIABLES`: density, pressure, total energy of
  the compressible gas);
- magnitude not absurd: |value| <= `ABSURD_FACTOR` x the variable's scale in the released
  PDEGym data, scale = max over the PDE's classes of |mean| + std (`PLAUSIBLE_BOUNDS`, from
  `pdeinf.data.statistics.PDEGYM_STATISTICS`). With the factor 1e4 the bounds are CE
  rho 1.8e4, vx/vy 2.8e3, p 7.5e3, E 2.0e4, NS u/v 6.1e3: four orders of magnitude above
  the data, far above anything the stated initial-condition ranges can produce (even the
  appendix's CE-RPUI states v ~ U[-10, 10], p ~ U[5, 7] stay below 1e3 after the strongest
  shocks), so only corrupted or mis-scaled files trip them.

A file passes once per content: its content key (`pdeinf.data.fingerprint`) is tagged as
validated in memory and, given `cache`, in that JSON file, so a later run skips it.

Generation: `check_generation_request`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from pdeinf.checks import positive_int
from pdeinf.config import MIN_RESOLUTION, PDE_SPECS, pde_spec
from pdeinf.errors import InputError
from pdeinf.storage import existing_ancestor, probe_writable

VALIDATION_VERSION = 1  # bump when the rules change: cached passes are then re-checked
_TAG = f"validated-v{VALIDATION_VERSION}"
#: Stored variables that must be strictly positive where present.
POSITIVE_VARIABLES: tuple[str, ...] = ("rho", "p", "E")
ABSURD_FACTOR = 1.0e4
#: Stored variable -> quantity of the PDEGym statistics table giving its scale.
_STATISTIC_OF = {"rho": "rho", "vx": "vx", "vy": "vy", "p": "p", "u": "vx", "v": "vy"}


def _plausible_bounds() -> dict[str, dict[str, float]]:
    from pdeinf.data.statistics import PDEGYM_STATISTICS

    bounds: dict[str, dict[str, float]] = {}
    for pde, spec in PDE_SPECS.items():
        scale: dict[str, float] = {}
        for name in spec.stored_variables:
            quantity = _STATISTIC_OF.get(name)
            values = [abs(stats[quantity][0]) + stats[quantity][1]
                      for cls in spec.classes
                      for stats in [PDEGYM_STATISTICS.get(cls, {})] if quantity in stats]
            if values:
                scale[name] = max(values)
        if spec.compressible and "E" in spec.stored_variables:
            # E = p / (gamma - 1) + rho |v|^2 / 2 at the scales above
            scale["E"] = scale["p"] / (spec.gamma - 1.0) + 0.5 * scale["rho"] * (
                scale["vx"] ** 2 + scale["vy"] ** 2)
        bounds[pde] = {name: ABSURD_FACTOR * value for name, value in scale.items()}
    return bounds


#: PDE -> stored variable -> largest plausible |value| (variables without a scale: no bound).
PLAUSIBLE_BOUNDS: dict[str, dict[str, float]] = _plausible_bounds()


# ----------------------------------------------------------------------------- data files

def validate_dataset(source, *, cache: str | os.PathLike | None = None, progress: bool = False,
                     block: int = 4) -> None:
    """Validate every file of `source` (a `PDEData`: its three classes; a `PDEGymReader`; or
    any reader with a `validate()` method), each file once per content. Raises InputError
    naming the file, variable, sample, time and what is wrong. `cache`: JSON file recording
    validated content keys (and content digests) between runs."""
    from pdeinf.data.datasets import PDEData
    from pdeinf.data.pdegym import PDEGymReader

    if isinstance(source, PDEData):
        for cls in source.classes:
            validate_reader(source.reader(cls), cache=cache, progress=progress, block=block)
    elif isinstance(source, PDEGymReader):
        validate_reader(source, cache=cache, progress=progress, block=block)
    elif hasattr(source, "validate"):
        source.validate()
    else:
        raise InputError(f"source: expected a PDEData or a reader, got {type(source).__name__}")


def validate_reader(reader, *, block: int = 4, progress: bool = False,
                    cache: str | os.PathLike | None = None) -> None:
    """Validate each file of a `PDEGymReader` not yet validated (by content key)."""
    from tqdm.auto import tqdm

    from pdeinf.data import fingerprint

    positive_int(block, "block")
    keys = fingerprint.file_keys(reader.paths, cache)
    todo = [(path, key) for path, key in zip(reader.paths, keys) if not fingerprint.has_tag(key, _TAG, cache)]
    if not todo:
        return
    bar = tqdm(total=len(todo), desc=f"validate {Path(reader.source).name}", unit="file", disable=not progress)
    for path, key in todo:
        validate_file(path, block=block)
        fingerprint.add_tag(key, _TAG, cache)
        bar.update(1)
    bar.close()


def validate_file(path: str | os.PathLike, *, block: int = 4) -> None:
    """Check one PDEGym file's values (see the module docstring); InputError on the first
    problem, naming file, variable, stored channel, sample and time."""
    from pdeinf.data.pdegym import _H5_ERRORS, PDEGymReader, _open_h5, _variable

    path = Path(path)
    pde = PDEGymReader._inspect(path)[0]  # structure, incl. dtype
    spec = pde_spec(pde)
    names = spec.stored_variables
    positive = [i for i, name in enumerate(names) if name in POSITIVE_VARIABLES]
    bounds = PLAUSIBLE_BOUNDS.get(pde, {})
    bounded = [(i, bounds[name]) for i, name in enumerate(names) if name in bounds]
    with _open_h5(path) as handle:
        variable = spec.file_kind
        dataset = _variable(handle, variable, path)
        if dataset.dtype.kind != "f" or dataset.dtype.itemsize not in (4, 8):
            raise InputError(f"{path}: variable {variable!r} has dtype {dataset.dtype}; expected float32 or float64")
        n_samples = dataset.shape[0]
        for start in range(0, n_samples, block):
            stop = min(start + block, n_samples)
            try:
                values = np.asarray(dataset[start:stop])  # [b, T, C, X, Y]
            except _H5_ERRORS as err:
                raise InputError(
                    f"{path}: cannot read samples {start}..{stop - 1} of {variable!r} ({err}); truncated or corrupt?"
                ) from None
            where = f"{path}: variable {variable!r}"
            _first_bad(~np.isfinite(values), start, names, where, lambda c: "is NaN or Inf", values)
            for c in positive:
                _first_bad(values[:, :, c:c + 1] <= 0, start, names, where,
                           lambda _, c=c: "must be positive", values, offset=c)
            for c, bound in bounded:
                _first_bad(np.abs(values[:, :, c:c + 1]) > bound, start, names, where,
                           lambda _, bound=bound: (f"|value| exceeds the plausibility bound {bound:.3g} "
                                                   f"({ABSURD_FACTOR:g} x the released PDEGym scale)"),
                           values, offset=c)


def _first_bad(mask: np.ndarray, start: int, names, where: str, what, values, offset: int = 0) -> None:
    """Raise for the first True of `mask` `[b, T, c, X, Y]` (channels from `offset`)."""
    per = mask.reshape(*mask.shape[:3], -1).any(axis=-1)  # [b, T, c]
    if not per.any():
        return
    s, t, c = (int(i) for i in np.argwhere(per)[0])
    channel = offset + c
    x, y = (int(i) for i in np.argwhere(mask[s, t, c])[0])
    value = values[s, t, channel, x, y]
    raise InputError(
        f"{where}, channel {names[channel]!r}, sample {start + s}, time {t}, x {x}, y {y}: "
        f"value {value:.6g} {what(channel)}"
    )


# ----------------------------------------------------------------------------- generation

#: CPU cost of the look-alike generator per trajectory per solver grid size cubed (cells x
#: CFL steps ~ Rs^3). Measured with OMP_NUM_THREADS=1 on one core of the development machine,
#: 2 trajectories per batch: 2.4e-6 (CE-RP, Rs 64) to 9.6e-6 (CE-RPUI, Rs 32) s / Rs^3; the
#: fastest is used so that the time estimate is a lower bound.
SECONDS_PER_TRAJECTORY_RS3 = 2.0e-6
#: Assumed GPU speed-up over one CPU core, to keep the estimate a lower bound.
GPU_SPEEDUP = 100.0
MAX_GENERATION_HOURS = 10_000.0  # more than a year of compute: surely a typo
_GIB = 1024**3


def estimate_generation(pde: str, *, n_trajectories: int, resolution: int, solver_resolution: int,
                        batch_size: int, itemsize: int, device_type: str = "cpu",
                        n_times: int = 21) -> dict[str, float]:
    """Lower-bound estimates of a request: `output_bytes` (float32 files), `memory_bytes`
    (one batch of solver trajectories `[b, T, C, Rs, Rs]` in the solver dtype) and `hours`."""
    spec = pde_spec(pde)
    output = float(n_trajectories) * n_times * len(spec.stored_variables) * resolution**2 * 4
    memory = float(min(batch_size, n_trajectories)) * n_times * spec.channels * float(solver_resolution) ** 2 * itemsize
    seconds = float(n_trajectories) * SECONDS_PER_TRAJECTORY_RS3 * float(solver_resolution) ** 3
    if device_type == "cuda":
        seconds /= GPU_SPEEDUP
    return {"output_bytes": output, "memory_bytes": memory, "hours": seconds / 3600.0}


def check_output_dir(out_dir: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """InputError unless `out_dir` (and `target` inside it) is, or can be created as, a
    writable directory. Returns the nearest existing ancestor (for disk-space checks)."""
    out_dir = Path(out_dir)
    for path in (out_dir, target):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise InputError(f"--out {path}: exists and is not a directory")
    anchor = existing_ancestor(Path(target) if target is not None else out_dir)
    if not anchor.is_dir():
        raise InputError(f"--out {out_dir}: {anchor} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK) or probe_writable(anchor) is not None:
        raise InputError(f"--out {out_dir}: directory {anchor} is not writable")
    return anchor


def _memory_limit(device) -> tuple[float, str]:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return float(torch.cuda.get_device_properties(device).total_memory), f"GPU memory of {device}"
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "physical memory"
    except (ValueError, OSError, AttributeError):
        return float("inf"), "memory"


def check_generation_request(pde: str, *, n_trajectories: int, resolution: int, solver_resolution: int,
                             batch_size: int, dtype, device, out_dir, target=None, n_times: int = 21,
                             existing_bytes: float = 0.0) -> dict[str, float]:
    """Refuse (InputError, one line) a generation request that cannot succeed, before any
    work: resolution below `MIN_RESOLUTION`; `out_dir` not a writable directory; estimated
    output larger than the free disk; one solver batch larger than RAM / GPU memory; estimated
    time above `MAX_GENERATION_HOURS`. Returns the estimates."""
    if resolution < MIN_RESOLUTION:
        raise InputError(
            f"resolution={resolution}: must be at least {MIN_RESOLUTION} (the smallest grid the surrogates accept)"
        )
    anchor = check_output_dir(out_dir, target)
    itemsize = getattr(dtype, "itemsize", 8)
    device_type = getattr(device, "type", str(device))
    estimate = estimate_generation(pde, n_trajectories=n_trajectories, resolution=resolution,
                                   solver_resolution=solver_resolution, batch_size=batch_size,
                                   itemsize=itemsize, device_type=device_type, n_times=n_times)
    problems = []
    free = float(shutil.disk_usage(anchor).free) + float(existing_bytes)
    if estimate["output_bytes"] > free:
        problems.append(f"output {estimate['output_bytes'] / _GIB:.3g} GiB "
                        f"({n_trajectories} x {n_times} x {len(pde_spec(pde).stored_variables)} x {resolution}^2 float32) "
                        f"> {free / _GIB:.3g} GiB free on {anchor}")
    limit, what = _memory_limit(device)
    if estimate["memory_bytes"] > limit:
        problems.append(f"one solver batch needs {estimate['memory_bytes'] / _GIB:.3g} GiB "
                        f"({min(batch_size, n_trajectories)} x {n_times} snapshots at {solver_resolution}^2) "
                        f"> {limit / _GIB:.3g} GiB {what}")
    if estimate["hours"] > MAX_GENERATION_HOURS:
        rate = SECONDS_PER_TRAJECTORY_RS3 * solver_resolution**3 / (GPU_SPEEDUP if device_type == "cuda" else 1.0)
        problems.append(f"estimated {estimate['hours']:.3g} hours ({rate:.3g} s per trajectory at "
                        f"{solver_resolution}^2 on {device_type}) > {MAX_GENERATION_HOURS:g} h")
    if problems:
        raise InputError(
            f"data generate {pde}: request too large (n_trajectories={n_trajectories}, resolution={resolution}, "
            f"solver_resolution={solver_resolution}): " + "; ".join(problems)
        )
    return estimate
