"""Writing the notebooks' outputs (atomically): figures (PNG + PDF), key numbers (JSON per
notebook, for users; the pipeline reads none of it), and `NotebookRun`, what every notebook sets
up from its parameters cell."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pdeinf import paths
from pdeinf.atomic import atomic_write, write_text
from pdeinf.config import check_model, check_pde, get_profile
from pdeinf.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

#: No creation dates or software versions in the files: an unchanged figure is byte-identical
#: on a rerun, so committed figures only change when their content does.
_STABLE_METADATA = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
    "svg": {"Date": None, "Creator": None},
}
#: When set, the folder `save_figure` writes to instead of the profile's figures folder: `make
#: check-notebooks` points it at a scratch folder, so a check never rewrites committed figures.
FIGURE_DIR_VARIABLE = "PDEINF_FIGURE_DIR"


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".png", ".pdf", ".json")):
        raise InputError(f"{what}: {name!r} is not a plain file stem (letters, digits, _ . -)")
    return name


def save_figure(fig, name: str, *, formats=("png", "pdf"), dpi: int = 150,
                profile: str | None = None) -> list[Path]:
    """Write `paths.figures_dir(profile)/<name>.<fmt>` for each format (`$PDEINF_FIGURE_DIR`
    instead when set, a relative one under the project root); returns the paths."""
    _check_name(name, "name")
    folder = paths.root() / (os.environ.get(FIGURE_DIR_VARIABLE) or paths.figures_dir(profile))
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: not a folder (${FIGURE_DIR_VARIABLE} or the figures folder)")
    out = []
    for fmt in formats:
        if fmt not in _STABLE_METADATA:
            raise InputError(f"formats: unsupported {fmt!r} (png, pdf, svg)")
        out.append(atomic_write(folder / f"{name}.{fmt}", lambda tmp, f=fmt: fig.savefig(
            tmp, format=f, dpi=dpi, bbox_inches="tight", metadata=_STABLE_METADATA[f])))
    return out


def to_jsonable(value):
    """Numbers, arrays, xarray / pandas objects and nested containers -> JSON-safe values:
    non-finite floats -> None, tuple keys joined with "/"; InputError for anything else."""
    if isinstance(value, (pd.Series, pd.DataFrame)):
        value = value.to_dict()
    elif hasattr(value, "values") and hasattr(value, "dims"):  # xarray DataArray
        value = np.asarray(value.values)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {("/".join(map(str, k)) if isinstance(k, tuple) else str(k)): to_jsonable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise InputError(f"results: value of type {type(value).__name__} is not JSON-representable")


def write_results(notebook: str, results: dict) -> Path:
    """Write `paths.results_dir()/<notebook>.json` (sorted keys, NaN/Inf -> null)."""
    _check_name(notebook, "notebook")
    if not isinstance(results, dict):
        raise InputError(f"results: expected a dict, got {type(results).__name__}")
    text = json.dumps(to_jsonable(results), indent=2, sort_keys=True, allow_nan=False)
    return write_text(paths.results_dir() / f"{notebook}.json", text + "\n")


def read_results(notebook: str) -> dict:
    path = paths.results_dir() / f"{_check_name(notebook, 'notebook')}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no results written yet") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def _leaves(value, prefix: str = ""):
    """`(dotted key, value)` of every non-dict value nested in `value`."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    return [leaf for key, sub in value.items()
            for leaf in _leaves(sub, f"{prefix}.{key}" if prefix else str(key))]


def results_table() -> pd.DataFrame:
    """Every `results/<notebook>.json` flattened: columns notebook, key (dotted path), value."""
    rows = [(path.stem, key, value) for path in sorted(paths.results_dir().glob("*.json"))
            for key, value in _leaves(read_results(path.stem))]
    return pd.DataFrame(rows, columns=["notebook", "key", "value"])


def _names(value, default) -> list[str]:
    """None/"" -> the profile's default; "CE,NS" (as papermill -p passes it) or a list -> names."""
    if not value:
        return list(default)
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


class NotebookRun:
    """What every notebook sets up from its `parameters` cell: the profile, the selected PDEs
    and models, the results dict written at the end, and `save(fig, name)` which shows a
    figure and writes it to the profile's figures folder (`paths.figures_dir`; PNG and PDF),
    recording the paths in the results."""

    def __init__(self, profile=None, pdes=None, models=None):
        self.profile = get_profile(profile)
        self.pdes = [check_pde(p) for p in _names(pdes, self.profile.pdes)]
        self.models = [check_model(m) for m in _names(models, self.profile.models)]
        self.pairs = [(pde, model) for pde in self.pdes for model in self.models]
        self.results: dict = {"profile": self.profile.name, "figures": []}

    def save(self, fig, name: str) -> None:
        from IPython.display import display

        display(fig)
        self.results["figures"] += [str(p) for p in save_figure(fig, name,
                                                                profile=self.profile.name)]
