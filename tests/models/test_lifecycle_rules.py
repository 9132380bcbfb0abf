"""One lifecycle: no product code outside models/lifecycle/ writes a message's status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("models", "intake", "api_shim", "worker", "cli", "meta_sandbox")
LIFECYCLE = ROOT / "models" / "lifecycle"  # the package
MESSAGE_TABLE_NAMES = {"Message", "messages", "_messages"}


def _receiver_table(node: ast.AST) -> str | None:
    """The table of the update()/insert() at the root of a method chain, if any."""
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in {"update", "insert", "pg_insert"} and node.args:
                table = node.args[0]
                if isinstance(table, ast.Name):
                    return table.id
                if isinstance(table, ast.Attribute):
                    return table.attr
            node = func
        else:
            node = node.value
    return None


def status_writes(source: str) -> list[int]:
    """Lines of ``update(Message)...values(status=...)`` / ``insert(messages)...`` naming status."""
    tree = ast.parse(source)
    # Column lists are often named first (``columns = [...]``), then passed to from_select.
    assigned = {
        target.id: ast.unparse(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        writes_status = (node.func.attr == "values" and any(k.arg == "status" for k in node.keywords)) or (
            node.func.attr == "from_select"
            and node.args
            and isinstance(node.args[0], ast.List | ast.Name)
            and "'status'" in assigned.get(ast.unparse(node.args[0]), ast.unparse(node.args[0]))
        )
        if writes_status and _receiver_table(node.func.value) in MESSAGE_TABLE_NAMES:
            lines.append(node.lineno)
    # Raw SQL: within one string (adjacent literals are one), so a statement that writes other
    # columns is not blamed for a "status" further down the file.
    raw = re.compile(r"(UPDATE|INSERT INTO)\s+messages\b[^;]*\bstatus\b", re.IGNORECASE | re.DOTALL)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            lines += [node.lineno + node.value[: m.start()].count("\n") for m in raw.finditer(node.value)]
    return lines


def test_the_detector_sees_a_status_write():
    assert status_writes("update(Message).where(x).values(status='sent')") == [1]
    assert status_writes("stmt = insert(messages).from_select(['id', 'status'], q)") == [1]
    assert status_writes("cols = ['id', 'status']\ninsert(messages).from_select(cols, q)") == [2]
    assert status_writes("conn.exec_driver_sql('UPDATE messages SET status = 1')") == [1]
    assert status_writes("update(WhatsappAccount).values(status='halted')") == []
    assert status_writes('a = """\nSELECT 1;\nUPDATE messages\nSET status = 2"""') == [3]
    assert status_writes('a = "UPDATE messages SET idempotency_key = NULL"\nb = "m.status"') == []


def test_only_the_lifecycle_package_writes_a_message_status():
    offenders = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(LIFECYCLE) or "migrations" in path.parts:
                continue
            for line in status_writes(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == [], "status written outside models/lifecycle/"
