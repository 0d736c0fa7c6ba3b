"""Every notebook, executed twice in the suite at the smoke profile:

(a) as stored, by nbval (``--nbval-lax --nbval-current-env``) in a pytest subprocess with
    ``PDEINF_PROFILE=smoke``, ``PDEINF_HOME`` = the session's temporary home and
    ``MPLBACKEND=Agg``: all notebooks in one subprocess, one verdict per notebook here;
(b) through papermill with ``profile="smoke"`` injected (`pdeinf.pipeline.run_notebook`, the
    code path of ``pdeinf reproduce``), then its ``results/<notebook>.json`` is checked:
    written by this run, profile recorded, numbers finite, figures real PNG files under the
    temporary home, the committed ``figures/`` untouched, no error output in the executed copy.

Both depend on the smoke pipeline (`smoke_home`), so the notebooks only read cached results.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from pdeinf import paths, pipeline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _nb_id(path: Path) -> str:
    return path.stem


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _results_json(stem: str) -> dict | None:
    path = paths.results_dir() / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture(scope="session")
def nbval_run(smoke_home, tmp_path_factory):
    """One nbval subprocess over all notebooks; per notebook the junit test cases and the
    results JSON the stored (unparameterised) notebook wrote."""
    if not NOTEBOOKS:
        pytest.skip("no notebooks in notebooks/")
    junit = tmp_path_factory.mktemp("nbval") / "nbval.xml"
    env = dict(os.environ, PDEINF_HOME=str(smoke_home), PDEINF_PROFILE="smoke",
               MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           "-p", "no:cacheprovider", "-o", "addopts=", "-q", f"--junitxml={junit}",
           *map(str, NOTEBOOKS)]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=1500)
    cases: dict[str, list[tuple[str, str | None]]] = {nb.stem: [] for nb in NOTEBOOKS}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            where = case.get("classname", "")
            stem = next((s for s in cases if where.endswith(f"{s}.ipynb")), None)
            if stem is None:
                continue
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            cases[stem].append((case.get("name", "?"),
                                None if bad is None else (bad.get("message") or bad.text or "")))
    records = {}
    for nb in NOTEBOOKS:
        path = paths.results_dir() / f"{nb.stem}.json"
        fresh = path.is_file() and path.stat().st_mtime >= started - 1
        records[nb.stem] = _results_json(nb.stem) if fresh else None
    return {"rc": proc.returncode, "output": proc.stdout[-6000:] + proc.stderr[-3000:],
            "cases": cases, "records": records}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_nb_id)
def test_nbval_runs_as_stored(nbval_run, notebook):
    cases = nbval_run["cases"][notebook.stem]
    n_code = sum(c.cell_type == "code" for c in nbformat.read(notebook, as_version=4).cells)
    assert cases, f"nbval ran nothing for {notebook.name}:\n{nbval_run['output']}"
    failed = [(name, msg) for name, msg in cases if msg is not None]
    assert not failed, f"{notebook.name}: {failed[0][0]} failed: {failed[0][1][:2000]}"
    assert len(cases) == n_code, f"{notebook.name}: {len(cases)} of {n_code} cells checked"
    record = nbval_run["records"][notebook.stem]
    assert record is not None, f"{notebook.name} run by nbval wrote no results JSON"
    if "profile" in record:
        assert record["profile"] == "smoke", "the stored notebook ignored PDEINF_PROFILE"


def _numbers(obj, prefix=""):
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        yield prefix, float(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{prefix}[{i}]")


def _figure_paths(record: dict) -> list[Path]:
    figs = record.get("figures", [])
    if isinstance(figs, (str, dict)):
        figs = [figs] if isinstance(figs, str) else list(figs.values())
    out = []
    for fig in figs:
        p = Path(fig)
        out.append(p if p.is_absolute() else paths.root() / p)
    return out


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_nb_id)
def test_papermill_smoke_results(nbval_run, notebook):
    repo_figures = _snapshot(REPO / "figures")
    started = time.time()
    executed = pipeline.run_notebook(notebook, "smoke", progress=False)
    assert _snapshot(REPO / "figures") == repo_figures, "a test run wrote into figures/"

    out = nbformat.read(executed, as_version=4)
    errors = [o for c in out.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in out.cells)

    path = paths.results_dir() / f"{notebook.stem}.json"
    assert path.is_file(), f"{notebook.name} wrote no {path.name}"
    assert path.stat().st_mtime >= started - 1, f"{path.name} is stale (not written by this run)"
    record = json.loads(path.read_text())
    assert isinstance(record, dict) and record, f"{path.name}: empty"
    if "profile" in record:
        assert record["profile"] == "smoke"
    numbers = dict(_numbers(record))
    assert not [k for k, v in numbers.items() if math.isinf(v)], f"{path.name}: infinite values"
    for fig in _figure_paths(record):
        assert fig.is_file(), f"{path.name} lists {fig}, which does not exist"
        assert paths.root() in fig.resolve().parents, f"{fig} is outside PDEINF_HOME"
        if fig.suffix == ".png":
            assert fig.read_bytes()[:8] == PNG_MAGIC, f"{fig} is not a PNG"


def _nbval_compare(notebook: Path, home: Path) -> subprocess.CompletedProcess:
    """nbval with output comparison (as `make check-notebooks`) over one notebook."""
    env = dict(os.environ, PDEINF_HOME=str(home), PDEINF_PROFILE="smoke", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
           "-o", "addopts=", "-q", "--nbval-sanitize-with", str(REPO / "notebooks" / "nbval_sanitize.cfg"),
           str(notebook)]
    return subprocess.run(cmd, cwd=notebook.parent, env=env, capture_output=True, text=True,
                          check=False, timeout=900)


def test_published_notebook_reruns_to_its_stored_outputs(smoke_home, tmp_path):
    """A notebook holding a papermill run's outputs (`publish.publish_notebook`) reruns under
    nbval, outputs compared, to exactly what it stores; one changed digit fails the rerun."""
    from pdeinf.pipeline.publish import publish_notebook

    source = REPO / "notebooks" / "03_seed_temporal.ipynb"
    executed = pipeline.run_notebook(source, "smoke", progress=False)
    target = tmp_path / source.name
    target.write_bytes(source.read_bytes())
    assert publish_notebook(target, executed, "smoke")
    stored = target.read_text()
    assert str(smoke_home) not in stored, "a machine path was published"
    proc = _nbval_compare(target, smoke_home)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    nb = nbformat.read(target, as_version=4)
    stream = next(o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "stream" and any(ch.isdigit() for ch in o.text))
    digit = next(ch for ch in stream.text if ch.isdigit())
    stream.text = stream.text.replace(digit, str((int(digit) + 1) % 10), 1)
    nbformat.write(nb, target)
    proc = _nbval_compare(target, smoke_home)
    assert proc.returncode != 0 and "Cell outputs differ" in proc.stdout, proc.stdout[-3000:]
