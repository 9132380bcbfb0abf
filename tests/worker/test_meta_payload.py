"""Golden Graph API bodies for each canonical message the skeleton sends."""

from models.outbound import MediaMessage, TextMessage, outbound_adapter
from worker.meta_payload import build_body


def test_text_body():
    body = build_body(TextMessage(body="Hola"), to="18095550101", callback_data="m-1")
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "18095550101",
        "type": "text",
        "biz_opaque_callback_data": "m-1",
        "text": {"body": "Hola", "preview_url": False},
    }


def test_reply_context():
    body = build_body(TextMessage(body="ok", context_message_id="wamid.X"), to="1", callback_data="m")
    assert body["context"] == {"message_id": "wamid.X"}


def test_document_by_link_with_caption_and_filename():
    msg = MediaMessage(type="document", url="https://x.example/b.pdf", caption="Brochure", filename="b.pdf")
    assert build_body(msg, to="1", callback_data="m")["document"] == {
        "link": "https://x.example/b.pdf",
        "caption": "Brochure",
        "filename": "b.pdf",
    }


def test_image_drops_filename_and_audio_drops_caption():
    image = MediaMessage(type="image", url="https://x.example/a.png", caption="Look", filename="a.png")
    assert build_body(image, to="1", callback_data="m")["image"] == {
        "link": "https://x.example/a.png",
        "caption": "Look",
    }
    audio = MediaMessage(type="audio", url="https://x.example/a.ogg", caption="ignored")
    assert build_body(audio, to="1", callback_data="m")["audio"] == {"link": "https://x.example/a.ogg"}


def test_payload_round_trips_through_storage_json():
    msg = MediaMessage(type="video", url="https://x.example/v.mp4", caption="Tour")
    stored = msg.model_dump(mode="json", exclude_none=True)
    assert outbound_adapter.validate_python(stored) == msg


def test_callback_data_is_capped_at_metas_limit():
    body = build_body(TextMessage(body="x"), to="1", callback_data="z" * 600)
    assert len(body["biz_opaque_callback_data"]) == 512
