"""A production start refuses a Meta address that is not a public https host, and the test-only
media settings; a real production configuration starts. Nothing here resolves a name."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from models.settings import Settings

META = "https://graph.facebook.com"


def production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "token_encryption_key": Fernet.generate_key().decode(),
        "secret_key": "s" * 40,
        "meta_base_url": META,
        "meta_app_secret": "a" * 32,
        "meta_verify_token": "v" * 24,
        "intake_broker_url": "redis://intake-broker:6379/0",  # apart from the test Redis, whatever its db
        "metrics_token": "m" * 32,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_a_real_production_configuration_starts():
    assert production().meta_base_url == META
    assert production(meta_base_url="https://graph.facebook.com/").env == "production"
    assert production(meta_base_url="https://157.240.22.35").env == "production"  # a public literal address


def test_the_sandbox_default_is_refused_in_production():
    with pytest.raises(ValidationError, match="WADISPATCH_META_BASE_URL"):
        production(meta_base_url=Settings().meta_base_url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://graph.facebook.com", "http is not https"),
        ("graph.facebook.com", "no scheme is not https"),
        ("https://127.0.0.1", "loopback"),
        ("https://127.8.9.10:8443", "loopback"),
        ("https://[::1]", "loopback"),
        ("https://localhost", "not a public name"),
        ("https://LOCALHOST.", "not a public name"),
        ("https://meta.localhost", "not a public name"),
        ("https://10.0.0.8", "private"),
        ("https://172.16.4.4", "private"),
        ("https://192.168.0.10", "private"),
        ("https://169.254.169.254", "link-local"),
        ("https://[fe80::1]", "link-local"),
        ("https://[fd00::1]", "unique-local"),
        ("https://100.64.1.1", "carrier-grade NAT"),
        ("https://0.0.0.0", "unspecified"),
        ("https://[::ffff:10.0.0.1]", "not a public address"),
        ("https://2130706433", "non-standard spelling"),
        ("https://0x7f.1", "non-standard spelling"),
        ("https://sandbox", "not a public name"),
        ("https://meta.internal", "not a public name"),
        ("https://printer.local", "not a public name"),
        ("https://graph.test", "not a public name"),
    ],
)
def test_meta_must_be_a_public_https_host(url, reason):
    with pytest.raises(ValidationError, match="WADISPATCH_META_BASE_URL") as caught:
        production(meta_base_url=url)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "test_only",
    [
        {"media_test_allowed": ["127.0.0.1:9000"]},
        {"media_test_hosts": {"example.com": "http://127.0.0.1:9000"}},
        {"media_egress_loopback_only": True},
    ],
)
def test_test_only_media_settings_are_refused(test_only):
    with pytest.raises(ValidationError, match="test-only settings"):
        production(**test_only)


def test_development_keeps_the_sandbox():
    assert Settings(env="development").meta_base_url.startswith("http://127.0.0.1")


@pytest.mark.parametrize("missing", ["meta_app_secret", "meta_verify_token"])
def test_webhooks_need_a_real_app_secret_and_verify_token(missing):
    setting = f"WADISPATCH_{missing.upper()}"
    with pytest.raises(ValidationError, match=setting):
        production(**{missing: ""})
    with pytest.raises(ValidationError, match=setting):
        production(**{missing: getattr(Settings(), missing)})  # the development default
    # Without webhooks, neither is needed.
    assert production(**{missing: "", "webhooks_enabled": False}).webhooks_enabled is False


@pytest.mark.parametrize("token", ["", "   "])
def test_production_needs_a_metrics_token(token):
    """The API's /metrics and each worker's name accounts and organizations: production does not
    start with them open."""
    with pytest.raises(ValidationError, match="WADISPATCH_METRICS_TOKEN") as caught:
        production(metrics_token=token)
    assert "production refuses unsafe settings" in str(caught.value)
    assert Settings(env="development").metrics_token == ""  # development stays open
