"""The Well `euler_multi_quadrants` HDF5 files: a lazy reader and a small-file writer.

Layout (PolymathicAI/the_well docs/data_format.md): `t0_fields/{density, energy, pressure}`
`(n_traj, T, X, Y)`, `t1_fields/momentum` `(n_traj, T, X, Y, 2)` (components x, y),
`dimensions/{time, x, y}`, `boundary_conditions/{x_periodic, y_periodic}` (attribute
`bc_type` "PERIODIC" or "OPEN"), `scalars/gamma`. The reader has the PDEGym reader's interface
and returns conserved `(rho, rho*vx, rho*vy, E)` `[n, T, 4, H, W]` float32 with x along W.
The real files (hundreds of GB) cannot be downloaded here; `write_well_file` writes small ones in
the same layout for tests and examples.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pdeinf.data.pdegym import _as_indices, _h5_selection
from pdeinf.errors import InputError

_SCALAR_FIELDS = ("density", "energy", "pressure")


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot open as an HDF5 file ({err})") from None


class WellReader:
    """Reader for one The Well euler_multi_quadrants file.

    Attributes: `pde` ("CE"), `n_samples`, `n_times`, `resolution` `(H, W)`, `channels` (4),
    `times`, `gamma`, `periodic` `(x_periodic, y_periodic)`.
    """

    pde = "CE"
    channels = 4

    def __init__(self, path: str | os.PathLike):
        self.source = self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        with _open(self.path) as handle:
            for group in ("t0_fields", "t1_fields", "scalars", "boundary_conditions"):
                if group not in handle:
                    raise InputError(f"{self.path}: missing group {group!r} (not a Well file?)")
            shapes = {}
            for name in _SCALAR_FIELDS:
                if name not in handle["t0_fields"]:
                    raise InputError(f"{self.path}: missing t0_fields/{name}")
                shapes[name] = handle["t0_fields"][name].shape
            if "momentum" not in handle["t1_fields"]:
                raise InputError(f"{self.path}: missing t1_fields/momentum")
            momentum_shape = handle["t1_fields"]["momentum"].shape
            reference = shapes["density"]
            if len(reference) != 4:
                raise InputError(
                    f"{self.path}: t0_fields/density has shape {reference}; expected (n_traj, T, X, Y)"
                )
            for name, shape in shapes.items():
                if shape != reference:
                    raise InputError(
                        f"{self.path}: t0_fields/{name} has shape {shape}; density has {reference}"
                    )
            if momentum_shape != reference + (2,):
                raise InputError(
                    f"{self.path}: t1_fields/momentum has shape {momentum_shape}; expected {reference + (2,)}"
                )
            if min(reference) <= 0:
                raise InputError(f"{self.path}: empty fields {reference}")
            if "gamma" not in handle["scalars"]:
                raise InputError(f"{self.path}: missing scalars/gamma")
            try:
                self.gamma = float(np.asarray(handle["scalars"]["gamma"][()]))
            except (OSError, ValueError) as err:
                raise InputError(f"{self.path}: cannot read scalars/gamma ({err})") from None
            if not (np.isfinite(self.gamma) and self.gamma > 1):
                raise InputError(f"{self.path}: scalars/gamma = {self.gamma}; must be > 1")
            self.periodic = tuple(
                _bc_is_periodic(handle["boundary_conditions"], axis, self.path) for axis in ("x", "y")
            )
            times = None
            if "dimensions" in handle and "time" in handle["dimensions"]:
                times = np.asarray(handle["dimensions"]["time"][()], dtype=np.float64)
        self.n_samples, self.n_times, nx, ny = (int(s) for s in reference)
        self.resolution = (ny, nx)
        self.times = times if times is not None and times.shape == (self.n_times,) else np.arange(self.n_times, dtype=float)

    def read(self, samples=None, times=None) -> np.ndarray:
        """Conserved `(rho, mx, my, E)` float32 `[n, T, 4, H, W]` (x along W)."""
        sample_idx = _as_indices(samples, self.n_samples, "samples", self.path)
        time_idx = _as_indices(times, self.n_times, "times", self.path)
        height, width = self.resolution
        out = np.empty((len(sample_idx), len(time_idx), 4, height, width), np.float32)
        if len(sample_idx) == 0 or len(time_idx) == 0:
            return out
        unique_times, inverse = np.unique(time_idx, return_inverse=True)
        selection = _h5_selection(unique_times)
        with _open(self.path) as handle:
            density = handle["t0_fields"]["density"]
            energy = handle["t0_fields"]["energy"]
            momentum = handle["t1_fields"]["momentum"]
            for row, sample in enumerate(sample_idx):
                try:
                    rho = np.asarray(density[int(sample), selection], np.float32)[inverse]
                    e = np.asarray(energy[int(sample), selection], np.float32)[inverse]
                    m = np.asarray(momentum[int(sample), selection], np.float32)[inverse]
                except (OSError, ValueError) as err:
                    raise InputError(
                        f"{self.path}: cannot read trajectory {sample} ({err}); truncated or corrupt?"
                    ) from None
                stacked = np.stack([rho, m[..., 0], m[..., 1], e], axis=1)  # [T, 4, X, Y]
                if not np.all(np.isfinite(stacked)):
                    raise InputError(f"{self.path}: trajectory {sample} contains NaN or Inf values")
                out[row] = np.swapaxes(stacked, -1, -2)
        return out

    def validate(self, *, progress: bool = False) -> None:
        """Read every trajectory (one at a time) and check values are finite and density and
        pressure positive. Raises InputError naming the file and trajectory."""
        from tqdm.auto import tqdm

        with _open(self.path) as handle:
            for sample in tqdm(range(self.n_samples), desc=f"validate {self.path.name}",
                               disable=not progress):
                try:
                    fields = [handle["t0_fields"][name][sample] for name in _SCALAR_FIELDS]
                    fields.append(handle["t1_fields"]["momentum"][sample])
                except (OSError, ValueError) as err:
                    raise InputError(f"{self.path}: cannot read trajectory {sample} ({err})") from None
                if not all(np.all(np.isfinite(f)) for f in fields):
                    raise InputError(f"{self.path}: trajectory {sample} contains NaN or Inf values")
                if (fields[0] <= 0).any() or (fields[2] <= 0).any():
                    raise InputError(f"{self.path}: trajectory {sample} has non-positive density or pressure")

    def __repr__(self) -> str:
        return (
            f"WellReader({str(self.path)!r}, n_samples={self.n_samples}, n_times={self.n_times}, "
            f"resolution={self.resolution}, gamma={self.gamma}, periodic={self.periodic})"
        )


def _bc_is_periodic(group, axis: str, path: Path) -> bool:
    for name in (f"{axis}_periodic", f"{axis}_open", f"{axis}_wall"):
        if name in group:
            bc_type = group[name].attrs.get("bc_type", b"")
            if isinstance(bc_type, bytes):
                bc_type = bc_type.decode()
            return str(bc_type).upper() == "PERIODIC"
    raise InputError(f"{path}: no boundary condition for axis {axis} in boundary_conditions/")


def open_well(path: str | os.PathLike) -> WellReader:
    """A reader for one `euler_multi_quadrants_*.hdf5` file."""
    return WellReader(path)


def write_well_file(
    path: str | os.PathLike,
    conserved: np.ndarray,
    *,
    gamma: float = 1.4,
    periodic: tuple[bool, bool] = (True, True),
    times: Sequence[float] | None = None,
) -> Path:
    """Write `conserved` `[n, T, 4, H, W]` (rho, rho*vx, rho*vy, E; x along W) as a Well
    euler_multi_quadrants file (pressure derived with `gamma`), via a temporary name."""
    import h5py

    path = Path(path)
    conserved = np.asarray(conserved, dtype=np.float64)
    if conserved.ndim != 5 or conserved.shape[2] != 4:
        raise InputError(f"{path}: conserved must be [n, T, 4, H, W], got {conserved.shape}")
    n, n_times, _, height, width = conserved.shape
    times = np.linspace(0.0, 1.5, n_times) if times is None else np.asarray(times, np.float64)
    if times.shape != (n_times,):
        raise InputError(f"{path}: times has shape {times.shape}; expected ({n_times},)")
    rho, mx, my, energy = (np.swapaxes(conserved[:, :, i], -1, -2) for i in range(4))  # [n,T,X,Y]
    pressure = (gamma - 1.0) * (energy - 0.5 * (mx**2 + my**2) / rho)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with h5py.File(temporary, "w") as handle:
            handle.attrs.update({
                "dataset_name": "euler_multi_quadrants_" + ("periodicBC" if all(periodic) else "openBC"),
                "grid_type": "cartesian", "n_spatial_dims": 2, "n_trajectories": n,
                "simulation_parameters": ["gamma"], "gamma": gamma,
            })
            dims = handle.create_group("dimensions")
            dims.attrs["spatial_dims"] = ["x", "y"]
            dims["time"] = times
            dims["x"] = (np.arange(width) + 0.5) / width
            dims["y"] = (np.arange(height) + 0.5) / height
            bcs = handle.create_group("boundary_conditions")
            for axis, is_periodic, size in (("x", periodic[0], width), ("y", periodic[1], height)):
                group = bcs.create_group(f"{axis}_periodic" if is_periodic else f"{axis}_open")
                group.attrs.update({
                    "bc_type": "PERIODIC" if is_periodic else "OPEN",
                    "associated_dims": [axis], "associated_fields": [],
                    "sample_varying": False, "time_varying": False,
                })
                mask = np.zeros(size, bool)
                mask[[0, -1]] = True
                group["mask"] = mask
                group["values"] = np.zeros(0, np.float32)
            scalars = handle.create_group("scalars")
            scalars["gamma"] = np.float64(gamma)
            scalars["gamma"].attrs.update({"time_varying": False, "sample_varying": False})
            t0 = handle.create_group("t0_fields")
            for name, values in (("density", rho), ("energy", energy), ("pressure", pressure)):
                t0.create_dataset(name, data=values.astype(np.float32), chunks=(1, 1, width, height))
                t0[name].attrs.update({"dim_varying": [True, True], "sample_varying": True, "time_varying": True})
            t1 = handle.create_group("t1_fields")
            momentum = np.stack([mx, my], axis=-1).astype(np.float32)
            t1.create_dataset("momentum", data=momentum, chunks=(1, 1, width, height, 2))
            t1["momentum"].attrs.update({"dim_varying": [True, True], "sample_varying": True, "time_varying": True})
            handle.create_group("t2_fields")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path
