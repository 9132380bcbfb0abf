"""The pure signature check: which secret, if any, signed a body (no parsing, no lookups)."""

from __future__ import annotations

import hashlib
import hmac

from api_shim.meta_signature import claimed_digest, matching_secret, signed_with

BODY = b'{"object": "whatsapp_business_account", "entry": []}'


def _sign(body: bytes, secret: str) -> str:
    # From Meta's description, not from the module under test.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_the_claimed_digest_is_64_hex_digits_after_sha256():
    good = _sign(BODY, "s")
    assert claimed_digest(good) == good.removeprefix("sha256=").encode()
    assert claimed_digest("  " + good.upper().replace("SHA256=", "sha256=") + " ") == claimed_digest(good)
    for bad in (None, "", "sha256=", "sha1=" + "a" * 40, "sha256=" + "a" * 63, "sha256=" + "a" * 65,
                "sha256=" + "g" * 64, "sha256=" + "ü" * 64, good.removeprefix("sha256=")):  # fmt: skip
        assert claimed_digest(bad) is None, bad


def test_the_matching_secret_is_the_one_that_signed_the_body():
    secrets = ["service-secret", "tenant-a-secret", "tenant-b-secret"]
    for secret in secrets:
        assert matching_secret(BODY, _sign(BODY, secret), secrets) == secret
    assert matching_secret(BODY, _sign(BODY, "someone-else"), secrets) is None
    assert matching_secret(BODY + b" ", _sign(BODY, "tenant-a-secret"), secrets) is None  # one byte changed
    assert matching_secret(BODY, _sign(BODY, "tenant-a-secret"), []) is None


def test_no_secret_matches_a_missing_or_malformed_header_or_an_empty_secret():
    assert matching_secret(BODY, None, ["s"]) is None
    assert matching_secret(BODY, "sha256=" + "0" * 64, ["s"]) is None
    assert matching_secret(BODY, _sign(BODY, ""), ["", "s"]) is None  # an unset secret signs nothing
    assert not signed_with(BODY, _sign(BODY, ""), "")
    assert signed_with(BODY, _sign(BODY, "s"), "s") and not signed_with(BODY, _sign(BODY, "s"), "t")


def test_any_bytes_are_checked_without_being_read():
    # Not JSON, nested past any parser's limit, NULs: only hashed.
    for body in (b"[" * 300_000, b"\xff\xfe\x00 not json", b""):
        assert matching_secret(body, _sign(body, "k"), ["x", "k"]) == "k"
        assert matching_secret(body, _sign(body, "y"), ["x", "k"]) is None
