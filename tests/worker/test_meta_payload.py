"""Golden Graph API bodies: one per FlowIQ message type (nine), plus FlowEstate's shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intake.flowiq_request import parse_send
from meta_sandbox.validation import problem_with
from models.outbound import MediaMessage, TextMessage, outbound_adapter
from worker.meta_payload import build_body

SEED = json.loads((Path(__file__).parent.parent / "fixtures" / "flowiq_seed_examples.json").read_text())
ENVELOPE = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "27123456789"}

GOLDEN = {
    "text": {"type": "text", "text": {"body": "Hello, World!", "preview_url": False}},
    "image": {"type": "image", "image": {"link": "https://example.com/product.jpg", "caption": "Our latest product!"}},
    "video": {"type": "video", "video": {"link": "https://example.com/demo.mp4", "caption": "Watch our demo video"}},
    "audio": {"type": "audio", "audio": {"link": "https://example.com/message.mp3"}},
    "document": {
        "type": "document",
        "document": {
            "link": "https://example.com/invoice.pdf",
            "caption": "Please find your invoice attached",
            "filename": "Invoice_2025.pdf",
        },
    },
    "location": {
        "type": "location",
        "location": {
            "latitude": -33.9249,
            "longitude": 18.4241,
            "name": "Cape Town Office",
            "address": "123 Main Street, Cape Town",
        },
    },
    "contacts": {
        "type": "contacts",
        "contacts": [
            {
                "name": {"formatted_name": "John Doe", "first_name": "John", "last_name": "Doe"},
                "phones": [{"phone": "+27987654321", "type": "CELL"}],
            }
        ],
    },
    "buttons": {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "text", "text": "Order Confirmation"},
            "body": {"text": "Would you like to confirm your order #12345?"},
            "footer": {"text": "Reply within 24 hours"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": "confirm", "title": "Confirm"}},
                    {"type": "reply", "reply": {"id": "cancel", "title": "Cancel"}},
                    {"type": "reply", "reply": {"id": "modify", "title": "Modify Order"}},
                ]
            },
        },
    },
    "buttons_header_media": {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "image", "image": {"link": "https://example.com/product.jpg"}},
            "body": {"text": "Check out our new product!"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": "buy", "title": "Buy Now"}},
                    {"type": "reply", "reply": {"id": "info", "title": "More Info"}},
                ]
            },
        },
    },
    "list": {
        "type": "interactive",
        "interactive": {
            "type": "list",
            "header": {"type": "text", "text": "Our Menu"},
            "body": {"text": "Please select from our available options:"},
            "footer": {"text": "Tap the button below to view options"},
            "action": {
                "button": "View Menu",
                "sections": [
                    {
                        "title": "Main Dishes",
                        "rows": [
                            {"id": "burger", "title": "Burger", "description": "Beef patty with cheese"},
                            {"id": "pizza", "title": "Pizza", "description": "Margherita or Pepperoni"},
                        ],
                    },
                    {
                        "title": "Drinks",
                        "rows": [
                            {"id": "cola", "title": "Cola", "description": "500ml bottle"},
                            {"id": "water", "title": "Water", "description": "Still or sparkling"},
                        ],
                    },
                ],
            },
        },
    },
    "reaction": {
        "type": "reaction",
        "reaction": {"message_id": "wamid.HBgLMjc4MTIzNDU2NzgVAgASGBQzRUI...", "emoji": "❤️"},
    },
    "basic_reply": {
        "type": "text",
        "text": {"body": "This is a reply to your message!", "preview_url": False},
        "context": {"message_id": "wamid.HBgLMjc4MTIzNDU2NzgVAgASGBQzRUI..."},
    },
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_body(name):
    sent = parse_send(SEED[name])
    body = build_body(sent.message, to=sent.wa_id, callback_data="msg-1")
    assert body == {**ENVELOPE, **GOLDEN[name], "biz_opaque_callback_data": "msg-1"}
    assert problem_with(body) is None


def test_flowestate_document_by_link():
    msg = MediaMessage(type="document", url="https://x.example/b.pdf", caption="Brochure", filename="b.pdf")
    assert build_body(msg, to="1234567", callback_data="m")["document"] == {
        "link": "https://x.example/b.pdf",
        "caption": "Brochure",
        "filename": "b.pdf",
    }


def test_payload_round_trips_through_storage_json():
    for name in GOLDEN:
        message = parse_send(SEED[name]).message
        stored = json.loads(json.dumps(message.model_dump(mode="json", exclude_none=True)))
        assert outbound_adapter.validate_python(stored) == message


def test_callback_data_is_capped_at_metas_limit():
    body = build_body(TextMessage(body="x"), to="1234567", callback_data="z" * 600)
    assert len(body["biz_opaque_callback_data"]) == 512


TEMPLATE_SEND = {
    "phone_number": "+27123456789",
    "message_type": "template",
    "context_message_id": "wamid.in-1",
    "template": {
        "name": "new_listing",
        "language": "en_US",
        "components": [
            {"type": "header", "parameters": [{"type": "video", "video": {"link": "https://x.example/tour.mp4"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "12 Oak Lane"}]},
            {"type": "button", "sub_type": "url", "index": 2, "parameters": [{"type": "text", "text": "l/12"}]},
        ],
    },
}


def test_template_body_by_link_and_by_uploaded_id():
    message = parse_send(TEMPLATE_SEND).message
    by_link = build_body(message, to="27123456789", callback_data="m")
    assert by_link == {
        **ENVELOPE,
        "type": "template",
        "template": {
            "name": "new_listing",
            "language": {"code": "en_US"},
            "components": [
                {"type": "header", "parameters": [{"type": "video", "video": {"link": "https://x.example/tour.mp4"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "12 Oak Lane"}]},
                {"type": "button", "sub_type": "url", "index": "2", "parameters": [{"type": "text", "text": "l/12"}]},
            ],
        },
        "context": {"message_id": "wamid.in-1"},
        "biz_opaque_callback_data": "m",
    }
    by_id = build_body(message, to="27123456789", callback_data="m", media_id="9001")
    header = by_id["template"]["components"][0]
    assert header == {"type": "header", "parameters": [{"type": "video", "video": {"id": "9001"}}]}
    assert problem_with(by_link) is None and problem_with(by_id) is None
    stored = json.loads(json.dumps(message.model_dump(mode="json", exclude_none=True)))
    assert outbound_adapter.validate_python(stored) == message
