"""Notebook runs: which notebooks exist, executing one with papermill, when an executed copy
is still current (its cache key), and what the closing table shows of a notebook: its figures
and its study's rows of the findings table (never the notebook's own results JSON)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from pdeinf import paths
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile

#: Source checkout holding the notebooks (they are read from here even when PDEINF_HOME
#: points elsewhere, e.g. the test suite's temporary home).
_CHECKOUT_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
_NOTEBOOK_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_\-]+\.ipynb$")


def notebooks_source() -> Path:
    """Directory the notebooks are read from: ``$PDEINF_HOME/notebooks`` when it exists,
    else the source checkout's ``notebooks/``."""
    home = paths.root() / "notebooks"
    return home if home.is_dir() else _CHECKOUT_NOTEBOOKS


def list_notebooks(selection: Iterable[str] | str | None = None, *, source: Path | None = None):
    """The numbered notebooks (``NN_name.ipynb``) in order, optionally restricted to a
    selection of numbers or names (``"03,04"``, ``["03", "04_horizon"]``)."""
    source = Path(source) if source is not None else notebooks_source()
    available = sorted(p for p in source.glob("*.ipynb") if _NOTEBOOK_NAME.match(p.name))
    if selection is None:
        return available
    wanted = [s.strip() for s in (selection.split(",") if isinstance(selection, str) else selection)
              if s.strip()]
    if not wanted:
        raise InputError("notebooks: empty selection")
    chosen: set[Path] = set()
    for item in wanted:
        stem = item.removesuffix(".ipynb")
        matches = [p for p in available if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if len(matches) != 1:
            names = ", ".join(p.stem for p in available) or f"none in {source}"
            raise InputError(f"notebooks: {item!r} matches no notebook; available: {names}")
        chosen.add(matches[0])
    return sorted(chosen)


def executed_dir() -> Path:
    """Executed copies of the notebooks: ``results/executed/``."""
    return paths.results_dir() / "executed"


@contextlib.contextmanager
def kernel_environment(name: str, value: str, *, override: bool = True) -> Iterator[None]:
    """Kernels started meanwhile inherit `name=value` (override False: only where unset);
    restored afterwards. This process's own libraries read their settings at start-up."""
    saved = os.environ.get(name)
    if override or saved is None:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


#: Folders under results/ whose contents (per profile) notebooks read.
STAGE_FOLDERS = ("data", "runs", "influence", "rollouts", "symmetry", "estimator", "interventions",
                 "ablation")


def notebook_cache_key(notebook: Path | str, profile: ProfileLike) -> str:
    """What an executed notebook depends on: its cells (not their outputs), the profile, the
    package source, the profile's stage outputs (by path, size and mtime) and the findings
    table. Equal keys mean the executed copy and its figures are what a rerun would produce."""
    import nbformat

    from pdeinf.pipeline.findings import findings_path
    from pdeinf.pipeline.publish import source_cells

    profile = as_profile(profile)
    digest = hashlib.sha256()
    digest.update(json.dumps(source_cells(nbformat.read(notebook, as_version=4))).encode())
    digest.update(profile.name.encode())
    package = Path(__file__).resolve().parents[1]
    for source in sorted(package.rglob("*.py")):
        digest.update(source.read_bytes())
    for stage in STAGE_FOLDERS:
        root = paths.results_dir() / stage / profile.name
        for path in (sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else ()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    table = findings_path(profile)
    digest.update(table.read_bytes() if table.exists() else b"no findings table")
    return digest.hexdigest()


def _executed_is_current(notebook: Path, key: str) -> bool:
    """True when ``results/executed/<name>.ipynb`` was made with ``key`` and every figure it
    recorded (`run_notebook`) still exists."""
    import nbformat

    executed = executed_dir() / notebook.name
    try:
        stamp = nbformat.read(executed, as_version=4).metadata.get("pdeinf", {})
    except Exception:  # noqa: BLE001 - a missing or unreadable copy is simply not current
        return False
    return stamp.get("cache_key") == key and all(Path(f).exists() for f in stamp.get("figures", ()))


def run_notebook(notebook: Path | str, profile: ProfileLike, *, progress: bool = True,
                 cache_key: str | None = None) -> Path:
    """Execute one notebook with papermill at ``profile`` (kernel ``python3``, parameters
    ``{"profile": <name>}``, cwd its folder); returns the executed copy
    ``results/executed/<name>.ipynb``, written under a temporary name and renamed. On failure
    it is kept as ``<name>.failed.ipynb`` and the papermill error propagates. With
    ``cache_key``, the copy's metadata records it and the notebook's figures."""
    import papermill as pm

    profile = as_profile(profile)
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise InputError(f"notebook: {notebook} does not exist")
    out_dir = executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / notebook.name
    partial = out_dir / f".{notebook.stem}.{os.getpid()}.partial.ipynb"
    failed = out_dir / f"{notebook.stem}.failed.ipynb"
    try:
        with kernel_environment("MPLBACKEND", "Agg", override=False):  # headless kernel
            # the kernel's own log (transport warnings, shutdown interrupts) stays off the
            # console; cell errors still reach the executed copy and the exception
            pm.execute_notebook(str(notebook), str(partial), parameters={"profile": profile.name},
                                kernel_name="python3", cwd=str(notebook.parent),
                                progress_bar=progress,
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    if cache_key is not None:
        import nbformat

        executed = nbformat.read(partial, as_version=4)
        executed.metadata.setdefault("pdeinf", {}).update(
            cache_key=cache_key, figures=notebook_figures(notebook, profile))
        nbformat.write(executed, partial)
    os.replace(partial, final)
    failed.unlink(missing_ok=True)
    return final


def notebook_figures(notebook: Path | str, profile: ProfileLike) -> list[str]:
    """The figures of `notebook` in the profile's figures folder (files ``NN_*`` of its number
    ``NN``): the PNGs, or the PDF / SVG files where it has no PNG."""
    number = Path(notebook).stem.split("_", 1)[0]
    found = sorted(p for p in paths.figures_dir(as_profile(profile).name).glob(f"{number}_*")
                   if p.suffix in (".png", ".pdf", ".svg") and p.is_file())
    return [str(p) for p in found if p.suffix == ".png"] or [str(p) for p in found]


def findings_rows(profile: ProfileLike, notebook: str) -> list[dict] | None:
    """The rows of study `notebook` (a stem) in the profile's findings table; None when the
    table is absent or unreadable."""
    from pdeinf.pipeline.findings import findings_path

    try:
        return [r for r in json.loads(findings_path(profile).read_text())["findings"]
                if r["notebook"] == notebook]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize_notebook(notebook: Path | str, *, max_numbers: int = 4,
                       profile: ProfileLike = None) -> dict:
    """What the closing table shows of `notebook` at `profile`: its figures
    (`notebook_figures`) and, as its key numbers, the estimates of the first `max_numbers` rows
    of its study in the profile's findings table (`pipeline.findings`), keyed by `row_name`;
    ``results`` is that table's path when it holds such rows."""
    from pdeinf.pipeline.findings import findings_path, row_name

    stem = Path(notebook).stem
    out = {"notebook": stem, "figures": notebook_figures(notebook, profile), "numbers": {},
           "results": None}
    if rows := findings_rows(profile, stem):
        shown = [r for r in rows if isinstance(r.get("estimate"), (int, float))][:max_numbers]
        out["numbers"] = {row_name(r): float(r["estimate"]) for r in shown}
        out["results"] = str(findings_path(profile))
    return out
