"""The one walk over a parsed body that finds what Postgres cannot store, with its JSON path."""

from __future__ import annotations

import json

import pytest

from intake.storable_text import NON_FINITE_RULE, NUL_RULE, SURROGATE_RULE, first_unstorable, text_rule


@pytest.mark.parametrize(
    ("raw", "field", "rule"),
    [
        ('{"text": "a\\u0000b"}', "text", NUL_RULE),
        ('{"contacts": [{"name": {"formatted_name": "\\u0000"}}]}', "contacts[0].name.formatted_name", NUL_RULE),
        ('{"contacts": [{"phones": [{"phone": "1"}, {"phone": "\\u0000"}]}]}', "contacts[0].phones[1].phone", NUL_RULE),
        (
            '{"interactive": {"sections": [{"rows": [{"id": "\\ud800"}]}]}}',
            "interactive.sections[0].rows[0].id",
            SURROGATE_RULE,
        ),
        ('{"text": "x\\udfff"}', "text", SURROGATE_RULE),
        ('{"location": {"latitude": NaN}}', "location.latitude", NON_FINITE_RULE),
        ('{"location": {"longitude": -Infinity}}', "location.longitude", NON_FINITE_RULE),
        ('{"a": {"k\\u0000": 1}}', 'a["k\\u0000"]', "field names " + NUL_RULE),
        ('{"two words": "\\u0000"}', '["two words"]', NUL_RULE),
        ('"\\u0000"', "body", NUL_RULE),
        ('[1, [2, "\\u0000"]]', "[1][1]", NUL_RULE),
    ],
)
def test_names_the_path_and_the_rule(raw, field, rule):
    problem = first_unstorable(json.loads(raw))
    assert problem is not None and (problem.field, problem.rule) == (field, rule)
    assert str(problem) == f"{field}: {rule}"


def test_the_first_in_document_order_is_named():
    problem = first_unstorable(json.loads('{"a": ["ok", {"b": "\\u0000"}], "c": "\\u0000"}'))
    assert problem is not None and problem.field == "a[1].b"


def test_a_bad_key_never_appears_raw_in_the_message():
    problem = first_unstorable({"x\x00\ud800": "v"})
    assert problem is not None and "\x00" not in str(problem) and "\ud800" not in str(problem)


@pytest.mark.parametrize(
    "value",
    ["", "plain", "😀" * 10_000, "\u202eשלום\u200f مرحبا", "e\u0301\u200d", "\\u0000", 1e308, 10**50],
)
def test_storable_values_pass(value):
    assert first_unstorable({"v": value, "list": [value, {"k": value}]}) is None


def test_a_surrogate_pair_from_json_is_one_character_and_fine():
    assert json.loads('"\\ud83d\\ude00"') == "😀" and text_rule("😀") is None


def test_a_hundred_thousand_levels_are_walked_without_recursion():
    value: list = ["\x00"]
    for _ in range(100_000):
        value = [value]
    problem = first_unstorable(value)
    assert problem is not None and problem.rule == NUL_RULE and problem.field.count("[0]") == 100_001
