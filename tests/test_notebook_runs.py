"""How `reproduce` runs the notebooks: side by side (they read only stage outputs and the
findings table), each report entry in the order asked; and that a notebook's cache key follows
the findings table, not the other notebooks' results JSON."""
import importlib
import itertools
import os
import threading
import time
from pathlib import Path

import nbformat
import pytest

from pdeinf.pipeline import notebooks as nbs

EMPTY_NOTEBOOK = nbformat.writes(nbformat.v4.new_notebook())

rp = importlib.import_module("pdeinf.pipeline.reproduce")  # the package exports a function of that name


@pytest.fixture
def fake_notebooks(tmp_path, monkeypatch):
    """Four notebooks executed by a fake papermill that records when each ran (no kernels)."""
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    folder = tmp_path / "nbs"
    folder.mkdir()
    names = ["01_a", "02_b", "03_c", "14_findings"]
    for name in names:
        (folder / f"{name}.ipynb").write_text(EMPTY_NOTEBOOK)
    spans, envs, lock = {}, {}, threading.Lock()

    def fake_run(nb, profile, *, progress=True, cache_key=None):
        start = time.perf_counter()
        env = {k: os.environ.get(k) for k in ("MPLBACKEND", "OMP_NUM_THREADS")}
        time.sleep(0.3)
        with lock:
            spans[Path(nb).stem] = (start, time.perf_counter())
            envs[Path(nb).stem] = {**env, "end": {k: os.environ.get(k) for k in env}}
        if Path(nb).stem == "02_b":
            raise RuntimeError("cell 3 failed")
        return Path(nb)

    monkeypatch.setattr(rp, "run_notebook", fake_run)
    monkeypatch.setattr(rp, "_executed_is_current", lambda nb, key: False)
    monkeypatch.setattr(rp, "summarize_notebook", lambda nb, profile=None: dict.fromkeys(
        ("figures", "numbers", "results")))
    return [folder / f"{n}.ipynb" for n in names], spans, envs


def test_notebooks_run_side_by_side(fake_notebooks, monkeypatch):
    selected, spans, envs = fake_notebooks
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    timings = []
    entries = rp.run_notebooks("smoke", selected, timings, progress=False, workers=2)
    # every study kernel started and ran headless with one thread each, whichever ended first;
    # the environment is restored afterwards
    for name in ("01_a", "02_b", "03_c", "14_findings"):
        assert envs[name]["MPLBACKEND"] == "Agg" and envs[name]["OMP_NUM_THREADS"] == "1"
        assert envs[name]["end"]["MPLBACKEND"] == "Agg"
    assert "MPLBACKEND" not in os.environ and os.environ["OMP_NUM_THREADS"] == "7"
    assert [e["notebook"] for e in entries] == [p.stem for p in selected]
    assert [e["status"] for e in entries] == ["ok", "failed", "ok", "ok"]  # one failure stops nothing
    assert "cell 3 failed" in entries[1]["error"]
    studies = [spans[p.stem] for p in selected]
    # two at a time: some pair overlapped, never three
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(studies) for b in studies[i + 1:])
    assert not any(a[0] < b[1] and b[0] < a[1] and a[0] < c[1] and c[0] < a[1] and b[0] < c[1] and c[0] < b[1]
                   for a, b, c in itertools.combinations(studies, 3))
    assert sorted(t.stage for t in timings) == sorted(f"notebook {p.stem}" for p in selected)


def test_one_worker_runs_notebooks_one_after_another(fake_notebooks):
    selected, spans, _ = fake_notebooks
    rp.run_notebooks("smoke", selected, [], progress=False, workers=1)
    ordered = sorted(spans.values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))


def test_cache_key_follows_the_findings_table_not_other_results(tmp_path, monkeypatch):
    from pdeinf.pipeline.findings import findings_path

    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    (tmp_path / "results").mkdir()
    notebook = tmp_path / "14_findings.ipynb"
    notebook.write_text(EMPTY_NOTEBOOK)
    key = nbs.notebook_cache_key(notebook, "smoke")
    (tmp_path / "results" / "03_other.json").write_text('{"x": 1}')
    assert nbs.notebook_cache_key(notebook, "smoke") == key
    findings_path("smoke").parent.mkdir(parents=True)
    findings_path("smoke").write_text('{"findings": []}')
    with_table = nbs.notebook_cache_key(notebook, "smoke")
    assert with_table != key
    findings_path("smoke").write_text('{"findings": [1]}')
    assert nbs.notebook_cache_key(notebook, "smoke") != with_table
