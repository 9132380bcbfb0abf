"""Every limit, at the limit and one past, on the FlowIQ request translation (pure: no HTTP).

At the limit the message is accepted and the Graph API body built from it passes the sandbox's
Meta checks; one past it is refused with the FlowIQ field named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from intake.errors import FlowIQError
from intake.flowiq_request import parse_send
from meta_sandbox.validation import problem_with
from worker.meta_payload import build_body

PHONE = "+27123456789"


def text(n: int) -> dict[str, Any]:
    return {"message_type": "text", "text": "t" * n}


def media(kind: str, **fields: Any) -> dict[str, Any]:
    return {"message_type": kind, "media_url": "https://example.com/file", **fields}


def location(lat: float, lon: float) -> dict[str, Any]:
    return {"message_type": "location", "location": {"latitude": lat, "longitude": lon}}


def buttons(count: int = 2, title: int = 5, body: int = 10, **extra: Any) -> dict[str, Any]:
    items = [{"id": f"b{i}", "title": f"{i}" + "x" * (title - 1)} for i in range(count)]
    return {
        "message_type": "interactive",
        "interactive": {"type": "button", "body": "b" * body, "buttons": items, **extra},
    }


def listing(sections: int = 1, rows: int = 1, **over: Any) -> dict[str, Any]:
    secs = [
        {"title": over.get("section_title", f"S{s}"), "rows": [
            {"id": f"{s}-{r}", "title": over.get("row_title", "Row"), "description": over.get("description", "d")}
            for r in range(rows)
        ]}
        for s in range(sections)
    ]  # fmt: skip
    interactive = {"type": "list", "body": "Pick one", "button": over.get("button", "Menu"), "sections": secs}
    return {"message_type": "interactive", "interactive": interactive}


def reaction(emoji: str) -> dict[str, Any]:
    return {"message_type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": emoji}}


BOUNDARIES: list[tuple[str, Callable[[], dict[str, Any]], Callable[[], dict[str, Any]], str]] = [
    ("text 4096", lambda: text(4096), lambda: text(4097), "text"),
    ("caption 1024", lambda: media("image", caption="c" * 1024), lambda: media("image", caption="c" * 1025), "caption"),
    (
        "filename 240",
        lambda: media("document", filename="f" * 240),
        lambda: media("document", filename="f" * 241),
        "filename",
    ),
    ("latitude 90", lambda: location(90, 0), lambda: location(90.0001, 0), "location.latitude"),
    ("latitude -90", lambda: location(-90, 0), lambda: location(-90.0001, 0), "location.latitude"),
    ("longitude 180", lambda: location(0, 180), lambda: location(0, 180.0001), "location.longitude"),
    ("longitude -180", lambda: location(0, -180), lambda: location(0, -180.0001), "location.longitude"),
    ("body 1024", lambda: buttons(body=1024), lambda: buttons(body=1025), "interactive.body"),
    ("header 60", lambda: buttons(header="h" * 60), lambda: buttons(header="h" * 61), "interactive.header"),
    ("footer 60", lambda: buttons(footer="f" * 60), lambda: buttons(footer="f" * 61), "interactive.footer"),
    ("3 buttons", lambda: buttons(count=3), lambda: buttons(count=4), "interactive.buttons"),
    ("button title 20", lambda: buttons(title=20), lambda: buttons(title=21), "interactive.buttons[0].title"),
    ("list button 20", lambda: listing(button="m" * 20), lambda: listing(button="m" * 21), "interactive.button"),
    ("10 sections", lambda: listing(sections=10), lambda: listing(sections=11), "interactive.sections"),
    (
        "section title 24",
        lambda: listing(section_title="s" * 24),
        lambda: listing(section_title="s" * 25),
        "interactive.sections[0].title",
    ),
    (
        "row title 24",
        lambda: listing(row_title="r" * 24),
        lambda: listing(row_title="r" * 25),
        "interactive.sections[0].rows[0].title",
    ),
    (
        "row description 72",
        lambda: listing(description="d" * 72),
        lambda: listing(description="d" * 73),
        "interactive.sections[0].rows[0].description",
    ),
    ("10 rows in total", lambda: listing(sections=2, rows=5), lambda: listing(sections=2, rows=6), "sections"),
    ("one emoji", lambda: reaction("👨‍👩‍👧"), lambda: reaction("👍👍"), "reaction.emoji"),
]


@pytest.mark.parametrize(("at", "past", "field"), [b[1:] for b in BOUNDARIES], ids=[b[0] for b in BOUNDARIES])
def test_limit_boundaries(at, past, field):
    accepted = parse_send({"phone_number": PHONE, **at()})
    assert problem_with(build_body(accepted.message, to=accepted.wa_id, callback_data="id")) is None
    with pytest.raises(FlowIQError) as refused:
        parse_send({"phone_number": PHONE, **past()})
    assert refused.value.status == 400
    assert refused.value.message.startswith(field) or f"{field}:" in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (buttons(count=2) | {"interactive": {**buttons()["interactive"], "buttons": [{"id": "a", "title": "A"}] * 2}},
         "unique"),
        (buttons(header="H", header_media={"type": "image", "url": "https://e.x/a.png"}), "not both"),
        (media("audio", caption="no"), "audio messages do not support captions"),
        (media("image", filename="a.png"), "only document messages take a filename"),
        (media("image") | {"media_url": "http://example.com/a.png"}, "media_url: must be an https URL"),
        (reaction("a"), "reaction.emoji: must be exactly one emoji"),
        (reaction(""), "reaction.emoji"),
        ({"message_type": "location", "location": {"latitude": "north", "longitude": 1}}, "location.latitude"),
        ({"message_type": "interactive", "interactive": {"type": "carousel", "body": "x"}}, "interactive.type"),
        ({"message_type": "text", "text": "hi", "context_message_id": ""}, "context_message_id"),
        ({"message_type": "contacts", "contacts": []}, "contacts"),
    ],
)  # fmt: skip
def test_other_invalid_values_name_the_field(body, mentions):
    with pytest.raises(FlowIQError) as refused:
        parse_send({"phone_number": PHONE, **body})
    assert refused.value.status == 400 and mentions in refused.value.message, refused.value.message


def test_reaction_emoji_defaults_to_thumbs_up():
    sent = parse_send({"phone_number": PHONE, "message_type": "reaction", "reaction": {"message_id": "wamid.X"}})
    assert build_body(sent.message, to=sent.wa_id, callback_data="m")["reaction"] == {
        "message_id": "wamid.X",
        "emoji": "👍",
    }


@pytest.mark.parametrize("raw", ["+27 12 345 6789", "27-12-345-6789", "(+27) 123456789", "+27.12.345.6789"])
def test_phone_noise_is_removed(raw):
    assert parse_send({"phone_number": raw, **text(1)}).wa_id == "27123456789"


@pytest.mark.parametrize("raw", ["+44 (0)20 7946 0958", "+44 20 7946 0958", "44 (0) 20-7946-0958", "+4402079460958"])
def test_a_national_trunk_zero_is_normalised_away(raw):
    assert parse_send({"phone_number": raw, **text(1)}).wa_id == "442079460958"


@pytest.mark.parametrize("raw", ["+27 12", "0123456789", "+1 (000) 000-0000", "phone", "+27123456789x"])
def test_invalid_phone_numbers(raw):
    with pytest.raises(FlowIQError) as refused:
        parse_send({"phone_number": raw, **text(1)})
    assert refused.value.error == "Invalid phone number" and "phone_number" in refused.value.message
