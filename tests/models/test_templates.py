"""Template messages: golden Graph API blocks for every component and parameter kind, and Meta's
limits at the boundary and one past (models/templates.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models.templates import Template, graph_template


def template(*components: dict[str, Any], name: str = "order_update", language: str = "en_US") -> Template:
    return Template.model_validate({"name": name, "language": language, "components": list(components)})


def body(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "body", "parameters": list(parameters)}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def button(sub_type: str, index: int, parameter: dict[str, Any]) -> dict[str, Any]:
    return {"type": "button", "sub_type": sub_type, "index": index, "parameters": [parameter]}


def test_a_template_without_parameters():
    assert graph_template(template(name="hello_world")) == {"name": "hello_world", "language": {"code": "en_US"}}


def test_every_component_and_parameter_kind():
    t = template(
        {"type": "header", "parameters": [text("Your order")]},
        body(
            text("Ana"),
            {"type": "currency", "currency": {"fallback_value": "$100.99", "code": "USD", "amount_1000": 100990}},
            {"type": "date_time", "date_time": {"fallback_value": "February 25, 1977"}},
        ),
        button("quick_reply", 0, {"type": "payload", "payload": "STOP"}),
        button("url", 1, text("order/123")),
        button("copy_code", 2, {"type": "coupon_code", "coupon_code": "SAVE25"}),
        language="pt_BR",
    )
    assert graph_template(t) == {
        "name": "order_update",
        "language": {"code": "pt_BR"},
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "Your order"}]},
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Ana"},
                    {"type": "currency",
                     "currency": {"fallback_value": "$100.99", "code": "USD", "amount_1000": 100990}},
                    {"type": "date_time", "date_time": {"fallback_value": "February 25, 1977"}},
                ],
            },
            {"type": "button", "sub_type": "quick_reply", "index": "0",
             "parameters": [{"type": "payload", "payload": "STOP"}]},
            {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "order/123"}]},
            {"type": "button", "sub_type": "copy_code", "index": "2",
             "parameters": [{"type": "coupon_code", "coupon_code": "SAVE25"}]},
        ],
    }  # fmt: skip


def test_named_parameters_keep_their_names():
    t = template(body(text("Ana", parameter_name="first_name"), text("42", parameter_name="order_id")))
    assert graph_template(t)["components"][0]["parameters"] == [
        {"type": "text", "text": "Ana", "parameter_name": "first_name"},
        {"type": "text", "text": "42", "parameter_name": "order_id"},
    ]
    with pytest.raises(ValidationError, match="every parameter is named"):
        template(body(text("Ana", parameter_name="first_name"), text("42")))


@pytest.mark.parametrize("kind", ["image", "video", "document"])
def test_a_media_header_goes_by_link_then_by_its_uploaded_id(kind):
    media: dict[str, Any] = {"link": f"https://cdn.example.com/file.{kind}"}
    if kind == "document":
        media["filename"] = "menu.pdf"
    t = template({"type": "header", "parameters": [{"type": kind, kind: media}]})
    assert t.header_media is not None and t.header_media.media.link == media["link"]
    assert graph_template(t)["components"][0]["parameters"] == [{"type": kind, kind: media}]
    by_id = {"id": "1234567890", **({"filename": "menu.pdf"} if kind == "document" else {})}
    assert graph_template(t, header_media_id="1234567890")["components"][0]["parameters"] == [
        {"type": kind, kind: by_id}
    ]


@pytest.mark.parametrize(
    ("component", "at_limit", "one_past", "rule"),
    [
        ("header", "x" * 60, "x" * 61, "at most 60"),
        ("body", "x" * 1024, "x" * 1025, "at most 1024"),
        ("quick_reply", "p" * 128, "p" * 129, "128"),
        ("url", "u" * 2000, "u" * 2001, "2000"),
    ],
)
def test_parameter_lengths_at_the_limit_and_one_past(component, at_limit, one_past, rule):
    def build(value: str) -> Template:
        if component == "header":
            return template({"type": "header", "parameters": [text(value)]})
        if component == "body":
            return template(body(text(value)))
        if component == "quick_reply":
            return template(button("quick_reply", 0, {"type": "payload", "payload": value}))
        return template(button("url", 0, text(value)))

    build(at_limit)
    with pytest.raises(ValidationError, match=rule):
        build(one_past)


@pytest.mark.parametrize("value", ["two\nlines", "a\ttab", "four    spaces"])
def test_body_parameters_refuse_new_lines_tabs_and_runs_of_spaces(value):
    template(body(text("three   spaces are fine")))
    with pytest.raises(ValidationError, match="new lines, tabs or more than 3 spaces"):
        template(body(text(value)))


def test_at_most_ten_buttons_with_indexes_zero_to_nine_each_once():
    buttons = [button("quick_reply", n, {"type": "payload", "payload": f"p{n}"}) for n in range(10)]
    assert len(graph_template(template(*buttons))["components"]) == 10
    with pytest.raises(ValidationError, match="less than or equal to 9"):
        template(button("quick_reply", 10, {"type": "payload", "payload": "p"}))
    with pytest.raises(ValidationError, match="each button index appears once"):
        template(buttons[0], buttons[0])


@pytest.mark.parametrize(
    ("components", "rule"),
    [
        ([button("url", 0, {"type": "payload", "payload": "x"})], "a url button takes a `text` parameter"),
        ([button("quick_reply", 0, text("x"))], "a quick_reply button takes a `payload` parameter"),
        ([body(text("a")), body(text("b"))], "at most one body"),
        ([{"type": "header", "parameters": [{"type": "image", "image": {"link": "http://x.example/a.png"}}]}], "https"),
        ([{"type": "header", "parameters": [{"type": "image", "video": {"link": "https://x.example/a.mp4"}}]}],
         "exactly one `image` block"),
        ([body({"type": "currency", "currency": {"fallback_value": "$1", "code": "usd", "amount_1000": 1}})], "code"),
        ([{"type": "footer", "parameters": []}], "type"),
    ],
)  # fmt: skip
def test_component_mistakes_are_named(components, rule):
    with pytest.raises(ValidationError, match=rule):
        template(*components)


@pytest.mark.parametrize(("name", "language"), [("Order Update", "en_US"), ("order_update", "english"), ("", "en")])
def test_name_and_language_follow_metas_form(name, language):
    with pytest.raises(ValidationError):
        template(name=name, language=language)
