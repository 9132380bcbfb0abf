"""The layers: models (bottom) → intake → api_shim / worker → cli (top). No import runs back up.

api_shim and worker are siblings with one direction between them: the API may use the worker's
pieces (the hand-over to the broker, the gauges, the webhook envelope), the worker never imports
the API. models and intake know neither HTTP nor Celery (tests/intake/ also imports every intake
module and checks neither framework was loaded).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("fastapi", "starlette", "celery", "kombu")
# What each package may not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("intake", "api_shim", "worker", "cli", *FRAMEWORKS),
    "intake": ("api_shim", "worker", "cli", *FRAMEWORKS),
    "worker": ("api_shim", "cli"),
    "api_shim": ("cli",),
}


def imported_modules(source: str, package: str = "") -> list[tuple[int, str]]:
    """Every module a source imports, at any depth (function-level imports count too). A relative
    import is resolved against ``package``, the dotted package the source belongs to."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
                continue
            parts = package.split(".") if package else []
            base = parts[: len(parts) - (node.level - 1)] if node.level <= len(parts) else []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:
                # ``from .. import x``: each name may be a module of that package (or a top-level one).
                found.extend((node.lineno, ".".join([*base, alias.name])) for alias in node.names)
    return found


def _package_of(path: Path) -> str:
    """The package a module belongs to (a package's own __init__ belongs to it)."""
    return ".".join(path.relative_to(ROOT).parts[:-1])


def upward_imports(layer: str) -> list[str]:
    banned = FORBIDDEN[layer]
    problems = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in imported_modules(path.read_text(encoding="utf-8"), _package_of(path)):
            if module.split(".")[0] in banned:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return problems


def test_models_import_nothing_above_them() -> None:
    assert upward_imports("models") == []


def test_intake_imports_nothing_above_it_and_no_web_or_task_framework() -> None:
    assert (ROOT / "intake").is_dir()
    assert upward_imports("intake") == []


def test_the_worker_never_imports_the_api() -> None:
    assert upward_imports("worker") == []


def test_the_api_never_imports_the_cli() -> None:
    assert upward_imports("api_shim") == []


def test_the_check_sees_every_kind_of_import() -> None:
    source = "import worker.tasks\nfrom api_shim.app import create_app\ndef f():\n    from cli import main\n"
    assert [m for _, m in imported_modules(source)] == ["worker.tasks", "api_shim.app", "cli"]


def test_the_check_resolves_relative_imports() -> None:
    source = "from . import errors\nfrom .store import persist_message\nfrom .. import api_shim\n"
    found = [m for _, m in imported_modules(source, "intake")]
    assert found == ["intake.errors", "intake.store", "api_shim"]
    assert [m for _, m in imported_modules("from ..flowiq import send\n", "api_shim.flowestate")] == ["api_shim.flowiq"]
