"""The package's layers (design.md): a module imports only from its own layer or below.

Every `import` / `from ... import` in every module counts, function-local ones included (a
lazy import that reaches up is still a dependency on a higher layer). The engine
(`pdeinf.influence`) and the analyses (`pdeinf.analysis`) know no file layout: they never
import `pdeinf.paths` or `pdeinf.pipeline`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pdeinf"

#: Layers from the bottom; a module belongs to the first (longest) prefix that matches.
LAYERS: list[tuple[str, ...]] = [
    ("pdeinf.errors", "pdeinf.config", "pdeinf.paths", "pdeinf.atomic", "pdeinf.checks",
     "pdeinf.storage"),
    ("pdeinf.solvers", "pdeinf.symmetry.actions"),
    ("pdeinf.data",),
    ("pdeinf.models",),
    ("pdeinf.training",),
    ("pdeinf.influence",),
    ("pdeinf.symmetry", "pdeinf.analysis"),
    ("pdeinf.viz", "pdeinf.widgets"),
    ("pdeinf.pipeline",),
    ("pdeinf.cli", "pdeinf.__main__", "pdeinf.data.cli", "pdeinf.training.cli"),
]
#: What a pure layer must never import, whatever its rank.
PURE = {"pdeinf.influence": ("pdeinf.paths", "pdeinf.pipeline"),
        "pdeinf.analysis": ("pdeinf.paths", "pdeinf.pipeline")}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{module}: not assigned to a layer in tests/test_layers.py")
    return rank


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from pdeinf import pipeline` imports the submodule pdeinf.pipeline
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "pdeinf" or m.startswith("pdeinf.")}


def _existing(name: str) -> str | None:
    """The longest prefix of `name` that is a module or package of pdeinf."""
    parts = name.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    return None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_stay_in_or_below_the_layer(path):
    module = module_name(path)
    rank = layer_of(module)
    upward = []
    for name in imported_modules(path, module):
        target = _existing(name)
        if target is None or target == "pdeinf":
            continue
        if layer_of(target) > rank:
            upward.append(f"{target} (layer {layer_of(target)})")
        for pure, banned in PURE.items():
            if module.startswith(pure) and any(target == b or target.startswith(b + ".") for b in banned):
                upward.append(f"{target} (file layout in a pure layer)")
    assert not upward, f"{module} (layer {rank}) imports {sorted(set(upward))}"


def test_every_module_has_a_layer_and_the_checker_sees_violations(tmp_path):
    for path in MODULES:
        layer_of(module_name(path))
    fake = tmp_path / "pdeinf" / "influence" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from pdeinf.pipeline import influence\n")
    found = imported_modules(fake, "pdeinf.influence.bad")
    assert "pdeinf.pipeline.influence" in found
    assert layer_of("pdeinf.pipeline.influence") > layer_of("pdeinf.influence.bad")
