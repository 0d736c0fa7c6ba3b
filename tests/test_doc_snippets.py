"""Every ```python block of README.md and docs/*.md runs as written.

Blocks of one page run in order in one namespace (a page reads top to bottom), in a temporary
working directory. A block preceded by the line `<!-- no-run -->` is shown only; the count of
such blocks is kept small by `test_few_blocks_are_exempt`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NO_RUN = "<!-- no-run -->"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """`(line, code, runs)` of each ```python block; runs False after a `<!-- no-run -->` line."""
    out = []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip("\n").splitlines()
        runs = not (before and before[-1].strip() == NO_RUN)
        out.append((text.count("\n", 0, match.start()) + 1, match.group(1), runs))
    return out


def test_block_parser_sees_blocks_and_the_exemption():
    text = "a\n```python\nx = 1\n```\n<!-- no-run -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n", True), (6, "raise SystemExit\n", False)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_python_block_runs_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__doc_snippet__"}
    for line, code, runs in python_blocks(page.read_text()):
        if runs:
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 - running the docs' snippets is the test
            except Exception as err:
                raise AssertionError(f"{page.name}, block at line {line}: {type(err).__name__}: {err}") from err


def test_few_blocks_are_exempt():
    blocks = [b for page in PAGES for b in python_blocks(page.read_text())]
    assert blocks, "no python blocks found"
    assert sum(not runs for _, _, runs in blocks) <= max(1, len(blocks) // 4)
