"""The sandbox's record of what it received, read over real HTTP from the running sandbox."""

from __future__ import annotations

import uuid


def _send(sandbox, number: str, text: str) -> None:
    body = {"messaging_product": "whatsapp", "to": "18095550100", "type": "text", "text": {"body": text}}
    response = sandbox.http.post(f"/v21.0/{number}/messages", json=body, headers={"Authorization": "Bearer t"})
    assert response.status_code == 200, response.text


def test_counts_alone_leave_the_bodies_out(sandbox) -> None:
    number = f"9{uuid.uuid4().int % 10**12:012d}"
    _send(sandbox, number, "one")
    _send(sandbox, number, "two")
    full = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()
    assert full["count"] == 2 and [m["body"]["text"]["body"] for m in full["data"]] == ["one", "two"]
    counts = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number, "include_data": "false"})
    assert counts.json() == {"count": 2, "calls": 2, "errors": {}}
