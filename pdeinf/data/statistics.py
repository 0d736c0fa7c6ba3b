"""Per-class data statistics, beside the measured statistics of the released PDEGym data.

`PDEGYM_STATISTICS[name][quantity] = (mean, std)` over all samples, times and pixels of the
released files (camlab-ethz/Phaedra configs). Quantities: rho, vx, vy, p (CE), vx, vy (NS).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pdeinf.checks import one_of
from pdeinf.config import PDE_CLASSES, pde_spec
from pdeinf.errors import InputError

PDEGYM_STATISTICS: dict[str, dict[str, tuple[float, float]]] = {
    "CE-RP": {"rho": (1.25204, 0.54691), "vx": (0.008658, 0.258274),
              "vy": (0.005984, 0.256082), "p": (0.208898, 0.114176)},
    # the source gives rho mean 0.5482-0.5519 and std 0.3227-0.3230 (two measurements): midpoints
    "CE-CRP": {"rho": (0.55005, 0.32285), "vx": (0.00042, 0.275455),
               "vy": (0.00263, 0.275455), "p": (0.552022, 0.169886)},
    "CE-RPUI": {"rho": (0.543686, 0.361854), "vx": (-0.00332, 0.210691),
                "vy": (0.00215, 0.215305), "p": (0.548822, 0.199823)},
    "NS-Gauss": {"vx": (0.0, 0.61475), "vy": (0.0, 0.607624)},
    "NS-Sines": {"vx": (0.0, 0.335339), "vy": (0.0, 0.334732)},
    "NS-BB": {},  # not measured in the sources
}


def _quantities(pde: str, batch: np.ndarray, gamma: float) -> dict[str, np.ndarray]:
    """Model channels `[n, T, C, H, W]` -> the tabulated quantities (float64): rho, vx, vy, p
    (CE) or vx, vy (NS); `gamma` is the reader's gas (The Well's may differ from the PDE's)."""
    spec = pde_spec(pde)
    batch = batch.astype(np.float64)
    rho = batch[:, :, spec.density_channel] if spec.compressible else None
    out: dict[str, np.ndarray] = {} if rho is None else {"rho": rho}
    for channel, axis in spec.vector_axes.items():  # momentum (CE) or velocity (NS) components
        component = batch[:, :, channel] if rho is None else batch[:, :, channel] / rho
        out["vx" if axis == -1 else "vy"] = component
    if spec.compressible:
        kinetic = 0.5 * rho * (out["vx"] ** 2 + out["vy"] ** 2)
        out["p"] = (gamma - 1.0) * (batch[:, :, spec.energy_channel] - kinetic)
    return out


def reader_statistics(reader, *, times=None, max_samples: int | None = None) -> dict[str, float]:
    """Mean and population std of each quantity over samples, `times` (default all) and
    pixels, 8 samples at a time (float64 sums); also min of rho and p (CE). The gas is the
    reader's (`gamma`, The Well's) or the PDE's."""
    gamma = float(getattr(reader, "gamma", None) or pde_spec(reader.pde).gamma or 1.0)  # 1.0: NS
    n = reader.n_samples if max_samples is None else min(int(max_samples), reader.n_samples)
    if n <= 0:
        raise InputError(f"max_samples={max_samples}: must be positive")
    sums: dict[str, list[float]] = {}
    minima: dict[str, float] = {}
    count = 0
    for start in range(0, n, 8):
        batch = reader.read(range(start, min(start + 8, n)), times)
        for name, values in _quantities(reader.pde, batch, gamma).items():
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += float(values.sum())
            total[1] += float((values**2).sum())
            minima[name] = min(minima.get(name, np.inf), float(values.min()))
        count += batch[:, :, 0].size
    row: dict[str, float] = {"n_samples": n}
    for name, (total, squares) in sums.items():
        mean = total / count
        row[f"{name}_mean"] = mean
        row[f"{name}_std"] = float(np.sqrt(max(squares / count - mean**2, 0.0)))
    if pde_spec(reader.pde).compressible:
        row["rho_min"], row["p_min"] = minima["rho"], minima["p"]
    return row


def class_readers(root: Path, pdes) -> dict:
    """`{class: reader}` of every class of `pdes` found under `root` (`<CLASS>/` or `<CLASS>.nc`)."""
    from pdeinf.data.pdegym import open_dataset

    readers = {}
    for p in pdes:
        for cls in PDE_CLASSES[one_of(p, PDE_CLASSES, "pde")]:
            found = next((c for c in (root / cls, root / f"{cls}.nc") if c.exists()), None)
            if found:
                readers[cls] = open_dataset(found)
    return readers


def class_statistics(source, pde: str | None = None, *, times=None, max_samples: int | None = None
                     ) -> pd.DataFrame:
    """One row per data set: `<q>_mean`, `<q>_std`, `n_samples` (and `rho_min`, `p_min` for CE).

    `source`: a data root holding `<CLASS>/` or `<CLASS>.nc` (of `pde`, or of every PDE present),
    a `PDEData`, a reader, or a mapping `{name: reader}`.
    """
    from pdeinf.data.datasets import PDEData

    if isinstance(source, PDEData):
        readers = {cls: source.reader(cls) for cls in source.classes}
    elif isinstance(source, dict):
        readers = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise InputError(f"{root}: not a directory")
        readers = class_readers(root, [pde] if pde else list(PDE_CLASSES))
        if not readers:
            raise InputError(
                f"{root}: no class directories or files ({', '.join(sum(PDE_CLASSES.values(), ()))})")
    elif hasattr(source, "read") and hasattr(source, "n_samples"):
        readers = {Path(getattr(source, "source", "data")).stem: source}
    else:
        raise InputError(
            f"source: expected a directory, PDEData, reader or mapping, got {type(source).__name__}")
    rows = {name: reader_statistics(reader, times=times, max_samples=max_samples)
            for name, reader in readers.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "class"
    return frame


def compare_to_pdegym(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (class, quantity): our mean/std beside PDEGym's (NaN where unknown) and the
    ratio of stds."""
    records = []
    for name, row in df.iterrows():
        reference = PDEGYM_STATISTICS.get(str(name), {})
        for quantity in ("rho", "vx", "vy", "p"):
            if f"{quantity}_mean" not in row or pd.isna(row[f"{quantity}_mean"]):
                continue
            ref_mean, ref_std = reference.get(quantity, (np.nan, np.nan))
            records.append({
                "class": name, "quantity": quantity,
                "ours_mean": row[f"{quantity}_mean"], "pdegym_mean": ref_mean,
                "ours_std": row[f"{quantity}_std"], "pdegym_std": ref_std,
                "std_ratio": np.nan if np.isnan(ref_std) else row[f"{quantity}_std"] / ref_std,
            })
    return pd.DataFrame.from_records(records).set_index(["class", "quantity"])
