"""A FlowEstate body the request schema accepts always becomes a canonical message (else: a 500)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from intake.flowestate_request import SendIn

text = st.text(max_size=1100) | st.sampled_from(["", " ", "x" * 1024, "x" * 1025])
media = st.fixed_dictionaries(
    {"url": st.sampled_from(["https://a.example/x.pdf", "https://", "http://a.example/x", "https://a"]) | text,
     "type": st.sampled_from(["image", "video", "document", "audio"])},
    optional={"mimetype": st.none() | text, "fileName": st.none() | text},
)  # fmt: skip
bodies = st.fixed_dictionaries(
    {"leadId": st.just(str(uuid.uuid4())), "whatsappAccountId": st.just(str(uuid.uuid4())), "message": text},
    optional={"media": st.none() | media},
)


@settings(max_examples=500, deadline=None)
@given(bodies)
def test_accepted_bodies_translate(body):
    try:
        parsed = SendIn.model_validate(body)
    except ValidationError:
        return
    message = parsed.to_outbound()
    assert message.type in ("text", "image", "video", "document")
