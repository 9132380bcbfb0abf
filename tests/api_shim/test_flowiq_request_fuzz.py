"""Whatever JSON a client sends, the FlowIQ translation answers with a FlowIQ error or a message:
never an unexpected exception (which would be a 500)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from intake.errors import FlowIQError
from intake.flowiq_request import FLOWIQ_TYPES, parse_send

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["text", "media_url", "caption", "filename", "location", "contacts", "interactive", "reaction",
     "context_message_id", "type", "body", "buttons", "sections", "button", "header", "footer", "header_media"]
)  # fmt: skip
nested = st.dictionaries(field_names, json_values, max_size=6)
bodies = st.fixed_dictionaries(
    {"phone_number": st.sampled_from(["+27123456789", "27 12 345 6789", "", "x", None]) | json_values,
     "message_type": st.sampled_from(FLOWIQ_TYPES) | json_values},
    optional={name: json_values | nested for name in
              ("text", "media_url", "caption", "filename", "location", "contacts", "interactive", "reaction",
               "context_message_id")},
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_any_body_gets_a_flowiq_answer(body):
    try:
        sent = parse_send(body)
    except FlowIQError as error:
        assert error.status == 400 and error.error and error.message
    else:
        assert sent.wa_id.isdigit()


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_any_json_document(body):
    try:
        parse_send(body)
    except FlowIQError as error:
        assert error.status == 400
