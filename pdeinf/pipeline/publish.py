"""After `reproduce` at the committed profile (`config.COMMITTED_PROFILE`) the outputs of each
executed notebook are written back into the notebook it was run from, for readers of the
repository and for nbval (`make check-notebooks`). A published notebook is its source cells with
the executed copy's outputs, without papermill's parameters cell and metadata; execution counts
run 1, 2, ... over the code cells, paths are relative to the project root, widget views (whose
state is not stored) are left out, and its metadata records the profile."""
from __future__ import annotations

import copy
from pathlib import Path

from pdeinf import paths
from pdeinf.errors import InputError

#: Notebook metadata `pdeinf.outputs_profile`: the profile whose run produced the stored outputs.
OUTPUTS_PROFILE = "outputs_profile"
#: Output bundles left out of a published notebook: widget views need a live kernel's state.
UNPUBLISHED_MIME = ("application/vnd.jupyter.widget-view+json",)


def source_cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    """(cell type, source, tags) of every cell but papermill's injected parameters: what a
    notebook computes, whatever outputs it holds."""
    cells = [(c.cell_type, c.source, tuple(c.get("metadata", {}).get("tags", ())))
             for c in nb.cells]
    return [c for c in cells if "injected-parameters" not in c[2]]


def portable_text(text: str) -> str:
    """`text` with the project root (`paths.root()`) left out of every path below it."""
    return text.replace(str(paths.root()).rstrip("/") + "/", "")


def _portable_output(output):
    out = copy.deepcopy(output)
    if out.get("output_type") == "stream":
        out["text"] = portable_text(out["text"])
    if "data" in out:
        out["data"] = {mime: portable_text(v) if isinstance(v, str) and mime.startswith("text/") else v
                       for mime, v in out["data"].items() if mime not in UNPUBLISHED_MIME}
    return out


def published_copy(source, executed, profile: str):
    """`source` (a notebook, as stored) with the outputs of `executed` (papermill's run of it at
    `profile`). InputError when their cells differ: the notebook was edited after the run, and
    the outputs would not be its own."""
    ran = [c for c in executed.cells
           if "injected-parameters" not in c.get("metadata", {}).get("tags", ())]
    if source_cells(source) != source_cells(executed):
        raise InputError("notebook: its cells differ from the executed copy's (edited since the "
                         "run?); run it again before publishing its outputs")
    if errors := [o for c in ran if c.cell_type == "code" for o in c.get("outputs", ())
                  if o.get("output_type") == "error"]:
        raise InputError(f"notebook: the executed copy holds an error ({errors[0].get('ename')}); "
                         "nothing published")
    out = copy.deepcopy(source)
    code = [(cell, done) for cell, done in zip(out.cells, ran) if cell.cell_type == "code"]
    for count, (cell, done) in enumerate(code, 1):
        cell.outputs = [_portable_output(o) for o in done.outputs]
        # with no output the cell keeps its count too: the notebook reads as run top to bottom
        cell.execution_count = count
        for key in ("execution", "papermill"):
            cell.metadata.pop(key, None)
    out.metadata.setdefault("pdeinf", {})[OUTPUTS_PROFILE] = profile
    return out


def publish_notebook(notebook: Path, executed: Path, profile: str) -> bool:
    """Write the published copy of `notebook` (from `executed`) over it when it differs; True
    when written. Atomic: the notebook is either the old or the new file."""
    import nbformat

    from pdeinf.atomic import write_text

    notebook, executed = Path(notebook), Path(executed)
    try:
        stored, ran = (nbformat.read(p, as_version=4) for p in (notebook, executed))
    except Exception as err:  # noqa: BLE001 - truncated or foreign JSON: one line, nothing written
        raise InputError(f"{notebook.name}: cannot read it or its executed copy ({err})") from None
    try:
        copy_ = published_copy(stored, ran, profile)
    except InputError as err:
        raise InputError(f"{notebook.name}: {str(err).removeprefix('notebook: ')}") from None
    text = nbformat.writes(copy_) + "\n"
    if notebook.read_text() == text:
        return False
    write_text(notebook, text)
    return True


def publish_notebooks(profile: str, entries: list[dict]) -> list[str]:
    """Publish every notebook of `entries` (the closing table's, status ok) into the folder
    the notebooks were read from; only for the committed profile, whose figures they show.
    Returns the names written; a notebook that cannot be published is reported, not raised."""
    from pdeinf.config import COMMITTED_PROFILE
    from pdeinf.pipeline.notebooks import notebooks_source

    if profile != COMMITTED_PROFILE:
        return []
    written = []
    for entry in entries:
        if entry.get("status") != "ok" or not entry.get("executed"):
            continue
        target = notebooks_source() / Path(entry["executed"]).name
        try:
            if publish_notebook(target, Path(entry["executed"]), profile):
                written.append(target.name)
        except (InputError, OSError) as err:
            entry["published"] = f"not published: {err}"
        else:
            entry["published"] = str(target)
    return written
