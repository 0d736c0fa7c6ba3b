"""PDEGym (Poseidon) netCDF files: a lazy reader and a writer of the same layout.

On disk (HF chunk files `data_K.nc` / `velocity_K.nc`, or an assembled `CE-RP.nc`) one
variable, `data` (compressible Euler) or `velocity` (incompressible Navier-Stokes), has dims
`(sample, time, channel, x, y)`, float32, with the first spatial index along x:

- CE: 5 channels rho, vx, vy, p, E (primitive velocities plus pressure and total energy);
- NS: 3 channels u, v, tracer (a passive tracer the models never see).

The reader returns the *model channels* `[n, T, C, H, W]` with x along W (the last two axes
transposed, the solvers' convention): CE conserved `(rho, rho*vx, rho*vy, E)` (pressure dropped,
as the authors do), NS velocity `(u, v)` (tracer dropped). Memory is bounded by the request: a
read touches only the requested samples and times of the files that hold them.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeinf.errors import InputError

#: On-disk variable name per PDE, and the stored channels.
VARIABLE: dict[str, str] = {"CE": "data", "NS": "velocity"}
STORED_CHANNELS: dict[str, tuple[str, ...]] = {
    "CE": ("rho", "vx", "vy", "p", "E"),
    "NS": ("u", "v", "tracer"),
}
DIMS: tuple[str, ...] = ("sample", "time", "channel", "x", "y")
_CHUNK_RE = re.compile(r"^(data|velocity)_(\d+)\.nc$")


def chunk_name(pde: str, index: int) -> str:
    """`("CE", 3) -> "data_3.nc"`, `("NS", 0) -> "velocity_0.nc"`."""
    return f"{VARIABLE[_pde_from_kind(pde)]}_{int(index)}.nc"


def chunk_files(directory: str | os.PathLike) -> list[Path]:
    """The chunk files of a directory in numeric order (0, 1, 2, ..., 10), not string order.

    Temporary files (`.data_0.nc.partial-*`) and other names are ignored. A directory mixing
    `data_*` and `velocity_*` files raises InputError.
    """
    directory = Path(directory)
    found: list[tuple[str, int, Path]] = []
    for entry in directory.iterdir():
        match = _CHUNK_RE.match(entry.name)
        if match and entry.is_file():
            found.append((match.group(1), int(match.group(2)), entry))
    prefixes = {prefix for prefix, _, _ in found}
    if len(prefixes) > 1:
        raise InputError(f"{directory}: holds both data_*.nc and velocity_*.nc chunk files")
    return [path for _, _, path in sorted(found, key=lambda item: item[1])]


def _pde_from_kind(kind: str) -> str:
    for pde, variable in VARIABLE.items():
        if kind in (pde, variable):
            return pde
    raise InputError(f"kind {kind!r}: expected one of CE, NS, data, velocity")


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:  # truncated, corrupt, not HDF5/netCDF4
        raise InputError(f"{path}: cannot open as a netCDF4/HDF5 file ({err})") from None


@dataclass(frozen=True)
class _Chunk:
    path: Path
    n_samples: int
    first: int  # global index of its first sample


class PDEGymReader:
    """Lazy reader over one or more PDEGym files holding the same data set.

    Attributes: `paths` (files in sample order), `pde` ("CE" | "NS"), `variable`,
    `n_samples`, `n_times`, `resolution` `(H, W)`, `channels` (model channel count),
    `times` (the stored time coordinate, or `k/(n_times-1)` when absent).
    Opening checks structure only (cheap); `validate()` also checks every value.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, source: str | os.PathLike | None = None):
        if not paths:
            raise InputError(f"{source}: no PDEGym files (data_K.nc / velocity_K.nc) found")
        self.source = Path(source) if source is not None else Path(paths[0])
        self.paths = [Path(p) for p in paths]
        chunks: list[_Chunk] = []
        first = 0
        reference: tuple | None = None
        times = None
        for path in self.paths:
            pde, shape, file_times = self._inspect(path)
            signature = (pde, shape[1:])
            if reference is None:
                reference = signature
                times = file_times
            elif signature != reference:
                raise InputError(
                    f"{path}: layout {pde} {shape[1:]} differs from {self.paths[0]} "
                    f"({reference[0]} {reference[1]})"
                )
            chunks.append(_Chunk(path, shape[0], first))
            first += shape[0]
        assert reference is not None
        self.pde: str = reference[0]
        self.variable = VARIABLE[self.pde]
        n_times, _, nx, ny = reference[1]
        self.n_samples = first
        self.n_times = n_times
        self.resolution = (ny, nx)  # (H, W): x runs along W
        self.channels = 4 if self.pde == "CE" else 2
        self.times = times if times is not None else np.linspace(0.0, 1.0, n_times)
        self._chunks = chunks
        self._starts = np.array([c.first for c in chunks])

    # -- structure -------------------------------------------------------------------
    @staticmethod
    def _inspect(path: Path) -> tuple[str, tuple[int, ...], np.ndarray | None]:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        with _open_h5(path) as handle:
            present = [name for name in VARIABLE.values() if name in handle]
            if len(present) != 1:
                raise InputError(
                    f"{path}: expected exactly one variable 'data' (CE) or 'velocity' (NS), "
                    f"found {sorted(handle.keys())}"
                )
            variable = present[0]
            pde = _pde_from_kind(variable)
            dataset = handle[variable]
            shape = tuple(int(s) for s in dataset.shape)
            if len(shape) != 5:
                raise InputError(
                    f"{path}: variable {variable!r} has {len(shape)} dims {shape}; "
                    f"expected 5 {DIMS}"
                )
            names = _dimension_names(dataset)
            if names is not None and names != DIMS:
                raise InputError(f"{path}: variable {variable!r} has dims {names}; expected {DIMS}")
            n_channels = len(STORED_CHANNELS[pde])
            if shape[2] != n_channels:
                raise InputError(
                    f"{path}: variable {variable!r} has {shape[2]} channels; expected "
                    f"{n_channels} ({', '.join(STORED_CHANNELS[pde])})"
                )
            if min(shape) <= 0:
                raise InputError(f"{path}: variable {variable!r} is empty {shape}")
            if shape[1] < 2:
                raise InputError(f"{path}: only {shape[1]} time snapshot(s); need at least 2")
            times = None
            if "time" in handle and handle["time"].shape == (shape[1],) and not _is_bare_dimension(handle["time"]):
                try:
                    times = np.asarray(handle["time"][()], dtype=np.float64)
                except OSError as err:
                    raise InputError(f"{path}: cannot read coordinate 'time' ({err})") from None
        return pde, shape, times

    # -- reading ---------------------------------------------------------------------
    def read(
        self,
        samples: int | slice | Iterable[int] | None = None,
        times: int | slice | Iterable[int] | None = None,
    ) -> np.ndarray:
        """Model channels of the requested samples and times: float32 `[n, T, C, H, W]`.

        `samples`/`times` are an int, a slice, or a sequence of indices (any order, repeats
        allowed); None means all. Raises InputError for out-of-range indices, unreadable
        (truncated) data and non-finite values, naming the file and sample.
        """
        sample_idx = _as_indices(samples, self.n_samples, "samples", self.source)
        time_idx = _as_indices(times, self.n_times, "times", self.source)
        height, width = self.resolution
        out = np.empty((len(sample_idx), len(time_idx), self.channels, height, width), np.float32)
        if len(sample_idx) == 0 or len(time_idx) == 0:
            return out
        # h5py wants increasing, unique indices: read the sorted unique times once per sample.
        unique_times, time_inverse = np.unique(time_idx, return_inverse=True)
        time_selection = _h5_selection(unique_times)
        file_of = np.searchsorted(self._starts, sample_idx, side="right") - 1
        for file_number in np.unique(file_of):
            chunk = self._chunks[file_number]
            rows = np.flatnonzero(file_of == file_number)
            with _open_h5(chunk.path) as handle:
                dataset = handle[self.variable]
                for row in rows:
                    local = int(sample_idx[row] - chunk.first)
                    try:
                        stored = np.asarray(dataset[local, time_selection], dtype=np.float32)
                    except (OSError, ValueError, KeyError) as err:
                        raise InputError(
                            f"{chunk.path}: cannot read sample {local} ({err}); truncated or corrupt?"
                        ) from None
                    stored = stored[time_inverse]
                    if not np.all(np.isfinite(stored)):
                        raise InputError(
                            f"{chunk.path}: sample {local} contains NaN or Inf values"
                        )
                    out[row] = self._to_model_channels(stored)
        return out

    def read_stored(self, samples=None, times=None) -> np.ndarray:
        """The stored channels (CE primitive 5, NS 3 with the tracer), `[n, T, C_stored, H, W]`,
        x along W. For inspection and statistics; training uses `read`."""
        sample_idx = _as_indices(samples, self.n_samples, "samples", self.source)
        time_idx = _as_indices(times, self.n_times, "times", self.source)
        height, width = self.resolution
        out = np.empty(
            (len(sample_idx), len(time_idx), len(STORED_CHANNELS[self.pde]), height, width),
            np.float32,
        )
        unique_times, time_inverse = np.unique(time_idx, return_inverse=True)
        file_of = np.searchsorted(self._starts, sample_idx, side="right") - 1
        for row, (file_number, sample) in enumerate(zip(file_of, sample_idx)):
            chunk = self._chunks[file_number]
            with _open_h5(chunk.path) as handle:
                try:
                    stored = np.asarray(
                        handle[self.variable][int(sample - chunk.first), _h5_selection(unique_times)],
                        dtype=np.float32,
                    )
                except (OSError, ValueError) as err:
                    raise InputError(f"{chunk.path}: cannot read sample {sample - chunk.first} ({err})") from None
            out[row] = np.swapaxes(stored[time_inverse], -1, -2)
        return out

    def _to_model_channels(self, stored: np.ndarray) -> np.ndarray:
        """`[T, C_stored, X, Y]` -> `[T, C, H=Y, W=X]`."""
        stored = np.swapaxes(stored, -1, -2)
        if self.pde == "CE":
            rho, vx, vy, energy = stored[:, 0], stored[:, 1], stored[:, 2], stored[:, 4]
            return np.stack([rho, rho * vx, rho * vy, energy], axis=1)
        return stored[:, :2]

    def validate(self, *, block: int = 16, progress: bool = False) -> None:
        """Check every file: structure (done on open) and every value finite, `block` samples
        at a time (memory bounded). CE densities and pressures must also be positive.
        Raises InputError naming the file and sample."""
        from tqdm.auto import tqdm

        if block <= 0:
            raise InputError(f"block={block}: must be positive")
        bar = tqdm(total=self.n_samples, desc=f"validate {self.source.name}", disable=not progress)
        for chunk in self._chunks:
            with _open_h5(chunk.path) as handle:
                dataset = handle[self.variable]
                for start in range(0, chunk.n_samples, block):
                    stop = min(start + block, chunk.n_samples)
                    try:
                        values = np.asarray(dataset[start:stop])
                    except (OSError, ValueError) as err:
                        raise InputError(
                            f"{chunk.path}: cannot read samples {start}..{stop - 1} ({err}); "
                            "truncated or corrupt?"
                        ) from None
                    finite = np.isfinite(values).reshape(stop - start, -1).all(axis=1)
                    if not finite.all():
                        bad = start + int(np.flatnonzero(~finite)[0])
                        raise InputError(f"{chunk.path}: sample {bad} contains NaN or Inf values")
                    if self.pde == "CE":
                        positive = (values[:, :, [0, 3]] > 0).reshape(stop - start, -1).all(axis=1)
                        if not positive.all():
                            bad = start + int(np.flatnonzero(~positive)[0])
                            raise InputError(
                                f"{chunk.path}: sample {bad} has non-positive density or pressure"
                            )
                    bar.update(stop - start)
        bar.close()

    def __repr__(self) -> str:
        return (
            f"PDEGymReader({str(self.source)!r}, pde={self.pde}, files={len(self.paths)}, "
            f"n_samples={self.n_samples}, n_times={self.n_times}, resolution={self.resolution})"
        )


def _dimension_names(dataset) -> tuple[str, ...] | None:
    """netCDF4 dimension names of an h5py dataset, or None when no scales are attached."""
    try:
        names = []
        for axis in dataset.dims:
            scales = list(axis.values())
            if not scales:
                return None
            names.append(scales[0].name.rsplit("/", 1)[-1])
        return tuple(names)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):  # exotic layouts: shape checks only
        return None


def _is_bare_dimension(dataset) -> bool:
    """A netCDF4 dimension without coordinate values (its data are fill values)."""
    name = dataset.attrs.get("NAME", b"")
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return "not a netCDF variable" in str(name)


def _h5_selection(indices: np.ndarray):
    """A slice when the sorted unique indices are contiguous (fast path), else a list."""
    if len(indices) and indices[-1] - indices[0] + 1 == len(indices):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return [int(i) for i in indices]


def _as_indices(selection, size: int, name: str, source) -> np.ndarray:
    if selection is None:
        return np.arange(size)
    if isinstance(selection, slice):
        return np.arange(size)[selection]
    array = np.atleast_1d(np.asarray(selection))
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise InputError(f"{source}: {name} must be integer indices, got {selection!r}")
    array = array.astype(np.int64)
    if array.min() < -size or array.max() >= size:
        raise InputError(f"{source}: {name} index out of range 0..{size - 1}: {selection!r}")
    return np.where(array < 0, array + size, array)


def open_dataset(path: str | os.PathLike) -> PDEGymReader:
    """A reader for a chunk file, a directory of chunk files (numeric order), or an
    assembled file such as `CE-RP.nc`. Raises InputError for a missing/corrupt/ill-shaped file."""
    path = Path(path)
    if path.is_dir():
        return PDEGymReader(chunk_files(path), source=path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    return PDEGymReader([path], source=path)


def write_chunk(
    path: str | os.PathLike,
    array: np.ndarray,
    kind: str,
    times: Sequence[float] | np.ndarray,
    *,
    attrs: dict | None = None,
) -> Path:
    """Write one PDEGym-layout file, to a temporary name then renamed.

    `array` has x along W: CE primitive `[n, T, 5, H, W]` (rho, vx, vy, p, E); NS velocity
    `[n, T, 2, H, W]` (a zero tracer channel is added and marked as not simulated) or
    `[n, T, 3, H, W]`. `kind` is "CE"/"data" or "NS"/"velocity"; `times` has length T.
    Stores float32 with chunks `(1, 1, C, X, Y)` like the assembled HF files; coordinate
    variables x, y (cell centres on the unit square), time, channel; `attrs` become global
    attributes. Returns the final path.
    """
    pde = _pde_from_kind(kind)
    path = Path(path)
    array = np.asarray(array)
    n_stored = len(STORED_CHANNELS[pde])
    if array.ndim != 5:
        raise InputError(f"{path}: array must be [n, T, C, H, W], got shape {array.shape}")
    n, n_times, n_channels, height, width = array.shape
    tracer_missing = pde == "NS" and n_channels == 2
    if n_channels != n_stored and not tracer_missing:
        raise InputError(
            f"{path}: {pde} array has {n_channels} channels; expected {n_stored} "
            f"({', '.join(STORED_CHANNELS[pde])})" + (" or 2 (u, v)" if pde == "NS" else "")
        )
    if min(array.shape) <= 0:
        raise InputError(f"{path}: empty array {array.shape}")
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (n_times,):
        raise InputError(f"{path}: times has shape {times.shape}; expected ({n_times},)")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: array contains NaN or Inf values")

    writer = ChunkWriter(path, pde, n, times, (height, width), attrs=attrs,
                         tracer_simulated=not tracer_missing)
    try:
        writer.put(0, array)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _write_coordinates(handle, times: np.ndarray, width: int, height: int, pde: str) -> None:
    coordinates = {
        "time": times,
        "x": (np.arange(width) + 0.5) / width,
        "y": (np.arange(height) + 0.5) / height,
        "channel": np.arange(len(STORED_CHANNELS[pde])),
    }
    for name, values in coordinates.items():
        variable = handle.create_variable(name, (name,), values.dtype)
        variable[...] = values
    handle.variables["x"].attrs["description"] = "cell centres on the unit square (periodic)"
    handle.variables["y"].attrs["description"] = "cell centres on the unit square (periodic)"
    handle.variables["channel"].attrs["names"] = " ".join(STORED_CHANNELS[pde])


class ChunkWriter:
    """Writes a PDEGym file incrementally (one solver batch at a time, so memory is bounded by
    the batch), under a temporary name; `close()` renames it, `abort()` deletes it.

    `put(start, array)` takes `[b, T, C, H, W]` (x along W) in the stored channels (CE
    primitive 5; NS 2 or 3) for samples `start .. start+b-1` of this file.
    """

    def __init__(self, path, kind: str, n_samples: int, times, resolution: tuple[int, int], *,
                 attrs: dict | None = None, tracer_simulated: bool = False):
        import h5netcdf

        self.pde = _pde_from_kind(kind)
        self.path = Path(path)
        self.n_samples = int(n_samples)
        self.times = np.asarray(times, dtype=np.float64)
        height, width = resolution
        self.resolution = (int(height), int(width))
        self.n_stored = len(STORED_CHANNELS[self.pde])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._handle = h5netcdf.File(self.temporary, "w")
        handle = self._handle
        handle.dimensions = {
            "sample": self.n_samples, "time": len(self.times), "channel": self.n_stored,
            "x": width, "y": height,
        }
        _write_coordinates(handle, self.times, width, height, self.pde)
        self._variable = handle.create_variable(
            VARIABLE[self.pde], DIMS, "f4", chunks=(1, 1, self.n_stored, width, height)
        )
        self._variable.attrs["channels"] = " ".join(STORED_CHANNELS[self.pde])
        self._variable.attrs["axis_order"] = "sample, time, channel, x, y (first spatial index is x)"
        if self.pde == "CE":
            self._variable.attrs["description"] = (
                "density, horizontal velocity, vertical velocity, pressure, total energy "
                "E = rho |v|^2 / 2 + p / (gamma - 1)"
            )
        else:
            self._variable.attrs["description"] = "horizontal velocity, vertical velocity, passive tracer"
        if self.pde == "NS" and not tracer_simulated:
            self._variable.attrs["tracer"] = "not simulated: channel 2 is all zeros"
        handle.attrs["pde"] = self.pde
        handle.attrs["conventions"] = "PDEGym (Poseidon) layout, written by pdeinf"
        for key, value in (attrs or {}).items():
            handle.attrs[key] = value
        self._written = np.zeros(self.n_samples, bool)

    def put(self, start: int, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.float32)
        b = array.shape[0]
        channels = (self.n_stored, 2) if self.pde == "NS" else (self.n_stored,)
        if (array.ndim != 5 or array.shape[1] != len(self.times) or array.shape[2] not in channels
                or array.shape[3:] != self.resolution or not 0 <= start <= start + b <= self.n_samples):
            raise InputError(
                f"{self.path}: put({start}, array {array.shape}) does not fit "
                f"[{self.n_samples}, {len(self.times)}, {self.n_stored}, {self.resolution[0]}, {self.resolution[1]}]"
            )
        stored = np.swapaxes(array, -1, -2)
        if self.pde == "NS" and stored.shape[2] == 2:
            stored = np.concatenate([stored, np.zeros_like(stored[:, :, :1])], axis=2)
        self._variable[start:start + b] = stored
        self._written[start:start + b] = True

    def close(self) -> Path:
        if not self._written.all():
            self.abort()
            raise RuntimeError(f"{self.path}: not all {self.n_samples} samples were written")
        self._handle.close()
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._handle.close()
        finally:
            if self.temporary.exists():
                self.temporary.unlink()
