"""The layers: models (bottom) → intake → api_shim / worker / cli (top). No import runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("api_shim", "worker", "cli")
# What each lower layer may not import: every layer above it.
FORBIDDEN = {"models": ("intake", *TOP), "intake": TOP}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every module a source imports, at any depth (function-level imports count too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend([(node.lineno, node.module)])
    return found


def upward_imports(layer: str) -> list[str]:
    banned = FORBIDDEN[layer]
    problems = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in imported_modules(path.read_text(encoding="utf-8")):
            if module.split(".")[0] in banned:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return problems


def test_models_import_nothing_above_them() -> None:
    assert upward_imports("models") == []


def test_intake_imports_nothing_above_it() -> None:
    assert (ROOT / "intake").is_dir()
    assert upward_imports("intake") == []


def test_the_check_sees_every_kind_of_import() -> None:
    source = "import worker.tasks\nfrom api_shim.app import create_app\ndef f():\n    from cli import main\n"
    assert [m for _, m in imported_modules(source)] == ["worker.tasks", "api_shim.app", "cli"]
