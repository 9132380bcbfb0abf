"""Values Postgres can store, checked once over a whole parsed body.

Postgres refuses U+0000 in text and in JSONB, a lone surrogate ("\\ud800" in a JSON escape) cannot
be encoded as UTF-8 at all, and JSONB has no NaN or Infinity (Python's json module reads them).
Any of these reaching an INSERT was a 500; refusing them at validation names the field instead.
The walk is iterative, so it holds for any nesting the request guard lets through.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

NUL_RULE = "must not contain NUL characters"
SURROGATE_RULE = "must not contain unpaired surrogates (not valid Unicode)"
NON_FINITE_RULE = "must be a finite number"

_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TextProblem:
    field: str  # the JSON path of the value, e.g. "contacts[0].name.formatted_name"
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


def text_rule(value: str) -> str | None:
    """Why Postgres cannot store ``value`` as text, or None if it can."""
    if "\x00" in value:
        return NUL_RULE
    if not value.isascii() and _SURROGATE.search(value):
        return SURROGATE_RULE
    return None


def first_unstorable(value: Any, root: str = "body") -> TextProblem | None:
    """The first string (value or object key) or number in ``value``, in document order, that
    Postgres cannot store; ``root`` names ``value`` itself when it is the culprit."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if rule := text_rule(item):
                return TextProblem(path or root, rule)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return TextProblem(path or root, NON_FINITE_RULE)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                child_path = _member(path, key)
                if isinstance(key, str) and (rule := text_rule(key)):
                    return TextProblem(child_path, f"field names {rule}")
                children.append((child_path, child))
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
    return None


def _member(path: str, key: Any) -> str:
    key = str(key)
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    # Quoted and escaped: a key with NUL or a surrogate never goes into an error message raw.
    return f"{path}[{json.dumps(key)}]"
