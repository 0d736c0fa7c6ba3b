"""Notebook runs: which notebooks exist, executing one with papermill, when an executed copy
is still current (its cache key), and what the closing table shows of its results JSON."""
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
    home = paths.notebooks_dir()
    return home if home.is_dir() else _CHECKOUT_NOTEBOOKS


def list_notebooks(selection: Iterable[str] | str | None = None, *, source: Path | None = None):
    """The numbered notebooks (``NN_name.ipynb``) in order, optionally restricted to a
    selection of numbers or names (``"03,04"``, ``["03", "04_horizon"]``)."""
    source = Path(source) if source is not None else notebooks_source()
    available = sorted(p for p in source.glob("*.ipynb") if _NOTEBOOK_NAME.match(p.name))
    if selection is None:
        return available
    if isinstance(selection, str):
        selection = [s for s in selection.split(",")]
    wanted = [s.strip() for s in selection if s.strip()]
    if not wanted:
        raise InputError("notebooks: empty selection")
    chosen: list[Path] = []
    for item in wanted:
        stem = item.removesuffix(".ipynb")
        matches = [p for p in available if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if len(matches) != 1:
            names = ", ".join(p.stem for p in available) or f"none in {source}"
            raise InputError(f"notebooks: {item!r} matches no notebook; available: {names}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return sorted(chosen)


def executed_dir() -> Path:
    """Executed copies of the notebooks: ``results/executed/``."""
    return paths.results_dir() / "executed"


def notebook_results_path(notebook: Path | str) -> Path:
    """``results/<notebook stem>.json``, written by the notebook itself."""
    return paths.results_dir() / f"{Path(notebook).stem}.json"


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


def _headless_env():
    """The kernel inherits our environment: make matplotlib headless for its lifetime."""
    return kernel_environment("MPLBACKEND", "Agg", override=False)


def _tree_signature(root: Path, digest) -> None:
    """Feed (relative path, size, mtime) of every file under ``root`` into ``digest``."""
    if not root.exists():
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())


#: Folders under results/ whose contents (per profile) notebooks read.
STAGE_FOLDERS = ("data", "runs", "influence", "rollouts", "symmetry", "estimator", "interventions",
                 "ablation")


def notebook_cache_key(notebook: Path | str, profile: ProfileLike) -> str:
    """What an executed notebook depends on: its cells (not the outputs they hold), the profile, the package source,
    the stage outputs of the profile (by path, size and mtime) and the findings table. Equal
    keys mean the executed copy, its figures and its results JSON are still what a rerun would
    produce."""
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
        _tree_signature(paths.results_dir() / stage / profile.name, digest)
    table = findings_path(profile)
    digest.update(table.read_bytes() if table.exists() else b"no findings table")
    return digest.hexdigest()


def _executed_is_current(notebook: Path, key: str) -> bool:
    """True when ``results/executed/<name>.ipynb`` was made with ``key`` and the results
    JSON and every figure it names still exist."""
    import nbformat

    executed = executed_dir() / notebook.name
    results = notebook_results_path(notebook)
    if not executed.is_file() or not results.is_file():
        return False
    try:
        stored = nbformat.read(executed, as_version=4).metadata.get("pdeinf", {}).get("cache_key")
        figures = figures_of(json.loads(results.read_text()))
    except Exception:  # noqa: BLE001 - an unreadable copy is simply not current
        return False
    return stored == key and all(Path(f).exists() for f in figures)


def run_notebook(
    notebook: Path | str,
    profile: ProfileLike,
    *,
    progress: bool = True,
    timeout: float | None = None,
    cache_key: str | None = None,
) -> Path:
    """Execute one notebook with papermill at ``profile``; returns the executed copy
    ``results/executed/<name>.ipynb``.

    Kernel ``python3``, parameters ``{"profile": <name>}``, cwd = the notebook's folder,
    absolute paths throughout. The copy is written under a temporary name and renamed; on
    failure it is kept as ``<name>.failed.ipynb`` and the papermill error propagates.
    """
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
        with _headless_env():
            pm.execute_notebook(
                str(notebook),
                str(partial),
                parameters={"profile": profile.name},
                kernel_name="python3",
                cwd=str(notebook.parent),
                progress_bar=progress,
                execution_timeout=timeout,
                # the kernel's own log (transport warnings, shutdown interrupts) stays off
                # the console; cell errors still reach the executed copy and the exception
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    if cache_key is not None:
        import nbformat

        executed = nbformat.read(partial, as_version=4)
        executed.metadata.setdefault("pdeinf", {})["cache_key"] = cache_key
        nbformat.write(executed, partial)
    os.replace(partial, final)
    failed.unlink(missing_ok=True)
    return final


def leaves(obj, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, obj


def figures_of(results: dict) -> list[str]:
    """PNG figures listed by a results JSON (PDF twins are left out of the table)."""
    figs = results.get("figures") or []
    if isinstance(figs, str):
        figs = [figs]
    if isinstance(figs, dict):
        figs = list(figs.values())
    pngs = [str(f) for f in figs if str(f).endswith(".png")]
    return pngs or [str(f) for f in figs]


def summarize_notebook(notebook: Path | str, *, max_numbers: int = 4) -> dict:
    """What the closing table shows of ``results/<notebook>.json``: its PNG figures and the
    first ``max_numbers`` scalar numbers (from its ``numbers`` entry when it has one)."""
    path = notebook_results_path(notebook)
    out = {"notebook": Path(notebook).stem, "figures": [], "numbers": {}, "results": None}
    if not path.is_file():
        return out
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return out
    if not isinstance(results, dict):
        return out
    out["results"] = str(path)
    out["figures"] = figures_of(results)
    source = results.get("numbers", {k: v for k, v in results.items() if k != "figures"})
    for key, value in leaves(source):
        if len(out["numbers"]) >= max_numbers:
            break
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out["numbers"][key] = float(value)
    return out
