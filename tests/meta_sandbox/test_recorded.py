"""The sandbox's record of what it received, read over HTTP (in-process ASGI client)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from meta_sandbox.app import create_app


def _send(client: TestClient, number: str, text: str) -> None:
    body = {"messaging_product": "whatsapp", "to": "18095550100", "type": "text", "text": {"body": text}}
    response = client.post(f"/v21.0/{number}/messages", json=body, headers={"Authorization": "Bearer t"})
    assert response.status_code == 200, response.text


def test_counts_alone_leave_the_bodies_out() -> None:
    client = TestClient(create_app())
    _send(client, "111", "one")
    _send(client, "111", "two")
    _send(client, "222", "three")
    full = client.get("/_sandbox/messages").json()
    assert full["count"] == 3 and [m["body"]["text"]["body"] for m in full["data"]] == ["one", "two", "three"]
    counts = client.get("/_sandbox/messages", params={"include_data": "false"}).json()
    assert counts == {"count": 3, "calls": 3, "errors": {}}
    one_number = client.get("/_sandbox/messages", params={"phone_number_id": "222", "include_data": "false"}).json()
    assert one_number["count"] == 1 and "data" not in one_number
