"""GET /media/{key}: whatever the signing values or the key look like, a refusal is a 403 (or 404
for a route that cannot match), never a 5xx; a path that climbs out of the media folder is refused
even with a valid signature; and the signature is docs/media.md's HMAC, checked without our signing code."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import secrets
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from models.media_signing import sign_url, signature_is_valid
from models.media_store import LocalMediaStore, is_valid_key
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


def hmac_signature(secret: str, key: str, expires: str) -> str:
    """docs/media.md: HMAC-SHA256 with WADISPATCH_SECRET_KEY over the key and `expires` as written
    (one line each), hex; computed here without models.media_signing."""
    return hmac.new(secret.encode(), f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def raw_get(stack, raw_target: str) -> tuple[int, bytes]:
    """GET exactly this request target: httpx would resolve `..` itself before sending it."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", raw_target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def planted(stack) -> Iterator[tuple[str, bytes]]:
    """A file beside the media folder, where a key starting with ".." would lead a naive
    ``<root>/<key[:2]>/<key>`` store: the key names it, and its bytes must never come back."""
    name, secret = f"..planted-{secrets.token_hex(4)}.pdf", b"%PDF-1.4 not yours " + secrets.token_bytes(16)
    path = stack.media_dir.parent / name
    path.write_bytes(secret)
    assert (stack.media_dir / name[:2] / name).resolve() == path.resolve()
    yield name, secret
    path.unlink()


NOT_A_ROUTE = (404, {"error": "Not Found", "message": "Not Found"})
NOT_A_KEY = (403, {"error": "Forbidden", "message": "a signed URL is required"})


TRAVERSALS = [
    # (on the wire after /media/, the path as the server decodes it after /media/, the answer)
    ("../etc/passwd", "../etc/passwd", NOT_A_ROUTE),
    ("%2e%2e/%2e%2e/etc/passwd", "../../etc/passwd", NOT_A_ROUTE),
    ("..%2f..%2fetc%2fpasswd", "../../etc/passwd", NOT_A_ROUTE),
    ("%2fetc%2fpasswd", "/etc/passwd", NOT_A_ROUTE),
    ("..", "..", NOT_A_KEY),
    ("%2e%2e", "..", NOT_A_KEY),
    ("{planted}", "{planted}", NOT_A_KEY),
    ("{planted_encoded}", "{planted}", NOT_A_KEY),
    ("..%5c..%5c{planted}", "..\\..\\{planted}", NOT_A_KEY),
]


@pytest.mark.parametrize(("target", "decoded", "answer"), [pytest.param(*t, id=t[0]) for t in TRAVERSALS])
def test_path_traversal_is_refused_even_when_correctly_signed(stack, planted, target, decoded, answer):
    """Signed with the real key for the very path the server sees, so only the key check stands
    between the request and the store; the old bogus-signature form is refused all the same."""
    name, secret = planted
    target = target.format(planted=name, planted_encoded=name.replace(".", "%2e", 2))
    decoded = decoded.format(planted=name)
    expires = str(int(time.time()) + 3600)
    signature = hmac_signature(get_settings().secret_key, decoded, expires)
    assert signature == signed_at(decoded, int(expires))
    for query in (f"expires={expires}&signature={signature}", f"expires=9999999999&signature={'0' * 64}"):
        status, body = raw_get(stack, f"/media/{target}?{query}")
        assert secret not in body, f"{target} served the file outside the media folder ({status})"
        assert (status, json.loads(body)) == answer, (target, query, body)


def test_the_store_refuses_a_key_outside_its_folder(tmp_path):
    """The store's own guard, behind the route's: the ".." shard would be the folder's parent."""
    root = tmp_path / "media"
    (tmp_path / "..x.pdf").write_bytes(b"outside")
    with pytest.raises(ValueError, match="invalid media key"):
        LocalMediaStore(root).get("..x.pdf")
    with pytest.raises(ValueError, match="invalid media key"):
        LocalMediaStore(root).put("../" + KEY, b"x", "application/pdf")


def signed_at(key: str, expires: int) -> str:
    url = sign_url("http://x", get_settings().secret_key, key, ttl_s=0, now=expires)
    return url.split("signature=", 1)[1]


def test_a_correctly_signed_url_serves_the_stored_file(stack, api):
    """The signature the API accepts is exactly docs/media.md's HMAC (so a change to the scheme fails
    here), the file comes back as stored, and one wrong bit or another secret is a 403."""
    data = b"%PDF-1.4\n" + secrets.token_bytes(64)
    key = f"{hashlib.sha256(data).hexdigest()}.pdf"
    LocalMediaStore(stack.media_dir).put(key, data, "application/pdf")
    expires = str(int(time.time()) + 600)
    signature = hmac_signature(get_settings().secret_key, key, expires)
    assert signature == signed_at(key, int(expires)), "sign_url no longer signs as docs/media.md says"

    served = get(api, key, expires, signature)
    assert served.status_code == 200, served.text
    assert served.content == data and served.headers["content-type"] == "application/pdf"

    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    for wrong in (flipped, hmac_signature("not-" + get_settings().secret_key, key, expires)):
        refused = get(api, key, expires, wrong)
        assert (refused.status_code, refused.json()) == (
            403,
            {"error": "Forbidden", "message": "invalid or expired signature"},
        )


def test_a_valid_signature_for_an_absent_file_is_404(stack, api):
    expires, signature = signed(KEY)
    response = get(api, KEY, expires, signature)
    assert response.status_code == 404 and response.json()["error"] == "Not found"
