"""The result files of the pipeline's stages: one netCDF per task recording `cache_key` (the
`common.content_key` of its inputs) and a checksum of its arrays, so a file of other inputs or
whose bytes changed is never read back as valid. `ensure_cached` is the one loop of every stage:
keep what is valid, compute exactly what is missing, stale or corrupt, write it atomically."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pdeinf.errors import InputError, NumericalError

CHECKSUM_ATTR = "pdeinf_checksum"


def dataset_checksum(ds) -> str:
    """blake2b over every data variable's name, dims and values (canonical little-endian)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(ds.data_vars):
        var = ds[name]
        values = np.ascontiguousarray(np.asarray(var.values))
        if values.dtype.kind in "fc":
            values = values.astype(values.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{name}{var.dims}{values.dtype.str}{values.shape}".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def with_checksum(ds):
    """`ds` with its checksum recorded in `attrs`."""
    ds.attrs[CHECKSUM_ATTR] = dataset_checksum(ds)
    return ds


def require_finite(ds, name: str, what: str) -> None:
    """NumericalError naming `what` unless every value of `ds[name]` is finite: a result that
    must be finite and is not is never cached."""
    values = np.asarray(ds[name].values)
    if bad := int(values.size - np.isfinite(values).sum()):
        raise NumericalError(f"{what}: {bad} of {values.size} values of {name} are NaN or Inf; "
                             "not cached")


def _open(path):
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def load_keyed(path, key: str | None, variables=(), finite=()):
    """The dataset cached at `path`, loaded, when it opens, records `cache_key` == `key` (None:
    any key), holds every name of `variables`, passes its checksum and holds only finite values
    in each name of `finite`; else None (missing, stale, corrupt or foreign: recompute it)."""
    try:
        ds = _open(path)
    except Exception:  # noqa: BLE001 - missing, unreadable, truncated or foreign: recompute it
        return None
    if key is not None and ds.attrs.get("cache_key") != key or any(v not in ds for v in variables):
        return None
    if ds.attrs.get(CHECKSUM_ATTR) != dataset_checksum(ds):
        return None
    return ds if all(np.isfinite(ds[v].values).all() for v in finite) else None


class Cached(NamedTuple):
    """One result file: the task `id` it holds, its `path` and the content `key` of its inputs
    (None when loading: any key)."""

    id: Hashable
    path: Path
    key: str | None = None


def ensure_cached(tasks: Iterable[Cached], compute: Callable, *, variables=(), finite=(),
                  desc: str = "", unit: str = "task", progress: bool = True, load: bool = True,
                  written: Callable | None = None) -> dict:
    """Every task's file made valid: those that are (`load_keyed`) are kept; the others are
    computed in order under one progress bar by `compute(task) -> xr.Dataset`, recorded with the
    task's key and a checksum, written atomically, then `written(task)` is called. Tasks sharing
    a path are computed once. Returns {task.id: dataset} (`load`), else {task.id: path}."""
    from tqdm.auto import tqdm

    from pdeinf.atomic import write_netcdf

    tasks = list(tasks)
    held, todo = {}, {}
    for task in tasks:
        if task.path not in held and task.path not in todo:
            ds = load_keyed(task.path, task.key, variables, finite)
            if ds is None:
                todo[task.path] = task
            else:
                held[task.path] = ds if load else task.path
    for task in tqdm(list(todo.values()), desc=desc, unit=unit, disable=not progress):
        ds = compute(task)
        ds.attrs["cache_key"] = task.key
        write_netcdf(with_checksum(ds), task.path)
        if written is not None:
            written(task)
        held[task.path] = _open(task.path) if load else task.path
    return {task.id: held[task.path] for task in tasks}


def load_cached(tasks: Iterable[Cached], *, variables=(), finite=(), what: str, hint: str) -> dict:
    """{task.id: dataset} of `tasks`, every file valid (`load_keyed`); else one InputError
    naming the first that is not, how many are not, and `hint` (how to make them)."""
    tasks = list(tasks)
    held = {t.id: load_keyed(t.path, t.key, variables, finite) for t in tasks}
    bad = [t.path for t in tasks if held[t.id] is None]
    if bad:
        why = "missing, stale or corrupt" if any(t.key for t in tasks) else "missing or corrupt"
        raise InputError(f"{bad[0]}: {what} {why} ({len(bad)} of {len(tasks)}); run {hint}")
    return held


def stack(parts: dict, dims: tuple[str, ...], **concat):
    """Datasets keyed by tuples of task coordinates (outermost first, in order of first
    appearance) concatenated along `dims` (`xr.concat` with `concat`), innermost first."""
    import xarray as xr

    if not dims:
        return next(iter(parts.values()))
    heads = dict.fromkeys(k[0] for k in parts)
    return xr.concat([stack({k[1:]: v for k, v in parts.items() if k[0] == h}, dims[1:], **concat)
                      for h in heads], dim=dims[0], **concat)
