"""PDEGym (Poseidon) netCDF files: a lazy reader and a writer of the same layout.

On disk (chunk files `data_K.nc` / `velocity_K.nc`, or an assembled `CE-RP.nc`) one float32
variable, `data` (CE: rho, vx, vy, p, E) or `velocity` (NS: u, v, tracer), has dims
`(sample, time, channel, x, y)`. The reader returns the model channels `[n, T, C, H, W]` with
x along W: CE conserved `(rho, rho*vx, rho*vy, E)`, NS velocity `(u, v)`. A read touches only
the requested samples and times.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pdeinf.config import PDE_SPECS, pde_spec
from pdeinf.data.validation import validate_reader
from pdeinf.errors import InputError

#: On-disk variable name per PDE, and the stored channels (views of PDE_SPECS).
VARIABLE: dict[str, str] = {pde: spec.file_kind for pde, spec in PDE_SPECS.items()}
STORED_CHANNELS: dict[str, tuple[str, ...]] = {pde: spec.stored_variables for pde, spec in PDE_SPECS.items()}
DIMS: tuple[str, ...] = ("sample", "time", "channel", "x", "y")
#: A stored channel the writer may fill with zeros when the caller has no values for it.
OPTIONAL_STORED = "tracer"
#: Plain-words description of each stored variable (file attributes).
STORED_DESCRIPTIONS: dict[str, str] = {
    "rho": "density", "vx": "horizontal velocity", "vy": "vertical velocity", "p": "pressure",
    "E": "total energy E = rho |v|^2 / 2 + p / (gamma - 1)", "u": "horizontal velocity",
    "v": "vertical velocity", "tracer": "passive tracer",
}
_CHUNK_RE = re.compile(r"^(" + "|".join(re.escape(kind) for kind in VARIABLE.values()) + r")_(\d+)\.nc$")
#: What h5py raises on a damaged file (corrupt object headers surface as KeyError/RuntimeError).
_H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


def stored_to_model(pde: str, stored: np.ndarray, axis: int = 1) -> np.ndarray:
    """Stored channels -> model channels along `axis`: a model channel named like a stored one
    is copied; `rho_<q>` is density times stored `q`. p and the tracer are dropped."""
    index = {name: i for i, name in enumerate(pde_spec(pde).stored_variables)}

    def take(name: str) -> np.ndarray:
        if name in index:
            return np.take(stored, index[name], axis=axis)
        density, _, quantity = name.partition("_")
        return take(density) * take(quantity)

    return np.stack([take(name) for name in pde_spec(pde).channel_names], axis=axis)


def model_to_stored(pde: str, model: np.ndarray, axis: int = 2) -> np.ndarray:
    """Model channels (on `axis`) -> the stored channels, the inverse of `stored_to_model`
    (CE pressure p = (gamma - 1)(E - |m|^2 / (2 rho))); the optional tracer is left out."""
    spec = pde_spec(pde)
    model = np.asarray(model)
    channel = {name: np.take(model, i, axis=axis) for i, name in enumerate(spec.channel_names)}
    for name in list(channel):
        if "_" in name:
            density, _, quantity = name.partition("_")
            channel[quantity] = channel[name] / channel[density]
    if spec.compressible:
        rho = np.take(model, spec.density_channel, axis=axis)
        energy = np.take(model, spec.energy_channel, axis=axis)
        kinetic = sum(0.5 * np.take(model, c, axis=axis) ** 2 for c in spec.vector_axes) / rho
        channel["p"] = (spec.gamma - 1.0) * (energy - kinetic)
    names = [n for n in spec.stored_variables if n != OPTIONAL_STORED or n in channel]
    return np.stack([channel[n] for n in names], axis=axis)


def chunk_name(pde: str, index: int) -> str:
    """`("CE", 3) -> "data_3.nc"`, `("NS", 0) -> "velocity_0.nc"`."""
    return f"{VARIABLE[_pde_from_kind(pde)]}_{int(index)}.nc"


def chunk_files(directory: str | os.PathLike) -> list[Path]:
    """The chunk files of a directory in numeric order (temporary and other files ignored);
    InputError for a directory mixing `data_*` and `velocity_*` files."""
    directory = Path(directory)
    found = [(match.group(1), int(match.group(2)), entry) for entry in directory.iterdir()
             if (match := _CHUNK_RE.match(entry.name)) and entry.is_file()]
    if len({prefix for prefix, _, _ in found}) > 1:
        raise InputError(f"{directory}: holds both data_*.nc and velocity_*.nc chunk files")
    return [path for _, _, path in sorted(found, key=lambda item: item[1])]


def _pde_from_kind(kind: str) -> str:
    for pde, variable in VARIABLE.items():
        if kind in (pde, variable):
            return pde
    raise InputError(f"kind {kind!r}: expected one of {', '.join([*VARIABLE, *VARIABLE.values()])}")


def _open_h5(path: Path, kind: str = "a netCDF4/HDF5"):
    """`path` opened read-only with h5py; InputError for a missing or unreadable file."""
    import h5py

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:  # truncated, corrupt, not HDF5/netCDF4
        raise InputError(f"{path}: cannot open as {kind} file ({err})") from None


class PDEGymReader:
    """Lazy reader over one or more PDEGym files holding the same data set.

    Attributes: `paths` (files in sample order), `pde`, `variable`, `n_samples`, `n_times`,
    `resolution` `(H, W)`, `channels` (model channels), `times` (stored, or `k/(n_times-1)`).
    Opening checks structure only; `validate()` checks every value.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, source: str | os.PathLike | None = None):
        if not paths:
            raise InputError(f"{source}: no PDEGym files (data_K.nc / velocity_K.nc) found")
        self.source = Path(source) if source is not None else Path(paths[0])
        self.paths = [Path(p) for p in paths]
        counts = []
        for path in self.paths:
            pde, shape, file_times = self._inspect(path)
            if not counts:
                reference, times = (pde, shape[1:]), file_times
            elif (pde, shape[1:]) != reference:
                raise InputError(f"{path}: layout {pde} {shape[1:]} differs from {self.paths[0]} "
                                 f"({reference[0]} {reference[1]})")
            counts.append(shape[0])
        self.pde: str = reference[0]
        self.variable = VARIABLE[self.pde]
        self.n_times, _, nx, ny = reference[1]
        self.n_samples = sum(counts)
        self.resolution = (ny, nx)  # (H, W): x runs along W
        self.channels = pde_spec(self.pde).channels
        self.times = times if times is not None else np.linspace(0.0, 1.0, self.n_times)
        self._starts = np.cumsum([0, *counts[:-1]])

    @staticmethod
    def _inspect(path: Path) -> tuple[str, tuple[int, ...], np.ndarray | None]:
        """`(pde, shape, times)` of a file; InputError naming what does not fit."""
        try:
            with _open_h5(path) as handle:
                present = [name for name in VARIABLE.values() if name in handle]
                if len(present) != 1:
                    expected = " or ".join(f"{kind!r} ({pde})" for pde, kind in VARIABLE.items())
                    raise InputError(f"{path}: expected exactly one variable {expected}, "
                                     f"found {sorted(handle.keys())}")
                pde, dataset = _pde_from_kind(present[0]), handle[present[0]]
                shape = tuple(int(s) for s in dataset.shape)
                where = f"{path}: variable {present[0]!r}"
                if len(shape) != 5:
                    raise InputError(f"{where} has {len(shape)} dims {shape}; expected 5 {DIMS}")
                names = _dimension_names(dataset)
                if names is not None and names != DIMS:
                    raise InputError(f"{where} has dims {names}; expected {DIMS}")
                stored = STORED_CHANNELS[pde]
                if shape[2] != len(stored):
                    raise InputError(f"{where} has {shape[2]} channels; expected {len(stored)} "
                                     f"({', '.join(stored)})")
                if min(shape) <= 0:
                    raise InputError(f"{where} is empty {shape}")
                if dataset.dtype.kind != "f" or dataset.dtype.itemsize not in (4, 8):
                    raise InputError(f"{where} has dtype {dataset.dtype}; expected float32 or float64")
                if shape[1] < 2:
                    raise InputError(f"{path}: only {shape[1]} time snapshot(s); need at least 2")
                time = handle.get("time")
                # a netCDF4 dimension without coordinate values holds fill values
                if time is None or time.shape != (shape[1],) or "not a netCDF variable" in _text(
                        time.attrs.get("NAME", b"")):
                    return pde, shape, None
                return pde, shape, np.asarray(time[()], dtype=np.float64)
        except InputError:
            raise
        except _H5_ERRORS as err:  # a damaged object header (h5py: KeyError/RuntimeError)
            raise InputError(
                f"{path}: corrupt netCDF4/HDF5 file, cannot read its structure ({err})") from None

    def read(self, samples: int | slice | Iterable[int] | None = None,
             times: int | slice | Iterable[int] | None = None, *, stored: bool = False) -> np.ndarray:
        """Model channels float32 `[n, T, C, H, W]` (`stored`: the stored channels, CE 5, NS 3).

        `samples`/`times`: an int, a slice or a sequence of indices (any order, repeats
        allowed); None means all. InputError for out-of-range indices, unreadable data and
        non-finite values, naming the file and sample.
        """
        sample_idx, time_selection, time_inverse, out = _read_plan(
            self, samples, times, len(STORED_CHANNELS[self.pde]) if stored else self.channels)
        if out.size == 0:
            return out
        file_of = np.searchsorted(self._starts, sample_idx, side="right") - 1
        for file_number in np.unique(file_of):
            path = self.paths[file_number]
            with _open_h5(path) as handle:
                dataset = _variable(handle, self.variable, path)
                for row in np.flatnonzero(file_of == file_number):
                    local = int(sample_idx[row] - self._starts[file_number])
                    try:
                        values = np.asarray(dataset[local, time_selection], dtype=np.float32)
                    except _H5_ERRORS as err:
                        raise InputError(
                            f"{path}: cannot read sample {local} ({err}); truncated or corrupt?"
                        ) from None
                    values = np.swapaxes(values[time_inverse], -1, -2)  # [T, C_stored, H=Y, W=X]
                    if stored:
                        out[row] = values
                        continue
                    if not np.all(np.isfinite(values)):
                        raise InputError(f"{path}: sample {local} contains NaN or Inf values")
                    out[row] = stored_to_model(self.pde, values, axis=1)
        return out

    def read_stored(self, samples=None, times=None) -> np.ndarray:
        """`read(samples, times, stored=True)`: the stored channels `[n, T, C_stored, H, W]`."""
        return self.read(samples, times, stored=True)

    #: `validate(*, block=16, progress=False, cache=None)`: check every value of each file not
    #: yet validated (`pdeinf.data.validation`); InputError naming file, variable, sample and time.
    validate = validate_reader

    def __repr__(self) -> str:
        return (
            f"PDEGymReader({str(self.source)!r}, pde={self.pde}, files={len(self.paths)}, "
            f"n_samples={self.n_samples}, n_times={self.n_times}, resolution={self.resolution})"
        )


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _variable(handle, name: str, path: Path):
    try:
        return handle[name]
    except _H5_ERRORS as err:
        raise InputError(
            f"{path}: corrupt netCDF4/HDF5 file, cannot open variable {name!r} ({err})") from None


def _dimension_names(dataset) -> tuple[str, ...] | None:
    """netCDF4 dimension names of an h5py dataset, or None when no scales are attached."""
    try:
        scales = [list(axis.values()) for axis in dataset.dims]
        if not all(scales):
            return None
        return tuple(axis[0].name.rsplit("/", 1)[-1] for axis in scales)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):
        return None  # exotic layouts: shape checks only


def _read_plan(reader, samples, times, channels: int):
    """`(sample indices, time selection, inverse, empty float32 out [n, T, channels, H, W])` of
    a read: h5py wants increasing, unique indices, so the sorted unique times are read once
    per sample (`time selection`) and `inverse` restores the requested order."""
    sample_idx = _as_indices(samples, reader.n_samples, "samples", reader.source)
    time_idx = _as_indices(times, reader.n_times, "times", reader.source)
    unique, inverse = np.unique(time_idx, return_inverse=True)
    contiguous = len(unique) and unique[-1] - unique[0] + 1 == len(unique)  # fast path: a slice
    selection = slice(int(unique[0]), int(unique[-1]) + 1) if contiguous else [int(i) for i in unique]
    out = np.empty((len(sample_idx), len(time_idx), channels, *reader.resolution), np.float32)
    return sample_idx, selection, inverse, out


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
    """A reader for a chunk file, a directory of chunk files (numeric order), or an assembled
    file such as `CE-RP.nc`. InputError for a missing/corrupt/ill-shaped file."""
    path = Path(path)
    return PDEGymReader(chunk_files(path) if path.is_dir() else [path], source=path)


def write_chunk(path: str | os.PathLike, array: np.ndarray, kind: str,
                times: Sequence[float] | np.ndarray, *, attrs: dict | None = None) -> Path:
    """Write one PDEGym-layout file (to a temporary name, then renamed); returns the path.

    `array` has x along W: CE primitive `[n, T, 5, H, W]` (rho, vx, vy, p, E); NS velocity
    `[n, T, 2, H, W]` (a zero tracer is added, marked as not simulated) or `[n, T, 3, H, W]`.
    `kind`: "CE"/"data" or "NS"/"velocity"; `times` length T; `attrs`: global attributes.
    """
    pde = _pde_from_kind(kind)
    path = Path(path)
    array = np.asarray(array)
    accepted = _accepted_channels(pde)
    if array.ndim != 5 or array.shape[2] not in accepted:
        optional = f"; the {OPTIONAL_STORED} may be left out" if len(accepted) > 1 else ""
        raise InputError(f"{path}: {pde} array must be [n, T, C, H, W] with C = "
                         f"{' or '.join(map(str, accepted))} channels "
                         f"({', '.join(STORED_CHANNELS[pde])}{optional}), got shape {array.shape}")
    if min(array.shape) <= 0:
        raise InputError(f"{path}: empty array {array.shape}")
    n, n_times, n_channels, height, width = array.shape
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (n_times,):
        raise InputError(f"{path}: times has shape {times.shape}; expected ({n_times},)")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: array contains NaN or Inf values")
    writer = ChunkWriter(path, pde, n, times, (height, width), attrs=attrs,
                         tracer_simulated=n_channels == accepted[0])
    try:
        writer.put(0, array)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _accepted_channels(pde: str) -> tuple[int, ...]:
    """Stored channel counts a writer accepts: all, or all but a trailing optional tracer."""
    stored = STORED_CHANNELS[pde]
    return (len(stored), len(stored) - 1) if stored[-1] == OPTIONAL_STORED else (len(stored),)


class ChunkWriter:
    """Writes a PDEGym file one batch at a time under a temporary name; `close()` renames it,
    `abort()` deletes it. `put(start, array)`: `[b, T, C, H, W]` stored channels (x along W;
    CE 5, NS 2 or 3) for samples `start .. start+b-1`.
    """

    def __init__(self, path, kind: str, n_samples: int, times, resolution: tuple[int, int], *,
                 attrs: dict | None = None, tracer_simulated: bool = False):
        import h5netcdf

        self.pde = _pde_from_kind(kind)
        self.path = Path(path)
        self.n_samples = int(n_samples)
        self.times = np.asarray(times, dtype=np.float64)
        height, width = self.resolution = tuple(int(size) for size in resolution)
        stored = STORED_CHANNELS[self.pde]
        self.n_stored = len(stored)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._handle = handle = h5netcdf.File(self.temporary, "w")
        handle.dimensions = {"sample": self.n_samples, "time": len(self.times), "channel": self.n_stored,
                             "x": width, "y": height}
        coordinates = {"time": self.times, "x": (np.arange(width) + 0.5) / width,
                       "y": (np.arange(height) + 0.5) / height, "channel": np.arange(self.n_stored)}
        for name, values in coordinates.items():
            handle.create_variable(name, (name,), values.dtype)[...] = values
        for name in ("x", "y"):
            handle.variables[name].attrs["description"] = "cell centres on the unit square (periodic)"
        handle.variables["channel"].attrs["names"] = " ".join(stored)
        self._variable = variable = handle.create_variable(
            VARIABLE[self.pde], DIMS, "f4", chunks=(1, 1, self.n_stored, width, height))
        variable.attrs["channels"] = " ".join(stored)
        variable.attrs["axis_order"] = "sample, time, channel, x, y (first spatial index is x)"
        variable.attrs["description"] = ", ".join(STORED_DESCRIPTIONS.get(n, n) for n in stored)
        if OPTIONAL_STORED in stored and not tracer_simulated:
            variable.attrs[OPTIONAL_STORED] = (
                f"not simulated: channel {stored.index(OPTIONAL_STORED)} is all zeros")
        handle.attrs["pde"] = self.pde
        handle.attrs["conventions"] = "PDEGym (Poseidon) layout, written by pdeinf"
        for key, value in (attrs or {}).items():
            handle.attrs[key] = value
        self._written = np.zeros(self.n_samples, bool)

    def put(self, start: int, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.float32)
        b = array.shape[0]
        if (array.ndim != 5 or array.shape[1] != len(self.times)
                or array.shape[2] not in _accepted_channels(self.pde)
                or array.shape[3:] != self.resolution or not 0 <= start <= start + b <= self.n_samples):
            raise InputError(f"{self.path}: put({start}, array {array.shape}) does not fit "
                             f"[{self.n_samples}, {len(self.times)}, {self.n_stored}, "
                             f"{self.resolution[0]}, {self.resolution[1]}]")
        stored = np.swapaxes(array, -1, -2)
        if stored.shape[2] == self.n_stored - 1:  # the optional tracer, last: zeros
            stored = np.concatenate([stored, np.zeros_like(stored[:, :, :1])], axis=2)
        try:
            self._variable[start:start + b] = stored
            self._handle.flush()
        except Exception as err:  # noqa: BLE001  (HDF5 wraps ENOSPC in several types; re-raised)
            self._fail(err, stored.nbytes)
        self._written[start:start + b] = True

    def close(self) -> Path:
        if not self._written.all():
            self.abort()
            raise RuntimeError(f"{self.path}: not all {self.n_samples} samples were written")
        try:
            self._handle.close()
        except Exception as err:  # noqa: BLE001  (as in `put`: re-raised unless the disk is full)
            self._fail(err, None)
        os.replace(self.temporary, self.path)
        return self.path

    def _fail(self, err: Exception, needed) -> None:
        """Remove the partial file; a full disk becomes one `DiskFullError` line."""
        from pdeinf.storage import disk_full, is_no_space

        with contextlib.suppress(Exception):
            self.abort()
        if is_no_space(err):
            raise disk_full(self.path.parent, needed) from None
        raise err

    def abort(self) -> None:
        try:
            self._handle.close()
        finally:
            if self.temporary.exists():
                self.temporary.unlink()
