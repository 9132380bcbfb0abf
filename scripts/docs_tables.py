"""Markdown the documentation takes from the code at build time, so it cannot drift from it:

- the message lifecycle's transitions (models/lifecycle/transitions.py, ``TRANSITIONS``), and
- every setting of ``models.settings.Settings``: its environment variable, its default and its
  meaning (the field's ``description``, which every field has: a test says so).

scripts/docs_hooks.py puts them where a page says ``<!-- generated: NAME -->``; the tests in
tests/docs/ check that every transition and every setting is there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "WADISPATCH_"


def _cell(text: str) -> str:
    """One line of a markdown table cell (a ``|`` would end the cell)."""
    return " ".join(text.split()).replace("|", "\\|")


def _statuses(statuses: tuple[Any, ...]) -> str:
    return "/".join(f"`{status.value}`" for status in statuses)


def transitions_markdown() -> str:
    from models.lifecycle.transitions import TRANSITIONS

    rows = ["| transition | from → to | who | guard |", "|---|---|---|---|"]
    for t in TRANSITIONS:
        source = _statuses(t.sources) if t.sources else "—"
        target = "the same" if t.sources and t.targets == t.sources else _statuses(t.targets)
        rows.append(f"| {t.name} | {source} → {target} | {_cell(t.who)} | {_cell(t.guard)} |")
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class SettingDoc:
    field: str
    env: str
    default: str
    meaning: str


def _default_text(name: str) -> str:
    from models import settings as settings_module

    info = settings_module.Settings.model_fields[name]
    value: Any = info.get_default(call_default_factory=True)
    development = {
        getattr(settings_module, constant)
        for constant in dir(settings_module)
        if constant.startswith("DEV_") and isinstance(getattr(settings_module, constant), str)
    }
    if value is None:
        return "unset"
    if isinstance(value, str) and value in development:
        return "a development value (production refuses it)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`" if value else "empty"
    if value == "":
        return "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_docs() -> list[SettingDoc]:
    """Every setting, in the class's order."""
    from models.settings import Settings

    return [
        SettingDoc(name, ENV_PREFIX + name.upper(), _default_text(name), info.description or "")
        for name, info in Settings.model_fields.items()
    ]


def settings_markdown() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{d.env}` | {_cell(d.default)} | {_cell(d.meaning)} |" for d in settings_docs()]
    return "\n".join(rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "lifecycle-transitions": transitions_markdown,
    "settings": settings_markdown,
}


def marker(name: str) -> str:
    return f"<!-- generated: {name} -->"


def expand(markdown: str) -> str:
    """The page with each ``<!-- generated: NAME -->`` replaced by what NAME's generator renders."""
    for name, generate in GENERATORS.items():
        if marker(name) in markdown:
            markdown = markdown.replace(marker(name), generate())
    return markdown
