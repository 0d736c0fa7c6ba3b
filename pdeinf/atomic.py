"""The one way pdeinf writes a file: under a temporary name ``.<name>.<pid>.tmp`` in the same
folder, fsynced, then renamed. A reader never sees a half-written file under its final name; an
interrupted write leaves at most a temporary file whose writer (the pid) is gone, removed by
`remove_stale_temporaries` (never a live run's). Files get the process umask (no 0600 from
`tempfile.mkstemp`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from pdeinf.storage import DiskFullError, disk_full, free_bytes, is_no_space

#: Result datasets up to this size are serialised in memory first: a full disk then fails in
#: a plain file write (one clear error), never inside the HDF5 library.
IN_MEMORY_NETCDF = 256 << 20

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temporary_path(path: Path | str) -> Path:
    """The temporary name `atomic_write` uses for `path` in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path | str, write: Callable[[Path], object], *,
                 size: float | None = None) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path` (any way: savefig, to_netcdf,
    open), fsync it, rename it to `path`; returns `path`. On any exception (KeyboardInterrupt
    included) the temporary file is removed. `size`: the bytes the write needs, when known,
    checked against the free space first. A full disk (or quota) raises
    `pdeinf.storage.DiskFullError` naming the folder and the space."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None and free_bytes(path.parent) < size:
            raise disk_full(path.parent, size)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # some file systems do not open directories
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except Exception as err:
        if is_no_space(err) and not isinstance(err, DiskFullError):
            raise disk_full(path.parent, size) from None
        raise
    finally:
        with contextlib.suppress(NotADirectoryError):  # a parent that is a file: mkdir's error
            tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: Path | str, payload: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload), size=len(payload))


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path | str, obj, **kwargs) -> Path:
    """Strict JSON (no NaN) unless `allow_nan=True` is passed; indent 2 by default."""
    return write_text(path, json.dumps(obj, **{"indent": 2, "allow_nan": False, **kwargs}) + "\n")


def write_netcdf(obj, path: Path | str) -> Path:
    """An xarray Dataset/DataArray to netCDF4 (h5netcdf engine), atomically: serialised in memory
    up to `IN_MEMORY_NETCDF` bytes, else written by the library after a free-space check."""
    if obj.nbytes <= IN_MEMORY_NETCDF:
        return write_bytes(path, bytes(obj.to_netcdf(engine="h5netcdf")))
    return atomic_write(path, lambda tmp: obj.to_netcdf(tmp, engine="h5netcdf"), size=obj.nbytes)


def torch_save(obj, path: Path | str) -> Path:
    """`torch.save(obj)` atomically (serialised in memory first)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (owned by anyone) and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(directory: Path | str, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files of `atomic_write` whose writing process no longer exists
    (those of live processes are left alone); returns the removed paths."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for candidate in (directory.rglob if recursive else directory.glob)(".*.tmp"):
        match = _TMP.match(candidate.name)
        if match and candidate.is_file() and not process_alive(int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
