"""Settings, phone numbers, token encryption, key hashing."""

import pytest
from pydantic import ValidationError

from models.crypto import decrypt_token, encrypt_token
from models.enums import KeyKind
from models.keys import generate_key, hash_key
from models.phones import InvalidPhone, is_valid_e164, normalize_e164, wa_id_of
from models.settings import Settings


def test_production_refuses_the_development_secrets():
    with pytest.raises(ValidationError, match="WADISPATCH_TOKEN_ENCRYPTION_KEY, WADISPATCH_SECRET_KEY"):
        Settings(env="production")


def test_production_starts_with_real_secrets():
    from cryptography.fernet import Fernet

    settings = Settings(
        env="production",
        token_encryption_key=Fernet.generate_key().decode(),
        secret_key="s" * 40,
        meta_base_url="https://graph.facebook.com",
        meta_app_secret="a" * 32,
        meta_verify_token="v" * 24,
        intake_broker_url="redis://intake-broker:6379/0",
        metrics_token="m" * 32,
    )
    assert settings.env == "production" and settings.intake_apart


@pytest.mark.parametrize(
    "intake", [None, "redis://127.0.0.1:6379/0", "redis://localhost/0", "redis://svc:pw@127.0.0.1:6379"]
)
def test_production_refuses_to_take_submissions_on_the_services_own_redis(intake):
    """An upstream's broker URL must never be the one that holds the broker, pacing and pauses."""
    from cryptography.fernet import Fernet

    with pytest.raises(ValidationError, match="WADISPATCH_INTAKE_BROKER_URL"):
        Settings(
            env="production",
            token_encryption_key=Fernet.generate_key().decode(),
            secret_key="s" * 40,
            meta_base_url="https://graph.facebook.com",
            meta_app_secret="a" * 32,
            meta_verify_token="v" * 24,
            redis_url="redis://127.0.0.1:6379/0",
            intake_broker_url=intake,
        )


def _production(**values: object) -> Settings:
    from cryptography.fernet import Fernet

    return Settings(
        env="production",
        token_encryption_key=Fernet.generate_key().decode(),
        secret_key="s" * 40,
        meta_base_url="https://graph.facebook.com",
        meta_app_secret="a" * 32,
        meta_verify_token="v" * 24,
        metrics_token="m" * 32,
        redis_url="redis://127.0.0.1:6379/0",
        **values,
    )


def test_the_broker_is_the_services_redis_unless_a_broker_url_is_set():
    default = Settings(redis_url="redis://127.0.0.1:6379/3", broker_url=" ")
    assert default.broker_url is None and default.broker == "redis://127.0.0.1:6379/3"
    assert not default.broker_is_amqp and default.intake_broker == default.broker
    rabbit = Settings(broker_url="amqp://svc:pw@rabbit:5672/wadispatch")
    assert rabbit.broker_is_amqp and rabbit.intake_broker == rabbit.broker and not rabbit.intake_apart


@pytest.mark.parametrize(
    "intake",
    [None, "amqp://svc:pw@rabbit:5672/wadispatch", "pyamqp://other@rabbit/wadispatch", "redis://localhost:6379/0"],
)
def test_production_keeps_submissions_off_the_services_broker_and_its_redis(intake):
    """With RabbitMQ as the broker, the intake broker must be neither the broker (the same vhost,
    however spelled) nor the Redis that holds pacing and pauses."""
    with pytest.raises(ValidationError, match="WADISPATCH_INTAKE_BROKER_URL"):
        _production(broker_url="amqp://svc:pw@rabbit:5672/wadispatch", intake_broker_url=intake)


def test_production_takes_submissions_on_a_vhost_of_their_own():
    settings = _production(
        broker_url="amqp://svc:pw@rabbit:5672/wadispatch", intake_broker_url="amqp://svc:pw@rabbit:5672/intake"
    )
    assert settings.intake_apart and not settings.intake_shares_state


def test_a_countdown_past_the_visibility_timeout_is_refused_only_on_redis():
    # On RabbitMQ a countdown waits in the broker's delay queues: no visibility timeout to stay under.
    Settings(broker_url="amqp://rabbit//", retry_cap_s=4000, broker_visibility_timeout_s=3600)
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        Settings(broker_url="redis://other:6379/0", retry_cap_s=4000, broker_visibility_timeout_s=3600)


def test_retry_cap_must_stay_below_the_visibility_timeout():
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        Settings(retry_cap_s=4000, broker_visibility_timeout_s=3600)


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("WADISPATCH_META_API_VERSION", "v99.0")
    assert Settings().meta_api_version == "v99.0"


@pytest.mark.parametrize(("raw", "e164"), [("+18095551234", "+18095551234"), ("18095551234", "+18095551234")])
def test_phone_normalisation(raw, e164):
    assert normalize_e164(raw) == e164 and wa_id_of(e164) == "18095551234"


@pytest.mark.parametrize("raw", ["", "12", "+1 555", "hello", "+999123456789"])
def test_invalid_phones(raw):
    with pytest.raises(InvalidPhone):
        normalize_e164(raw)
    assert not is_valid_e164(raw)


def test_tokens_are_encrypted_not_encoded():
    encrypted = encrypt_token("EAAG-secret-token")
    assert "EAAG-secret-token" not in encrypted
    assert decrypt_token(encrypted) == "EAAG-secret-token"
    assert encrypt_token("EAAG-secret-token") != encrypted  # random IV each time


def test_keys_are_long_random_and_prefixed():
    fe, fiq = generate_key(KeyKind.FLOWESTATE), generate_key(KeyKind.FLOWIQ)
    assert fe.startswith("fe_k_") and fiq.startswith("fiq_")
    assert len(fe) - len("fe_k_") >= 43  # 32 random bytes, base64url
    assert generate_key(KeyKind.FLOWESTATE) != fe
    assert len(hash_key(fe)) == 64 and hash_key(fe) != hash_key(fiq)
