"""The safe fetcher's bounds over real HTTP on loopback: one deadline for the whole download,
however a server paces its bytes, and a size cap that holds on the decoded bytes."""

from __future__ import annotations

import gzip
import time
import tracemalloc

import pytest

from meta_sandbox.sample_media import SAMPLES
from models.settings import Settings
from tests.support.media_server import MediaServer, zeros_gzipped
from worker.media.bounded_body import BodyTooLarge, BoundedBody
from worker.media.fetch import SafeFetcher
from worker.meta_errors import DeliveryError, Permanent, Transient

CAP = 5 * 1024 * 1024
DEADLINE_S = 1.0
# What "abandoned at the deadline" allows for: scheduling on a loaded machine, not a slow read.
MARGIN_S = 0.75


@pytest.fixture(scope="module")
def media() -> MediaServer:
    server = MediaServer().start()
    yield server
    server.stop()


def fetcher_for(media: MediaServer, resolver=None) -> SafeFetcher:
    settings = Settings(
        media_allow_http=True,
        media_test_allowed=[f"127.0.0.1:{media.port}", f"slow.test:{media.port}"],
        media_egress_loopback_only=True,
        media_download_timeout_s=DEADLINE_S,
    )
    return SafeFetcher(settings, resolver=resolver)


def timed_failure(fetcher: SafeFetcher, url: str) -> tuple[DeliveryError, float]:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        fetcher.fetch(url, max_bytes=CAP, kind="image")
    return caught.value, time.monotonic() - started


def wait_for(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_body_dripping_one_byte_at_a_time_is_abandoned_at_the_deadline(media):
    # 40 bytes, one every 0.3 s: each read gets data long before any read timeout.
    error, took = timed_failure(fetcher_for(media), f"{media.origin}/drip/40?every=0.3")
    assert isinstance(error, Transient) and error.error_code == "MEDIA_FETCH_FAILED", error.title
    assert took < DEADLINE_S + MARGIN_S, took
    # The connection is closed, not left to the server to finish.
    assert wait_for(lambda: media.hits["/drip:aborted"] >= 1)


def test_headers_dripping_one_byte_at_a_time_are_abandoned_at_the_deadline(media):
    error, took = timed_failure(fetcher_for(media), f"{media.origin}/drip-headers/40?every=0.3")
    assert isinstance(error, Transient) and error.error_code == "MEDIA_FETCH_FAILED", error.title
    assert took < DEADLINE_S + MARGIN_S, took


def test_headers_held_back_past_the_deadline(media):
    error, took = timed_failure(fetcher_for(media), f"{media.origin}/slow-headers/5/photo.png")
    assert isinstance(error, Transient) and "timed out" in error.title
    assert took < DEADLINE_S + MARGIN_S, took


def test_the_deadline_spans_every_redirect_hop(media):
    # Four hops, each answering within a read timeout but together well past the deadline.
    url = media.origin + "/slow-headers/0.45" * 4 + "/photo.png"
    error, took = timed_failure(fetcher_for(media), url)
    assert isinstance(error, Transient) and error.error_code == "MEDIA_FETCH_FAILED", error.title
    assert took < DEADLINE_S + MARGIN_S, took


def test_a_name_lookup_that_hangs_is_abandoned_at_the_deadline(media):
    def hanging_resolver(host: str, port: int) -> list[str]:
        time.sleep(5)
        return ["127.0.0.1"]

    error, took = timed_failure(fetcher_for(media, hanging_resolver), f"http://slow.test:{media.port}/photo.png")
    assert isinstance(error, Transient) and error.error_code == "MEDIA_FETCH_FAILED", error.title
    assert took < DEADLINE_S + MARGIN_S, took


def test_a_fast_download_is_unaffected(media):
    fetched = fetcher_for(media).fetch(f"{media.origin}/redirect/3/a.png", max_bytes=CAP, kind="image")
    assert fetched.data == SAMPLES["png"][0]


def test_a_gzip_encoded_file_is_decoded(media):
    fetched = fetcher_for(media).fetch(f"{media.origin}/gzip/photo.jpg", max_bytes=CAP, kind="image")
    assert fetched.data == SAMPLES["jpg"][0]


def test_a_gzip_bomb_is_refused_without_inflating_it(media):
    # 200 MB of zeros in about 200 KB of gzip; inflating one 64 KB network read whole would
    # already take about 64 MB.
    size = 200 * 1024 * 1024
    zeros_gzipped(size)  # made before the fetch's deadline starts
    url = f"{media.origin}/gzip-bomb/{size}"
    fetcher = fetcher_for(media)
    fetcher.fetch(f"{media.origin}/photo.png", max_bytes=CAP, kind="image")  # warm up outside the measure
    tracemalloc.start()
    try:
        with pytest.raises(Permanent) as caught:
            fetcher.fetch(url, max_bytes=CAP, kind="image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.error_code == "MEDIA_TOO_LARGE"
    assert peak < 2 * CAP, f"{peak} bytes allocated at the peak"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip"])
def test_encodings_it_does_not_decode_are_refused(media, encoding):
    error, _ = timed_failure(fetcher_for(media), f"{media.origin}/encoded/{encoding}/photo.png")
    assert isinstance(error, Permanent) and error.error_code == "MEDIA_FETCH_FAILED", error.title


def test_a_body_labelled_gzip_that_is_not_is_refused(media):
    error, _ = timed_failure(fetcher_for(media), f"{media.origin}/encoded/gzip/photo.png")
    assert isinstance(error, Permanent) and error.error_code == "MEDIA_FETCH_FAILED", error.title


# -- the bounded body on its own --------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "identity", "gzip", "x-gzip", "deflate"])
def test_bounded_body_at_the_cap_and_one_past(encoding):
    def encode(data: bytes) -> bytes:
        if encoding in ("gzip", "x-gzip"):
            return gzip.compress(data)
        if encoding == "deflate":
            import zlib

            return zlib.compress(data)
        return data

    at_cap = BoundedBody(encoding, 1000)
    raw = encode(b"x" * 1000)
    for start in range(0, len(raw), 7):  # in small network reads
        at_cap.feed(raw[start : start + 7])
    assert at_cap.finish() == b"x" * 1000

    past = BoundedBody(encoding, 1000)
    with pytest.raises(BodyTooLarge):
        past.feed(encode(b"x" * 1001))
        past.finish()
