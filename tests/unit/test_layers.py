"""The package's dependency order, enforced: no module imports from a layer above its own.

Read from the source (``ast``), so imports inside functions and under ``TYPE_CHECKING`` count
too: a function-level import hides a dependency from the file header, it does not remove it.
CONTRIBUTING.md ("The layer rule") and README ("Where things live") describe the same order.
A new top-level module or package must be placed in ``LAYERS`` (the test fails until it is),
which is the moment to decide where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "recicl"

#: Lowest first. A module may import from its own unit and from any lower layer. Units that
#: share a layer are siblings and must not import each other (training and evaluation stay
#: independent; the experiments that need both sit above them).
LAYERS: list[set[str]] = [
    {"recicl", "recicl.errors", "recicl.lazy"},
    {"recicl.config"},
    {"recicl.raycluster", "recicl.deploy"},
    {"recicl.data", "recicl.prompts"},
    {"recicl.modeling", "recicl.reports"},
    {"recicl.registry", "recicl.embeddings"},
    {"recicl.train", "recicl.evaluate"},
    {"recicl.promotion", "recicl.serve"},
    {"recicl.experiments", "recicl.updates"},
    {"recicl.demo"},
    {"recicl.cli"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``recicl.serve.api.routes`` → ``recicl.serve``; ``recicl`` stays ``recicl``."""
    return ".".join(module.split(".")[:2])


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every ``recicl`` import in the file at ``path`` (or in ``source``,
    read as if it were that file), wherever the import sits."""
    found = []
    package = module_name(path)
    is_package = path.name == "__init__.py"
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return [(line, name) for line, name in found if name.split(".")[0] == "recicl"]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(path)) for path in SOURCES}
    unplaced = sorted(units - set(LAYER_OF))
    assert not unplaced, f"place these in LAYERS (tests/unit/test_layers.py): {unplaced}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_upward_or_sideways_import(path: Path):
    own = unit_of(module_name(path))
    bad = []
    for line, target in imported_modules(path):
        other = unit_of(target)
        if other == own or other not in LAYER_OF or own not in LAYER_OF:
            continue
        if LAYER_OF[other] >= LAYER_OF[own]:
            direction = "up" if LAYER_OF[other] > LAYER_OF[own] else "sideways"
            bad.append(f"line {line}: {target} ({direction}: {own} → {other})")
    assert not bad, f"{path.name} imports against the layer order:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_and_relative_imports():
    """The walker is the test's oracle, so check it on a source made for it."""
    source = (
        "from __future__ import annotations\n"
        "from . import metrics\n"
        "from ..serve import app\n"
        "def f():\n"
        "    import recicl.cli\n"
    )
    found = [name for _, name in imported_modules(PACKAGE / "evaluate" / "batch.py", source)]
    assert found == ["recicl.evaluate", "recicl.serve", "recicl.cli"]
    assert LAYER_OF[unit_of(found[1])] > LAYER_OF["recicl.evaluate"]  # would be reported
