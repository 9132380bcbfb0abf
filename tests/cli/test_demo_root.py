"""The demo's curl commands point where a user reaches the API, never at 0.0.0.0."""

from __future__ import annotations

from cli.demo import api_root, curl_examples
from models.settings import Settings

DEMO = {
    "org": "demo",
    "key": "fe_k_example",
    "fiq_key": "fiq_example",
    "account_id": "00000000-0000-0000-0000-000000000001",
    "lead_ids": ["00000000-0000-0000-0000-000000000002", "00000000-0000-0000-0000-000000000003"],
    "lead_phones": ["+15550001", "+15550002"],
}


def test_the_public_base_url_wins_over_the_listening_address():
    settings = Settings(api_host="0.0.0.0", api_port=8000, public_base_url="https://dispatch.example.org/")
    text = curl_examples(DEMO, settings)
    assert "0.0.0.0" not in text
    assert "https://dispatch.example.org/api/v1/whatsapp/send" in text
    assert "https://dispatch.example.org/send-whatsapp?tenantId=demo" in text


def test_without_a_public_url_a_wildcard_listener_is_shown_as_loopback():
    assert api_root(Settings(api_host="0.0.0.0", api_port=8123)) == "http://127.0.0.1:8123"
    assert api_root(Settings(api_host="10.1.2.3", api_port=8000)) == "http://10.1.2.3:8000"
