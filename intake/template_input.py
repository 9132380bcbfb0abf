"""A template as the two API surfaces take it, checked by the one canonical model (models/templates.py).

FlowIQ takes Meta's own component shape and names. FlowEstate takes the same shape with its field
names in camelCase, like the rest of that surface (``parameterName``, ``subType``, ``couponCode``,
``fallbackValue``, ``amount1000``, ``dateTime``, ``fileName``); the values (``"quick_reply"``,
``"date_time"``, ...) stay Meta's. Either way an error names the field as the caller wrote it,
from the template down: ``components[1].parameters[0].text``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from intake.errors import rule_of
from models.templates import HEADER_PARAMETER_TYPE, Template

# Canonical (Meta's) field name → FlowEstate's, where they differ.
FLOWESTATE_NAMES: Mapping[str, str] = {
    "parameter_name": "parameterName",
    "fallback_value": "fallbackValue",
    "amount_1000": "amount1000",
    "sub_type": "subType",
    "coupon_code": "couponCode",
    "date_time": "dateTime",
    "filename": "fileName",
}
_CANONICAL_OF = {camel: snake for snake, camel in FLOWESTATE_NAMES.items()}
# Names that also occur as values (a parameter's `type`), so a rule's text keeps them as they are.
_ALSO_VALUES = frozenset({"coupon_code", "date_time"})
_RULE_WITH_FIELD = re.compile(r"^(?P<field>[a-z_0-9]+(?:\[\d+\])?(?:\.[a-z_0-9]+(?:\[\d+\])?)*): (?P<rule>.+)$", re.S)


@dataclass(frozen=True)
class TemplateProblem:
    field: str  # from the template down, as the caller names it ("" for the template itself)
    rule: str


class TemplateInputError(ValueError):
    def __init__(self, problem: TemplateProblem) -> None:
        super().__init__(f"{problem.field}: {problem.rule}" if problem.field else problem.rule)
        self.problem = problem


def problem_of(error: ErrorDetails, names: Mapping[str, str] | None = None) -> TemplateProblem:
    """The first problem pydantic found in a template, ``error['loc']`` starting at the template.
    ``names``: the surface's spelling of canonical field names (FlowIQ keeps Meta's)."""
    names = names or {}
    path = _dotted(_without_union_tags(list(error["loc"])), names)
    rule = rule_of(dict(error))
    if error["type"] == "value_error" and (found := _RULE_WITH_FIELD.match(rule)):
        # A rule of a whole component, whose text starts with the field inside it that it is about.
        inner = _dotted(_split_dotted(found["field"]), names)
        path = f"{path}.{inner}" if path else inner
        rule = found["rule"]
    if error["type"] == "extra_forbidden":
        rule = "is not a field here"
    elif error["type"] == HEADER_PARAMETER_TYPE:
        path = f"{path}.type" if path else "type"
        rule = "a header parameter is text, image, video or document"
    elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # The `type` that picks a component's or parameter's shape is missing or unknown.
        expected = str(error.get("ctx", {}).get("expected_tags", ""))
        path = f"{path}.type" if path else "type"
        rule = f"must be one of {expected}" if error["type"] == "union_tag_invalid" else "is required"
    for canonical, spelled in names.items():
        if canonical not in _ALSO_VALUES:
            rule = re.sub(rf"\b{canonical}\b", spelled, rule)
    return TemplateProblem(path, rule)


def template_from_flowestate(value: Any) -> Template:
    """FlowEstate's camelCase template as the canonical Template, or TemplateInputError."""
    if not isinstance(value, dict):
        raise TemplateInputError(TemplateProblem("", "must be a JSON object"))
    canonical = _renamed(value, "")
    try:
        return Template.model_validate(canonical)
    except ValidationError as exc:
        raise TemplateInputError(problem_of(exc.errors()[0], FLOWESTATE_NAMES)) from None


def flowestate_template_schema() -> dict[str, Any]:
    """The template's JSON schema with FlowEstate's names, self-contained (no $refs) for OpenAPI."""
    schema = Template.model_json_schema()
    definitions = schema.pop("$defs", {})

    def spelled(node: Any) -> Any:
        if isinstance(node, list):
            return [spelled(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return spelled(definitions[node["$ref"].rsplit("/", 1)[-1]])
        out: dict[str, Any] = {}
        for key, item in node.items():
            if key == "discriminator":
                continue  # its mapping points into $defs, which are inlined
            if key == "properties":
                out[key] = {FLOWESTATE_NAMES.get(name, name): spelled(sub) for name, sub in item.items()}
            elif key == "required":
                out[key] = [FLOWESTATE_NAMES.get(name, name) for name in item]
            else:
                out[key] = spelled(item)
        return out

    result: dict[str, Any] = spelled(schema)
    return result


def _renamed(node: Any, path: str) -> Any:
    if isinstance(node, list):
        return [_renamed(item, f"{path}[{n}]") for n, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for raw_key, item in node.items():
        key = str(raw_key)
        here = f"{path}.{key}" if path else key
        if (camel := FLOWESTATE_NAMES.get(key, key)) != key:
            raise TemplateInputError(TemplateProblem(here, f"is not a field here; this API calls it {camel}"))
        out[_CANONICAL_OF.get(key, key)] = _renamed(item, here)
    return out


def _without_union_tags(loc: list[Any]) -> list[Any]:
    """pydantic puts the chosen member of a union after a list index ("components", 0, "body", ...):
    every list in a template holds a union, so the element after an index is its tag."""
    return [part for n, part in enumerate(loc) if not (n > 0 and isinstance(loc[n - 1], int) and isinstance(part, str))]


def _split_dotted(field: str) -> list[Any]:
    parts: list[Any] = []
    for piece in field.split("."):
        name, _, index = piece.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index.rstrip("]")))
    return parts


def _dotted(loc: list[Any], names: Mapping[str, str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = names.get(str(part), str(part))
            out += f".{name}" if out else name
    return out
