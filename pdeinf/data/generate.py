"""Look-alike PDEGym data: sample initial conditions, run the batched solvers, write the
PDEGym layout.

Each trajectory starts from sample j of `pdeinf.solvers.initial_conditions.sample` for `seed`
on the solver grid (so chunk contents do not depend on the chunk size), is evolved to the 21
snapshot times t = k/20 on the periodic unit square, downsampled to the stored grid
(`downsampling_kind`) and written to `out_dir/NAME/data_K.nc` (CE) or `velocity_K.nc` (NS).
Finished files are skipped on rerun; files are written under a temporary name and renamed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from pdeinf.checks import positive_int
from pdeinf.config import DATASETS, pde_of, pde_spec
from pdeinf.data.pdegym import STORED_CHANNELS, VARIABLE, ChunkWriter, chunk_name, model_to_stored
from pdeinf.data.validation import check_generation_request
from pdeinf.errors import InputError, NumericalError

N_SNAPSHOTS = 21
SNAPSHOT_TIMES = np.arange(N_SNAPSHOTS) / (N_SNAPSHOTS - 1)  # t_k = k/20 on [0, 1]
#: Trajectories per chunk file of the released data (used when chunk_size is None).
PDEGYM_CHUNK_SIZE = {"CE": 715, "NS": 1177}
NS_VISCOSITY = "spectral"
#: Downsampling kinds (see `downsampling_kind`).
BLOCK_AVERAGE, SPECTRAL_TRUNCATION = "block_average", "spectral_truncation"


def block_average(fields: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over `factor x factor` blocks of the last two axes: `[..., H, W] -> [..., H/f, W/f]`."""
    if factor == 1:
        return fields
    *lead, height, width = fields.shape
    blocks = fields.reshape(*lead, height // factor, factor, width // factor, factor)
    return blocks.mean(dim=(-1, -3))


def spectral_truncate(fields: torch.Tensor, resolution: int) -> torch.Tensor:
    """Fourier truncation of periodic fields `[..., Rs, Rs] -> [..., R, R]` (R <= Rs): keeps the
    modes |m| < R/2 (coarse Nyquist dropped), so a spectral constraint such as div u = 0 holds
    on the coarse grid to round-off."""
    from pdeinf.solvers.navier_stokes import _Grid

    if resolution == fields.shape[-2] == fields.shape[-1]:
        return fields
    grid = _Grid(resolution, resolution, (1.0, 1.0), fields.dtype, fields.device)
    return grid.to_physical(grid.truncate(torch.fft.rfft2(fields, norm="forward")))


def downsampling_kind(pde: str) -> str:
    """How the solver grid becomes the stored grid: a block average of the finite-volume cell
    averages of a compressible flow (exact and conservative, BLOCK_AVERAGE), a Fourier
    truncation of the spectral solver's divergence-free velocity (SPECTRAL_TRUNCATION)."""
    return BLOCK_AVERAGE if pde_spec(pde).compressible else SPECTRAL_TRUNCATION


def _solve(pde: str, u0: torch.Tensor) -> torch.Tensor:
    """`[b, C, Rs, Rs] -> [b, 21, C, Rs, Rs]` at t = k/20."""
    spec = pde_spec(pde)
    if spec.compressible:
        from pdeinf.solvers import euler

        return euler.solve(u0, SNAPSHOT_TIMES.tolist(), progress=False, gamma=spec.gamma)
    from pdeinf.solvers import navier_stokes

    # PDEGym/azeban's smooth-cutoff spectral viscosity, eps_N = 0.05 / N on the solver grid
    return navier_stokes.solve(u0, SNAPSHOT_TIMES.tolist(), progress=False, viscosity=NS_VISCOSITY)


def _existing_is_complete(path: Path, expected: dict, n_samples: int, resolution: int) -> bool:
    """True if `path` is a finished chunk of this very request; InputError if it is a chunk of
    a different request (refusing to mix data sets silently)."""
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as handle:
            found = {key: handle.attrs.get(key) for key in expected}
            shape = tuple(handle[VARIABLE[expected["pde"]]].shape)
    except (OSError, KeyError, RuntimeError, ValueError) as err:  # h5py's errors on a damaged file
        raise InputError(f"{path}: exists but cannot be read ({err}); delete it to regenerate") from None
    for key, value in found.items():  # netCDF attributes come back as bytes or length-1 arrays
        if isinstance(value, bytes):
            found[key] = value.decode()
        elif isinstance(value, np.ndarray) and value.size == 1:
            found[key] = value.reshape(()).item()
    wanted_shape = (n_samples, N_SNAPSHOTS, len(STORED_CHANNELS[expected["pde"]]), resolution, resolution)
    mismatched = [key for key in expected if str(found[key]) != str(expected[key])]
    if mismatched or shape != wanted_shape:
        raise InputError(
            f"{path}: exists from a different request ({', '.join(mismatched) or 'shape'} differ: "
            f"found {found} {shape}, wanted {expected} {wanted_shape}); delete it or use another --out"
        )
    return True


def generate(dataset: str, n_trajectories: int, resolution: int, out_dir: str | os.PathLike, *,
             seed: int = 0, solver_resolution: int | None = None, chunk_size: int | None = None,
             batch_size: int = 8, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float64, progress: bool = True) -> list[Path]:
    """Generate `n_trajectories` trajectories of `dataset` (e.g. "CE-RP") at `resolution`^2 into
    `out_dir/dataset/`; returns the chunk paths.

    The solver runs at `solver_resolution` (default 2 x resolution, a multiple of it) on
    `device` in `dtype`, `batch_size` trajectories at a time; `chunk_size` trajectories per file
    (default PDEGym's 715 CE / 1177 NS, capped at n_trajectories). Arguments are checked before
    any work (InputError; `validation.check_generation_request`). A solver failure raises
    NumericalError naming the data set, chunk and trajectories; finished chunks stay, and
    rerunning resumes.
    """
    from tqdm.auto import tqdm

    if dataset not in DATASETS:
        raise InputError(f"dataset={dataset!r}: unknown data set; expected one of {', '.join(DATASETS)}")
    n_trajectories = positive_int(n_trajectories, "n_trajectories")
    resolution = positive_int(resolution, "resolution")
    solver_resolution = positive_int(
        2 * resolution if solver_resolution is None else solver_resolution, "solver_resolution")
    if solver_resolution % resolution:
        raise InputError(
            f"solver_resolution={solver_resolution}: must be a multiple of resolution={resolution} "
            "(the stored grid is a block average or spectral truncation of the solver grid)")
    pde = pde_of(dataset)
    chunk_size = positive_int(
        min(n_trajectories, PDEGYM_CHUNK_SIZE[pde]) if chunk_size is None else chunk_size, "chunk_size")
    batch_size = positive_int(batch_size, "batch_size")
    seed = positive_int(seed, "seed", minimum=0)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device={device!r}: not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device}: CUDA is not available here")
    target = Path(out_dir) / dataset
    check_generation_request(
        pde, n_trajectories=n_trajectories, resolution=resolution, solver_resolution=solver_resolution,
        batch_size=batch_size, dtype=dtype, device=device, out_dir=out_dir, target=target,
        n_times=N_SNAPSHOTS,
        existing_bytes=sum(p.stat().st_size for p in target.glob("*.nc")) if target.is_dir() else 0,
    )
    factor = solver_resolution // resolution
    if downsampling_kind(pde) == BLOCK_AVERAGE:
        downsampling = f"{factor}x{factor} block average of the solver grid"
    else:
        downsampling = (f"spectral truncation of the {solver_resolution}x{solver_resolution} solver grid "
                        f"to the modes of the {resolution}x{resolution} grid (Nyquist dropped)")
    # the downsampling is part of the request: files from the old NS block average are refused
    expected = {"pde": pde, "dataset": dataset, "seed": seed, "solver_resolution": solver_resolution,
                "downsampling": downsampling}
    spec = pde_spec(pde)
    physics = {"gamma": spec.gamma} if spec.compressible else {"viscosity": NS_VISCOSITY}
    ranges = [(start, min(start + chunk_size, n_trajectories))
              for start in range(0, n_trajectories, chunk_size)]
    paths = [target / chunk_name(pde, k) for k in range(len(ranges))]
    todo = [k for k, ((start, stop), path) in enumerate(zip(ranges, paths))
            if not _existing_is_complete(path, expected, stop - start, resolution)]
    with tqdm(total=sum(ranges[k][1] - ranges[k][0] for k in todo), desc=f"generate {dataset}",
              unit="traj", disable=not progress) as bar:
        for k in todo:
            start, stop = ranges[k]
            for stale in target.glob(f".{paths[k].name}.partial-*"):
                stale.unlink()
            writer = ChunkWriter(paths[k], pde, stop - start, SNAPSHOT_TIMES, (resolution, resolution),
                                 attrs={**expected, "first_trajectory": start, "chunk": k,
                                        "snapshot_times": "t_k = k/20, k = 0..20", **physics})
            try:
                for first in range(start, stop, batch_size):
                    members = list(range(first, min(first + batch_size, stop)))
                    writer.put(first - start, _run_batch(dataset, pde, members, solver_resolution, resolution,
                                                         seed, dtype, device, k))
                    bar.update(len(members))
                writer.close()
            except BaseException:
                writer.abort()
                raise
    return paths


def _run_batch(dataset, pde, members, solver_resolution, resolution, seed, dtype, device,
               chunk) -> np.ndarray:
    """Stored channels `[b, 21, C, R, R]` of trajectories `members` (the writer adds the tracer)."""
    from pdeinf.solvers import initial_conditions

    # every sample is seeded from (seed, data set, index): chunks and batches do not matter
    u0 = initial_conditions.sample(dataset, len(members), solver_resolution, seed=seed,
                                   start=members[0], dtype=dtype, device=device)
    try:
        solution = _solve(pde, u0)
    except InputError:
        raise
    except (NumericalError, RuntimeError) as err:
        # name the trajectories of the solver's "batch member(s) [i, j]"
        match = re.search(r"batch member\(s\) \[([\d,\s]*)\]", str(err))
        local = map(int, match.group(1).split(",")) if match and match.group(1).strip() else ()
        named = ", ".join(str(members[i]) for i in local if 0 <= i < len(members))
        raise NumericalError(f"generate {dataset}: solver failed in chunk {chunk} on trajectories "
                             f"{named or f'{members[0]}..{members[-1]}'}: {err}") from err
    if downsampling_kind(pde) == BLOCK_AVERAGE:
        solution = block_average(solution, solution.shape[-1] // resolution)
    else:
        solution = spectral_truncate(solution, resolution)
    stored = model_to_stored(pde, solution.detach().cpu().numpy())
    if not np.all(np.isfinite(stored)):
        bad = members[int(np.flatnonzero(~np.isfinite(stored).reshape(len(members), -1).all(1))[0])]
        raise NumericalError(f"generate {dataset}: chunk {chunk}, trajectory {bad}: non-finite values")
    return stored


def ensure_profile_data(profile, root: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Generate all data sets of `profile` (its PDEs' three classes; seed 0) into `root`
    (default `paths.data_dir(profile.name)`), skipping finished chunks. Returns the root."""
    from pdeinf import paths
    from pdeinf.config import PDE_CLASSES

    root = Path(root) if root is not None else paths.data_dir(profile.name)
    for pde in profile.pdes:
        for dataset in PDE_CLASSES[pde]:
            generate(dataset, profile.n_trajectories, profile.resolution, root,
                     solver_resolution=profile.solver_resolution, progress=progress)
    return root
