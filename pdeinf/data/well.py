"""The Well `euler_multi_quadrants` HDF5 files: a lazy reader and a small-file writer.

Layout (PolymathicAI/the_well docs/data_format.md): root attributes (`dataset_name`, `gamma`,
...); `dimensions/{time,x,y}`; `boundary_conditions/<axis>_<kind>` groups (attributes
`bc_type`, `associated_dims`; datasets `mask`, `values`); `scalars/gamma`;
`t0_fields/{density,energy,pressure}` `(n_traj, T, X, Y)`; `t1_fields/momentum`
`(n_traj, T, X, Y, 2)`; an empty `t2_fields/`. The reader has the PDEGym reader's interface
and returns conserved `(rho, rho*vx, rho*vy, E)` `[n, T, 4, H, W]` float32 with x along W.
`write_well_file` writes small files in the same layout for tests and examples.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pdeinf.config import pde_spec
from pdeinf.data.pdegym import _open_h5, _read_plan, _text
from pdeinf.errors import InputError

_SCALAR_FIELDS = ("density", "energy", "pressure")
_VECTOR_FIELDS = ("momentum",)
#: Each field's dataset: scalars `(n_traj, T, X, Y)`, vectors `(n_traj, T, X, Y, 2)`.
_FIELD_PATH = {**{name: f"t0_fields/{name}" for name in _SCALAR_FIELDS},
               **{name: f"t1_fields/{name}" for name in _VECTOR_FIELDS}}
#: The Well's boundary-condition types (the_well.data.datasets.BoundaryCondition)
BC_TYPES = ("WALL", "OPEN", "PERIODIC")


def _dataset(handle, name: str, path: Path):
    """`handle[name]`, which must be an HDF5 dataset (not a group)."""
    import h5py

    if name not in handle:
        raise InputError(f"{path}: missing {name}")
    item = handle[name]
    if not isinstance(item, h5py.Dataset):
        raise InputError(f"{path}: {name} is an HDF5 {type(item).__name__.lower()}; expected a dataset")
    return item


class WellReader:
    """Reader for one The Well euler_multi_quadrants file.

    Attributes: `pde` ("CE"), `n_samples`, `n_times`, `resolution` `(H, W)`, `channels` (4),
    `times`, `gamma`, `periodic` `(x_periodic, y_periodic)`.
    """

    pde = "CE"
    channels = 4

    def __init__(self, path: str | os.PathLike):
        self.source = self.path = Path(path)
        with _open_h5(self.path, "an HDF5") as handle:
            for group in ("t0_fields", "t1_fields", "scalars", "boundary_conditions", "dimensions"):
                if group not in handle:
                    raise InputError(f"{self.path}: missing group {group!r} (not a Well file?)")
            shapes = {name: _dataset(handle, name, self.path).shape for name in _FIELD_PATH.values()}
            reference = shapes["t0_fields/density"]
            if len(reference) != 4:
                raise InputError(
                    f"{self.path}: t0_fields/density has shape {reference}; expected (n_traj, T, X, Y)")
            for name, shape in shapes.items():
                expected = reference + (2,) if name == "t1_fields/momentum" else reference
                if shape != expected:
                    raise InputError(f"{self.path}: {name} has shape {shape}; expected {expected}")
            if min(reference) <= 0:
                raise InputError(f"{self.path}: empty fields {reference}")
            n_times, nx, ny = reference[1:]
            self.gamma = _read_gamma(handle, self.path)
            self.periodic = _read_periodicity(handle["boundary_conditions"], self.path)
            self.times = _read_coordinate(handle, "time", n_times, self.path)
            for axis, size in (("x", nx), ("y", ny)):
                _read_coordinate(handle, axis, size, self.path)
        self.n_samples, self.n_times = int(reference[0]), int(n_times)
        self.resolution = (int(ny), int(nx))

    def read(self, samples=None, times=None) -> np.ndarray:
        """Conserved `(rho, mx, my, E)` float32 `[n, T, 4, H, W]` (x along W)."""
        sample_idx, selection, inverse, out = _read_plan(self, samples, times, 4)
        if out.size == 0:
            return out
        with _open_h5(self.path, "an HDF5") as handle:
            for row, sample in enumerate(sample_idx):
                rho, e, m = (f[inverse] for f in self._fields(handle, int(sample), selection,
                                                              ("density", "energy", "momentum")))
                out[row] = np.swapaxes(np.stack([rho, m[..., 0], m[..., 1], e], axis=1), -1, -2)
        return out

    def validate(self, *, progress: bool = False) -> None:
        """Read every trajectory and check values are finite and density and pressure
        positive. InputError naming the file and trajectory."""
        from tqdm.auto import tqdm

        with _open_h5(self.path, "an HDF5") as handle:
            for sample in tqdm(range(self.n_samples), desc=f"validate {self.path.name}",
                               disable=not progress):
                rho, _, pressure, _ = self._fields(handle, sample, slice(None), _FIELD_PATH, dtype=None)
                if (rho <= 0).any() or (pressure <= 0).any():
                    raise InputError(f"{self.path}: trajectory {sample} has non-positive density or pressure")

    def _fields(self, handle, sample: int, times, names, dtype=np.float32) -> list[np.ndarray]:
        """The fields `names` of trajectory `sample` at `times` (an h5py selection), as `dtype`
        (None: as stored); InputError when unreadable or not finite."""
        try:
            fields = [np.asarray(handle[_FIELD_PATH[name]][sample, times], dtype) for name in names]
        except (OSError, ValueError) as err:
            raise InputError(
                f"{self.path}: cannot read trajectory {sample} ({err}); truncated or corrupt?") from None
        if not all(np.all(np.isfinite(f)) for f in fields):
            raise InputError(f"{self.path}: trajectory {sample} contains NaN or Inf values")
        return fields

    def __repr__(self) -> str:
        return (
            f"WellReader({str(self.path)!r}, n_samples={self.n_samples}, n_times={self.n_times}, "
            f"resolution={self.resolution}, gamma={self.gamma}, periodic={self.periodic})"
        )


def _read_gamma(handle, path: Path) -> float:
    """`scalars/gamma`: one number > 1 (the root attribute `gamma`, when it agrees to float32
    precision, supplies the digits that the float32 dataset rounds away)."""
    gamma_data = _dataset(handle, "scalars/gamma", path)
    if gamma_data.dtype.kind not in "fiu":
        raise InputError(f"{path}: scalars/gamma has dtype {gamma_data.dtype}; expected a number")
    if gamma_data.size != 1 or gamma_data.ndim > 1:
        raise InputError(f"{path}: scalars/gamma has shape {gamma_data.shape}; expected one constant scalar")
    try:
        gamma = float(np.asarray(gamma_data[()]).reshape(()))
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"{path}: cannot read scalars/gamma ({err})") from None
    with contextlib.suppress(TypeError, ValueError):  # no root attribute, or not one number
        exact = float(np.asarray(handle.attrs.get("gamma")).reshape(()))
        if np.float32(exact) == np.float32(gamma):
            gamma = exact
    if not (np.isfinite(gamma) and gamma > 1):
        raise InputError(f"{path}: scalars/gamma = {gamma}; must be > 1")
    return gamma


def _read_coordinate(handle, name: str, size: int, path: Path) -> np.ndarray:
    """`dimensions/<name>`, a 1-D array of `size` finite values matching the fields' axis."""
    data = _dataset(handle, f"dimensions/{name}", path)
    if data.shape != (size,):
        axis = {"time": "T", "x": "X", "y": "Y"}[name]
        raise InputError(f"{path}: dimensions/{name} has shape {data.shape}; the fields have "
                         f"{axis} = {size}, so it must have shape ({size},)")
    values = np.asarray(data[()], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: dimensions/{name} contains NaN or Inf values")
    return values


def _read_periodicity(group, path: Path) -> tuple[bool, bool]:
    """`(x_periodic, y_periodic)`: an axis is periodic when every boundary condition on it has
    `bc_type` PERIODIC. Every axis needs at least one condition."""
    import h5py

    types: dict[str, list[str]] = {"x": [], "y": []}
    for name, bc in group.items():
        where = f"{path}: boundary_conditions/{name}"
        if not isinstance(bc, h5py.Group):
            raise InputError(f"{where} is a dataset; expected a group")
        if "bc_type" not in bc.attrs:
            raise InputError(f"{where} has no attribute bc_type (one of {', '.join(BC_TYPES)})")
        bc_type = _text(bc.attrs["bc_type"]).upper()
        if bc_type not in BC_TYPES:
            raise InputError(f"{where} attribute bc_type = {_text(bc.attrs['bc_type'])!r}; "
                             f"expected one of {', '.join(BC_TYPES)}")
        if "associated_dims" not in bc.attrs:
            raise InputError(f"{where} has no attribute associated_dims")
        # a list-of-strings attribute: str, bytes or an array
        dims = [_text(d) for d in np.atleast_1d(np.asarray(bc.attrs["associated_dims"], dtype=object))]
        if not dims or any(d not in types for d in dims):
            raise InputError(
                f"{where} attribute associated_dims = {dims}; expected spatial dims from ['x', 'y']")
        for dim in dims:
            types[dim].append(bc_type)
    for axis, found in types.items():
        if not found:
            raise InputError(f"{path}: no boundary condition for axis {axis} in boundary_conditions/")
    return tuple(all(t == "PERIODIC" for t in types[axis]) for axis in ("x", "y"))


def open_well(path: str | os.PathLike) -> WellReader:
    """A reader for one `euler_multi_quadrants_*.hdf5` file."""
    return WellReader(path)


def write_well_file(path: str | os.PathLike, conserved: np.ndarray, *, gamma: float | None = None,
                    periodic: tuple[bool, bool] = (True, True),
                    times: Sequence[float] | None = None) -> Path:
    """Write `conserved` `[n, T, 4, H, W]` (rho, rho*vx, rho*vy, E; x along W) as a Well file
    (pressure from `gamma`, default the CE gamma; `times` default `linspace(0, 1.5, T)`;
    cell-centred coordinates on the unit square). Written under a temporary name and renamed."""
    import h5py

    path = Path(path)
    gamma = float(pde_spec("CE").gamma if gamma is None else gamma)
    if not (np.isfinite(gamma) and gamma > 1):
        raise InputError(f"{path}: gamma = {gamma}; must be > 1")
    conserved = np.asarray(conserved, dtype=np.float64)
    if conserved.ndim != 5 or conserved.shape[2] != 4:
        raise InputError(f"{path}: conserved must be [n, T, 4, H, W], got {conserved.shape}")
    n, n_times, _, height, width = conserved.shape
    times = np.linspace(0.0, 1.5, n_times) if times is None else np.asarray(times, np.float64)
    if times.shape != (n_times,):
        raise InputError(f"{path}: times has shape {times.shape}; expected ({n_times},)")
    rho, mx, my, energy = (np.swapaxes(conserved[:, :, i], -1, -2) for i in range(4))  # [n,T,X,Y]
    pressure = (gamma - 1.0) * (energy - 0.5 * (mx**2 + my**2) / rho)
    const = {"sample_varying": False, "time_varying": False}
    field = {"dim_varying": [True, True], "sample_varying": True, "time_varying": True}
    no_names = np.array([], dtype=h5py.string_dtype())  # an empty list of strings
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
            dims.create_dataset("time", data=times.astype(np.float32))
            dims["time"].attrs["sample_varying"] = False
            for axis, size in (("x", width), ("y", height)):
                dims.create_dataset(axis, data=((np.arange(size) + 0.5) / size).astype(np.float32))
                dims[axis].attrs.update(const)
            bcs = handle.create_group("boundary_conditions")
            for axis, is_periodic, size in (("x", periodic[0], width), ("y", periodic[1], height)):
                group = bcs.create_group(f"{axis}_periodic" if is_periodic else f"{axis}_open")
                group.attrs.update({
                    "bc_type": "PERIODIC" if is_periodic else "OPEN",
                    "associated_dims": [axis], "associated_fields": no_names, **const,
                })
                mask = np.zeros(size, bool)
                mask[[0, -1]] = True  # the boundary is at both ends of the axis
                group.create_dataset("mask", data=mask)
                group.create_dataset("values", data=np.zeros(int(mask.sum()), np.float32))
            scalars = handle.create_group("scalars")
            scalars.attrs["field_names"] = ["gamma"]
            scalars.create_dataset("gamma", data=np.float32(gamma))
            scalars["gamma"].attrs.update(const)
            t0 = handle.create_group("t0_fields")
            t0.attrs["field_names"] = list(_SCALAR_FIELDS)
            for name, values in zip(_SCALAR_FIELDS, (rho, energy, pressure)):
                t0.create_dataset(name, data=values.astype(np.float32), chunks=(1, 1, width, height))
                t0[name].attrs.update(field)
            t1 = handle.create_group("t1_fields")
            t1.attrs["field_names"] = list(_VECTOR_FIELDS)
            momentum = np.stack([mx, my], axis=-1).astype(np.float32)
            t1.create_dataset("momentum", data=momentum, chunks=(1, 1, width, height, 2))
            t1["momentum"].attrs.update(field)
            handle.create_group("t2_fields").attrs["field_names"] = no_names
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path
