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
