"""Media storage backends and signed URLs. S3 runs against a real S3-compatible server (moto in
server mode) on loopback."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import httpx
import pytest

from models.media_signing import sign_url, signature_is_valid
from models.media_store import LocalMediaStore, S3MediaStore, key_for
from models.settings import Settings
from tests.support.processes import free_port

DATA = b"%PDF-1.4 brochure bytes"
KEY = key_for(hashlib.sha256(DATA).hexdigest(), "pdf")


def test_local_store_round_trip_and_idempotent_put(tmp_path):
    store = LocalMediaStore(tmp_path)
    assert store.get(KEY) is None
    store.put(KEY, DATA, "application/pdf")
    store.put(KEY, DATA, "application/pdf")
    assert store.get(KEY) == (DATA, "application/pdf")
    assert len(list(tmp_path.rglob("*.pdf"))) == 1


@pytest.mark.parametrize("key", ["../etc/passwd", "abc.pdf", KEY.upper(), KEY + "/x", "a" * 64 + ".toolongext"])
def test_keys_that_are_not_content_hashes_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        LocalMediaStore(tmp_path).get(key)


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def test_s3_store_round_trip(s3_endpoint):
    from models.media_store import s3_client

    settings = Settings(
        media_backend="s3",
        s3_bucket="wadispatch-media",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    client = s3_client(settings)
    client.create_bucket(Bucket="wadispatch-media")
    store = S3MediaStore(client, "wadispatch-media")
    assert store.get(KEY) is None
    store.put(KEY, DATA, "application/pdf")
    assert store.get(KEY) == (DATA, "application/pdf")
    listed = client.list_objects_v2(Bucket="wadispatch-media")["Contents"]
    assert [o["Key"] for o in listed] == [KEY]


def test_signed_urls():
    url = sign_url("https://api.example", "secret", KEY, ttl_s=3600, now=1_000_000)
    query = dict(part.split("=") for part in url.split("?", 1)[1].split("&"))
    expires, signature = query["expires"], query["signature"]
    assert url.startswith(f"https://api.example/media/{KEY}?") and expires == "1003600"
    assert signature_is_valid("secret", KEY, expires, signature, now=1_000_000)
    assert not signature_is_valid("secret", KEY, expires, signature, now=1_003_601)  # expired
    assert not signature_is_valid("other", KEY, expires, signature, now=1_000_000)  # wrong secret
    assert not signature_is_valid("secret", KEY, "1003601", signature, now=1_000_000)  # expiry changed
    other_key = key_for("0" * 64, "pdf")
    assert not signature_is_valid("secret", other_key, expires, signature, now=1_000_000)  # another file
