"""GET /media/{key}: whatever the signing values or the key look like, a refusal is a 403 (or 404
for a route that cannot match), never a 5xx."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from models.media_signing import sign_url, signature_is_valid
from models.media_store import is_valid_key
from models.settings import get_settings

KEY = "ab" * 32 + ".pdf"
NOW = 1_000_000


def signed(key: str, ttl_s: int = 3600) -> tuple[str, str]:
    url = sign_url("http://x", get_settings().secret_key, key, ttl_s=ttl_s)
    query = dict(part.split("=") for part in url.split("?", 1)[1].split("&"))
    return query["expires"], query["signature"]


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        ("1003600", "é" * 64),  # compare_digest raised TypeError on non-ASCII str
        ("1003600", "\x00" * 64),
        ("1003600", ""),
        ("abc", "0" * 64),
        ("-5", "0" * 64),
        ("9" * 5000, "0" * 64),  # past Python's integer conversion limit
        ("１００３６００", "0" * 64),  # fullwidth digits: str.isdigit() says yes, int() takes them
        ("1003600 ", "0" * 64),
        ("", "0" * 64),
    ],
)
def test_malformed_signing_values_are_just_invalid(expires, signature):
    assert signature_is_valid("secret", KEY, expires, signature, now=NOW) is False


def test_the_signature_covers_expires_exactly_as_signed():
    url = sign_url("http://x", "secret", KEY, ttl_s=3600, now=NOW)
    query = dict(part.split("=") for part in url.split("?", 1)[1].split("&"))
    assert signature_is_valid("secret", KEY, query["expires"], query["signature"], now=NOW)
    assert not signature_is_valid("secret", KEY, "0" + query["expires"], query["signature"], now=NOW)


def test_a_key_with_a_trailing_newline_is_not_a_key():
    assert is_valid_key(KEY) and not is_valid_key(KEY + "\n")


def get(api, key_path: str, expires: str | None, signature: str | None):
    params = {k: v for k, v in (("expires", expires), ("signature", signature)) if v is not None}
    return api.http.get(f"/media/{key_path}", params=params)


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        ("valid", "é" * 64),
        ("valid", "\x00"),
        ("valid", "😀"),
        ("abc", "valid"),
        ("-1", "valid"),
        ("9" * 5000, "valid"),
        ("99999999999999999999", "valid"),
        ("１" * 10, "valid"),
        ("valid", None),
        (None, "valid"),
    ],
)
def test_bad_signing_values_are_403(stack, api, expires, signature):
    good_expires, good_signature = signed(KEY)
    response = get(
        api,
        KEY,
        good_expires if expires == "valid" else expires,
        good_signature if signature == "valid" else signature,
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "Forbidden"


@pytest.mark.parametrize(
    "key",
    [KEY + "\x00", "\x00", "..", "..%2F..%2Fetc%2Fpasswd", KEY + "\n", KEY.upper(), "a" * 5000, "😀.pdf", "%ff"],
)
def test_odd_keys_are_refused_even_with_their_own_signature(stack, api, key):
    expires, signature = signed(key)
    response = api.http.get(f"/media/{quote(key, safe='%')}", params={"expires": expires, "signature": signature})
    assert response.status_code in (403, 404), response.text
    if response.status_code == 403:
        assert response.json() == {"error": "Forbidden", "message": "a signed URL is required"}


def test_path_traversal_never_reaches_the_store(stack, api):
    for target in ("/media/../etc/passwd", "/media/%2e%2e/%2e%2e/etc/passwd", "/media/..%2f..%2fetc%2fpasswd"):
        response = api.http.get(target, params={"expires": "9999999999", "signature": "0" * 64})
        assert response.status_code in (403, 404), (target, response.text)


def test_a_valid_signature_for_an_absent_file_is_404(stack, api):
    expires, signature = signed(KEY)
    response = get(api, KEY, expires, signature)
    assert response.status_code == 404 and response.json()["error"] == "Not found"
