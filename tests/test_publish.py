"""Publishing the committed profile's outputs into the notebooks (`pdeinf.pipeline.publish`):
the source cells stay as they are, the outputs are the executed copy's, papermill's traces and
this machine's paths are left out, and an edited or failed notebook is refused."""
from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pdeinf import paths
from pdeinf.config import COMMITTED_PROFILE
from pdeinf.errors import InputError
from pdeinf.pipeline.notebooks import notebook_cache_key
from pdeinf.pipeline.publish import publish_notebook, publish_notebooks, published_copy

WIDGET = "application/vnd.jupyter.widget-view+json"


def _source():
    return new_notebook(cells=[
        new_markdown_cell("# Title"),
        new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
        new_code_cell("print(path)"),
        new_code_cell("show()"),
        new_code_cell("x = 1"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}})


def _executed(source, *, error=False):
    """What papermill makes of `source`: an injected parameters cell after the parameters
    cell, outputs, execution counts shifted by it, timing metadata."""
    nb = nbformat.from_dict(source)
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    injected = new_code_cell('profile = "smoke"', metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(2, injected)
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.execution_count = count
        cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
        cell.metadata["papermill"] = {"duration": 0.1}
    root = str(paths.root())
    nb.cells[3].outputs = [new_output("stream", name="stdout", text=f"wrote {root}/results/a.json\n")]
    nb.cells[4].outputs = [new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBO",
                                                            WIDGET: {"model_id": "abc"}})]
    if error:
        nb.cells[5].outputs = [new_output("error", ename="ValueError", evalue="bad", traceback=[])]
    nb.metadata["papermill"] = {"parameters": {"profile": "smoke"}}
    return nb


def test_published_copy_keeps_the_source_and_takes_the_outputs():
    source = _source()
    out = published_copy(source, _executed(source), "smoke")
    assert [(c.cell_type, c.source) for c in out.cells] == [(c.cell_type, c.source) for c in source.cells]
    code = [c for c in out.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3, 4]
    assert code[1].outputs[0]["text"] == "wrote results/a.json\n"
    assert code[2].outputs[0]["data"] == {"text/plain": "<Figure>", "image/png": "iVBO"}
    assert code[3].outputs == []
    assert all("execution" not in c.metadata and "papermill" not in c.metadata for c in code)
    assert "papermill" not in out.metadata
    assert out.metadata["pdeinf"]["outputs_profile"] == "smoke"
    nbformat.validate(out)
    assert source.cells[2].get("outputs") == [], "the source notebook was changed"


def test_an_edited_or_failed_notebook_is_not_published():
    source = _source()
    executed = _executed(source)
    source.cells[3].source = "show(twice=True)"
    with pytest.raises(InputError, match="differ"):
        published_copy(source, executed, "smoke")
    source = _source()
    with pytest.raises(InputError, match="ValueError"):
        published_copy(source, _executed(source, error=True), "smoke")


def test_publish_writes_once_and_keeps_the_cache_key(tmp_path):
    target, executed = tmp_path / "03_x.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(_source(), target)
    nbformat.write(_executed(_source()), executed)
    key = notebook_cache_key(target, "smoke")
    assert publish_notebook(target, executed, "smoke")
    assert not publish_notebook(target, executed, "smoke"), "an unchanged notebook was rewritten"
    assert notebook_cache_key(target, "smoke") == key, "the outputs changed the notebook's key"
    assert nbformat.read(target, as_version=4).cells[2].outputs


def test_only_the_committed_profile_is_published(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(_source(), folder / "03_x.ipynb")
    nbformat.write(_executed(_source()), tmp_path / "03_x.ipynb")
    monkeypatch.setattr("pdeinf.pipeline.notebooks.notebooks_source", lambda: folder)
    entries = [{"status": "ok", "executed": str(tmp_path / "03_x.ipynb")},
               {"status": "failed", "executed": str(tmp_path / "03_x.ipynb")}]
    assert publish_notebooks("smoke", entries) == []
    assert not nbformat.read(folder / "03_x.ipynb", as_version=4).cells[2].outputs
    assert publish_notebooks(COMMITTED_PROFILE, entries) == ["03_x.ipynb"]
    assert entries[0]["published"] == str(folder / "03_x.ipynb") and "published" not in entries[1]
    stored = nbformat.read(folder / "03_x.ipynb", as_version=4)
    assert stored.metadata["pdeinf"]["outputs_profile"] == COMMITTED_PROFILE


def test_a_corrupt_executed_copy_is_one_clear_error_and_nothing_is_written(tmp_path):
    target, executed = tmp_path / "03_x.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(_source(), target)
    before = target.read_bytes()
    executed.write_text('{"cells": [')  # truncated
    with pytest.raises(InputError, match="03_x.ipynb: cannot read"):
        publish_notebook(target, executed, "smoke")
    assert target.read_bytes() == before
