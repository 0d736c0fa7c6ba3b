"""Checksums of the arrays a result file holds, stored in the file and verified on load, so a
file whose bytes changed (a flipped block on disk, a hand edit) is never read back as valid."""
from __future__ import annotations

import hashlib

import numpy as np

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


def checksum_ok(ds) -> bool:
    stored = ds.attrs.get(CHECKSUM_ATTR)
    return stored is not None and stored == dataset_checksum(ds)


def require_finite(ds, name: str, what: str) -> None:
    """NumericalError naming `what` unless every value of `ds[name]` is finite: a result that
    must be finite and is not is never cached."""
    from pdeinf.errors import NumericalError

    values = np.asarray(ds[name].values)
    bad = int(values.size - np.isfinite(values).sum())
    if bad:
        raise NumericalError(f"{what}: {bad} of {values.size} values of {name} are NaN or Inf; "
                             "not cached")


def load_keyed(path, key: str, variables=()):
    """The dataset cached at `path`, loaded, when it opens, records `cache_key` == `key`, holds
    every name of `variables` and passes its checksum; else None (missing, stale, corrupt or
    foreign: the caller recomputes it)."""
    from pathlib import Path

    import xarray as xr

    if not Path(path).is_file():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception:  # noqa: BLE001 - unreadable, truncated or foreign file: recompute it
        return None
    if ds.attrs.get("cache_key") != key or any(v not in ds for v in variables):
        return None
    return ds if checksum_ok(ds) else None

