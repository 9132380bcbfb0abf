import pytest

from meta_sandbox.validation import problem_with

GOOD_TEXT = {"messaging_product": "whatsapp", "to": "18095550101", "type": "text", "text": {"body": "hi"}}


def test_a_good_text_body_passes():
    assert problem_with(GOOD_TEXT) is None


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"messaging_product": "sms"}, "messaging_product"),
        ({"to": "abc"}, "'to'"),
        ({"type": "fax"}, "Unsupported message type"),
        ({"text": {"body": ""}}, "text.body"),
        ({"text": {"body": "x" * 4097}}, "4096"),
        ({"text": {"body": "x", "bogus": 1}}, "Unexpected"),
        ({"text": None}, "required"),
        ({"biz_opaque_callback_data": "x" * 513}, "512"),
    ],
)
def test_bad_text_bodies_are_named(change, mentions):
    problem = problem_with({**GOOD_TEXT, **change})
    assert problem is not None and mentions in problem


@pytest.mark.parametrize(
    ("kind", "block", "ok"),
    [
        ("image", {"link": "https://x/a.png", "caption": "c"}, True),
        ("image", {"id": "123"}, True),
        ("image", {"id": "1", "link": "https://x/a.png"}, False),
        ("image", {}, False),
        ("image", {"link": "ftp://x/a.png"}, False),
        ("image", {"link": "https://x/a.png", "filename": "a.png"}, False),
        ("audio", {"link": "https://x/a.ogg", "caption": "no"}, False),
        ("document", {"link": "https://x/a.pdf", "caption": "c", "filename": "a.pdf"}, True),
    ],
)
def test_media_blocks(kind, block, ok):
    body = {"messaging_product": "whatsapp", "to": "18095550101", "type": kind, kind: block}
    assert (problem_with(body) is None) is ok


def _interactive(block):
    return {"messaging_product": "whatsapp", "to": "18095550101", "type": "interactive", "interactive": block}


BUTTON = {
    "type": "button",
    "body": {"text": "Pick"},
    "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]},
}
LIST = {
    "type": "list",
    "body": {"text": "Pick"},
    "action": {"button": "Menu", "sections": [{"title": "S", "rows": [{"id": "r", "title": "R"}]}]},
}


def test_good_interactive_bodies_pass():
    assert problem_with(_interactive(BUTTON)) is None
    assert problem_with(_interactive(LIST)) is None


@pytest.mark.parametrize(
    ("block", "mentions"),
    [
        ({**BUTTON, "action": {"buttons": []}}, "1 to 3"),
        ({**BUTTON, "action": {"buttons": [{"id": "a", "title": "A"}]}}, "type: reply"),
        (
            {**BUTTON, "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}] * 2}},
            "unique",
        ),
        ({**BUTTON, "body": {"text": "x" * 1025}}, "1024"),
        ({**BUTTON, "footer": {"text": "x" * 61}}, "60"),
        ({**LIST, "header": {"type": "image", "image": {"link": "https://x/a.png"}}}, "only take a text header"),
        (
            {
                **LIST,
                "action": {
                    "button": "Menu",
                    "sections": [{"title": "S", "rows": [{"id": str(i), "title": "R"} for i in range(11)]}],
                },
            },
            "10 rows in total",
        ),
        ({**LIST, "action": {"button": "M" * 21, "sections": LIST["action"]["sections"]}}, "1 to 20"),
        ({**LIST, "type": "carousel"}, "interactive.type"),
    ],
)
def test_bad_interactive_bodies(block, mentions):
    problem = problem_with(_interactive(block))
    assert problem is not None and mentions in problem


@pytest.mark.parametrize(
    ("kind", "block", "mentions"),
    [
        ("location", {"latitude": 91, "longitude": 0}, "latitude"),
        ("location", {"latitude": 0, "longitude": True}, "longitude"),
        ("contacts", [], "non-empty"),
        ("contacts", [{"name": {}}], "formatted_name"),
        ("reaction", {"emoji": "x"}, "message_id"),
    ],
)
def test_other_types(kind, block, mentions):
    body = {"messaging_product": "whatsapp", "to": "18095550101", "type": kind, kind: block}
    problem = problem_with(body)
    assert problem is not None and mentions in problem
