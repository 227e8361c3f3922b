"""The layers of docs/architecture.md: each module imports only the layers it may.

Imports are read from the source (function-level ones included), so a lazy import that breaks a
rule fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sap_rl"

#: Modules of the command-line layer, which may import everything.
COMMAND_LINE = {
    "sap_rl.cli",
    "sap_rl.report_command",
    "sap_rl.status_command",
    "sap_rl.rl.commands",
    "sap_rl.rl.evaluate_command",
    "sap_rl.rl.prune_command",
    "sap_rl.vision.commands",
}
#: Layer -> the layers its modules may import (their own included).
ALLOWED = {
    "core": {"core"},
    "grid": {"core", "grid"},
    "report": {"core", "report"},
    "rl": {"core", "grid", "report", "rl"},
    "vision": {"core", "grid", "report", "vision"},
}


def layer(module: str) -> str:
    """The layer of a ``sap_rl`` module, as docs/architecture.md's table assigns it."""
    if module in COMMAND_LINE:
        return "command line"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("grid", "rl", "vision"):
        return parts[1]
    if module == "sap_rl.report":
        return "report"
    return "core"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """The ``sap_rl`` modules that ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sap_rl"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("sap_rl"))
    return names


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_the_layers_below_it(module: str) -> None:
    own = layer(module)
    if own == "command line":
        return
    wrong = sorted(m for m in imports(MODULES[module]) if layer(m) not in ALLOWED[own])
    assert not wrong, f"{module} ({own} layer) imports {wrong}: see docs/architecture.md"


def test_the_check_sees_a_report_module_importing_rl() -> None:
    assert layer("sap_rl.rl.literature") == "rl"
    assert "rl" not in ALLOWED[layer("sap_rl.report")]
    assert "sap_rl.rl.literature" in imports(MODULES["sap_rl.report_command"])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_are_absolute(module: str) -> None:
    """Relative imports would slip past :func:`imports`; the package uses none."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
