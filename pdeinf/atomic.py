"""Write files under a temporary name in the same folder, then rename: a reader never sees a
half-written file under its final name, and an interrupted write leaves nothing behind."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_netcdf(obj, path: Path | str) -> Path:
    """An xarray Dataset/DataArray to netCDF4 (h5netcdf engine), atomically."""
    return atomic_write(path, lambda tmp: obj.to_netcdf(tmp, engine="h5netcdf"))


def write_bytes(path: Path | str, payload: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload))
