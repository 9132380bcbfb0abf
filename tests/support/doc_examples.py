"""The documentation's runnable examples: found in the markdown, and their answers compared.

A page marks an example with an HTML comment right before its ```bash block, and the answer it
shows with another right before the block that shows it (both invisible on the built site):

    <!-- example: send-text keep=MESSAGE_ID:messageId -->
    ```bash
    curl -s "$API_URL/api/v1/whatsapp/send" ...
    ```
    <!-- answer -->
    ```json
    {"messageId": "…"}
    ```

Options after the name: ``keep=VAR:path`` exports a value of the answer (a dotted path, list
indexes as numbers) to the page's later examples; ``wait`` runs the example again until its answer
matches (for a GET whose answer changes as the message moves on); ``setup`` needs no answer.

The shown answer is a pattern: ``"…"`` stands for any value, ``"$VAR"`` for the value an earlier
example kept as VAR, a string ending in ``…`` for any
string that starts with what comes before it, an object names the keys that must be there (the
answer may have more), and a list whose last item is ``"…"`` says the answer's list starts with
the items before it (else the lists have the same length).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANY = "…"
_EXAMPLE = re.compile(r"^<!--\s*example:\s*(?P<name>[\w.-]+)(?P<options>[^>]*?)\s*-->\s*$")
_ANSWER = re.compile(r"^<!--\s*answer\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>\S*)")


@dataclass
class Example:
    page: str
    name: str
    line: int
    script: str
    keep: dict[str, str] = field(default_factory=dict)
    wait: bool = False
    setup: bool = False
    answer: Any = None
    has_answer: bool = False

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.name})"


def _fenced_block(lines: list[str], start: int) -> tuple[str, int]:
    """The text of the fenced block that starts at or after ``start`` (blank lines skipped), and
    the index after its closing fence."""
    index = start
    while index < len(lines) and not lines[index].strip():
        index += 1
    opening = _FENCE.match(lines[index]) if index < len(lines) else None
    if opening is None:
        raise ValueError(f"line {start + 1}: a marker must come right before a fenced block")
    indent = len(opening.group("indent"))
    body = []
    index += 1
    while not lines[index].strip().startswith("```"):
        body.append(lines[index][indent:])
        index += 1
    return "\n".join(body) + "\n", index + 1


def parse(text: str, page: str) -> list[Example]:
    lines = text.splitlines()
    examples: list[Example] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if found := _EXAMPLE.match(line):
            options = found.group("options").split()
            keep = dict(option.removeprefix("keep=").split(":", 1) for option in options if option.startswith("keep="))
            unknown = [o for o in options if not o.startswith("keep=") and o not in ("wait", "setup")]
            if unknown:
                raise ValueError(f"{page}:{index + 1}: unknown example options {unknown}")
            marker_line = index + 1
            script, index = _fenced_block(lines, index + 1)
            examples.append(
                Example(page, found.group("name"), marker_line, script, keep, "wait" in options, "setup" in options)
            )
            continue
        if _ANSWER.match(line):
            if not examples:
                raise ValueError(f"{page}:{index + 1}: an answer before any example")
            body, index = _fenced_block(lines, index + 1)
            examples[-1].answer, examples[-1].has_answer = json.loads(body), True
            continue
        index += 1
    return examples


def examples_in(path: Path, root: Path) -> list[Example]:
    return parse(path.read_text(encoding="utf-8"), str(path.relative_to(root)))


def mismatch(expected: Any, actual: Any, where: str = "answer") -> str | None:
    """Where ``actual`` does not match the pattern ``expected``, or None."""
    if expected == ANY:
        return None
    if isinstance(expected, str) and expected.endswith(ANY):
        prefix = expected[: -len(ANY)]
        if isinstance(actual, str) and actual.startswith(prefix):
            return None
        return f"{where}: {actual!r} does not start with {prefix!r}"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: {actual!r} is not an object"
        for key, value in expected.items():
            if key not in actual:
                return f"{where}: no {key!r} in {sorted(actual)}"
            if problem := mismatch(value, actual[key], f"{where}.{key}"):
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{where}: {actual!r} is not a list"
        open_ended = bool(expected) and expected[-1] == ANY
        items = expected[:-1] if open_ended else expected
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return f"{where}: {len(actual)} items, the documentation shows {len(items)}"
        for i, item in enumerate(items):
            if problem := mismatch(item, actual[i], f"{where}[{i}]"):
                return problem
        return None
    if expected != actual:
        return f"{where}: {actual!r}, the documentation shows {expected!r}"
    return None


def substitute(expected: Any, kept: dict[str, str]) -> Any:
    """The pattern with each ``"$VAR"`` string replaced by the value kept as VAR."""
    if isinstance(expected, str) and expected.startswith("$") and expected[1:] in kept:
        return kept[expected[1:]]
    if isinstance(expected, dict):
        return {key: substitute(value, kept) for key, value in expected.items()}
    if isinstance(expected, list):
        return [substitute(item, kept) for item in expected]
    return expected


def value_at(answer: Any, path: str) -> Any:
    for part in path.split("."):
        answer = answer[int(part)] if isinstance(answer, list) else answer[part]
    return answer
