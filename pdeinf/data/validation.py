"""Cheap checks before long work: physical validation of data files, and the size of a
generation request.

Every value of a PDEGym file is checked once per content (content key tagged as validated,
in memory and optionally in a JSON `cache`): float32/float64 dtype, finite, positive where
physics requires (`POSITIVE_VARIABLES`), and |value| <= `ABSURD_FACTOR` x the variable's scale
in the released PDEGym data (`PLAUSIBLE_BOUNDS`, from `pdeinf.data.statistics`): four orders
of magnitude above the data, so only corrupted or mis-scaled files trip them.
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


def validate_dataset(source, *, cache: str | os.PathLike | None = None, progress: bool = False,
                     block: int = 4) -> None:
    """Validate every file of `source` (a `PDEData`, a `PDEGymReader`, or any reader with a
    `validate()` method), each file once per content. InputError naming the file, variable,
    sample, time and what is wrong. `cache`: JSON file of validated content keys."""
    from pdeinf.data.datasets import PDEData
    from pdeinf.data.pdegym import PDEGymReader

    if isinstance(source, PDEData):
        readers = [source.reader(cls) for cls in source.classes]
    elif isinstance(source, PDEGymReader):
        readers = [source]
    elif hasattr(source, "validate"):
        return source.validate()
    else:
        raise InputError(f"source: expected a PDEData or a reader, got {type(source).__name__}")
    for reader in readers:
        validate_reader(reader, cache=cache, progress=progress, block=block)


def validate_reader(reader, *, block: int = 16, progress: bool = False,
                    cache: str | os.PathLike | None = None) -> None:
    """Validate each file of a `PDEGymReader` not yet validated (by content key), `block`
    samples at a time; `cache`: JSON file of validated content keys."""
    from tqdm.auto import tqdm

    from pdeinf.data import fingerprint

    positive_int(block, "block")
    keys = fingerprint.file_keys(reader.paths, cache)
    todo = [(path, key) for path, key in zip(reader.paths, keys)
            if not fingerprint.has_tag(key, _TAG, cache)]
    for path, key in tqdm(todo, desc=f"validate {Path(reader.source).name}", unit="file",
                          disable=not progress or not todo):
        validate_file(path, block=block)
        fingerprint.add_tag(key, _TAG, cache)


def validate_file(path: str | os.PathLike, *, block: int = 4) -> None:
    """Check one PDEGym file's values (module docstring); InputError on the first problem,
    naming file, variable, stored channel, sample and time."""
    from pdeinf.data.pdegym import _H5_ERRORS, PDEGymReader, _open_h5, _variable

    path = Path(path)
    pde = PDEGymReader._inspect(path)[0]  # structure, incl. dtype
    names = pde_spec(pde).stored_variables
    bounds = PLAUSIBLE_BOUNDS.get(pde, {})
    bound_note = f"({ABSURD_FACTOR:g} x the released PDEGym scale)"
    variable = pde_spec(pde).file_kind
    with _open_h5(path) as handle:
        dataset = _variable(handle, variable, path)
        where = f"{path}: variable {variable!r}"
        for start in range(0, dataset.shape[0], block):
            stop = min(start + block, dataset.shape[0])
            try:
                values = np.asarray(dataset[start:stop])  # [b, T, C, X, Y]
            except _H5_ERRORS as err:
                raise InputError(f"{path}: cannot read samples {start}..{stop - 1} of {variable!r} ({err}); "
                                 "truncated or corrupt?") from None
            checks = [(~np.isfinite(values), 0, "is NaN or Inf")]
            checks += [(values[:, :, c:c + 1] <= 0, c, "must be positive")
                       for c, name in enumerate(names) if name in POSITIVE_VARIABLES]
            checks += [(np.abs(values[:, :, c:c + 1]) > bounds[name], c,
                        f"|value| exceeds the plausibility bound {bounds[name]:.3g} {bound_note}")
                       for c, name in enumerate(names) if name in bounds]
            for mask, offset, what in checks:
                per = mask.reshape(*mask.shape[:3], -1).any(axis=-1)  # [b, T, c]
                if per.any():
                    s, t, c = (int(i) for i in np.argwhere(per)[0])
                    x, y = (int(i) for i in np.argwhere(mask[s, t, c])[0])
                    raise InputError(f"{where}, channel {names[offset + c]!r}, sample {start + s}, time {t}, "
                                     f"x {x}, y {y}: value {values[s, t, offset + c, x, y]:.6g} {what}")


# ----------------------------------------------------------------------------- generation

#: CPU seconds of the generator per trajectory per (solver grid size)^3 (cells x CFL steps),
#: the fastest measured on one core (CE-RP at 64^2), so the time estimate is a lower bound.
SECONDS_PER_TRAJECTORY_RS3 = 2.0e-6
#: Assumed GPU speed-up over one CPU core, to keep the estimate a lower bound.
GPU_SPEEDUP = 100.0
MAX_GENERATION_HOURS = 10_000.0  # more than a year of compute: surely a typo
_GIB = 1024**3


def check_generation_request(pde: str, *, n_trajectories: int, resolution: int, solver_resolution: int,
                             batch_size: int, dtype, device, out_dir, target=None, n_times: int = 21,
                             existing_bytes: float = 0.0) -> dict[str, float]:
    """Refuse (InputError, one line) a generation request that cannot succeed, before any
    work: resolution below `MIN_RESOLUTION`; `out_dir` (or `target` in it) not a writable
    directory; estimated output larger than the free disk; one solver batch larger than RAM /
    GPU memory; estimated time above `MAX_GENERATION_HOURS`. Returns the lower-bound estimates
    `output_bytes`, `memory_bytes` (one batch `[b, T, C, Rs, Rs]` in `dtype`) and `hours`."""
    if resolution < MIN_RESOLUTION:
        raise InputError(f"resolution={resolution}: must be at least {MIN_RESOLUTION} "
                         "(the smallest grid the surrogates accept)")
    out_dir = Path(out_dir)
    for path in (out_dir, target):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise InputError(f"--out {path}: exists and is not a directory")
    anchor = existing_ancestor(Path(target) if target is not None else out_dir)
    if not anchor.is_dir():
        raise InputError(f"--out {out_dir}: {anchor} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK) or probe_writable(anchor) is not None:
        raise InputError(f"--out {out_dir}: directory {anchor} is not writable")
    device_type = getattr(device, "type", str(device))
    spec = pde_spec(pde)
    speedup = GPU_SPEEDUP if device_type == "cuda" else 1.0
    estimate = {
        "output_bytes": float(n_trajectories) * n_times * len(spec.stored_variables) * resolution**2 * 4,
        "memory_bytes": (float(min(batch_size, n_trajectories)) * n_times * spec.channels
                         * float(solver_resolution) ** 2 * getattr(dtype, "itemsize", 8)),
        "hours": float(n_trajectories) * SECONDS_PER_TRAJECTORY_RS3 * float(solver_resolution) ** 3
        / speedup / 3600.0,
    }
    problems = []
    free = float(shutil.disk_usage(anchor).free) + float(existing_bytes)
    if estimate["output_bytes"] > free:
        problems.append(f"output {estimate['output_bytes'] / _GIB:.3g} GiB ({n_trajectories} x {n_times} x "
                        f"{len(spec.stored_variables)} x {resolution}^2 float32) "
                        f"> {free / _GIB:.3g} GiB free on {anchor}")
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        limit, what = float(torch.cuda.get_device_properties(device).total_memory), f"GPU memory of {device}"
    else:
        try:
            limit, what = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "physical memory"
        except (ValueError, OSError, AttributeError):
            limit, what = float("inf"), "memory"
    if estimate["memory_bytes"] > limit:
        problems.append(f"one solver batch needs {estimate['memory_bytes'] / _GIB:.3g} GiB "
                        f"({min(batch_size, n_trajectories)} x {n_times} snapshots at {solver_resolution}^2) "
                        f"> {limit / _GIB:.3g} GiB {what}")
    if estimate["hours"] > MAX_GENERATION_HOURS:
        problems.append(f"estimated {estimate['hours']:.3g} hours "
                        f"({SECONDS_PER_TRAJECTORY_RS3 * solver_resolution**3 / speedup:.3g} s per "
                        f"trajectory at {solver_resolution}^2 on {device_type}) > {MAX_GENERATION_HOURS:g} h")
    if problems:
        raise InputError(f"data generate {pde}: request too large (n_trajectories={n_trajectories}, "
                         f"resolution={resolution}, solver_resolution={solver_resolution}): "
                         + "; ".join(problems))
    return estimate
