"""The safe fetcher over real HTTP on loopback. Hostnames come from a resolver stub; the egress
guard stays on, so even a broken address check could not send anything off this machine."""

from __future__ import annotations

import pytest

from meta_sandbox.sample_media import SAMPLES
from models.settings import Settings
from tests.support.media_server import Canary, MediaServer
from worker.media.fetch import SafeFetcher
from worker.meta_errors import DeliveryError, Permanent, Transient

CAP = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def media() -> MediaServer:
    server = MediaServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trap() -> Canary:
    canary = Canary()
    yield canary
    canary.close()


def make_fetcher(media: MediaServer, resolved: dict[str, list[str]] | None = None, **overrides) -> SafeFetcher:
    options = {
        "media_allow_http": True,
        "media_test_allowed": [f"127.0.0.1:{media.port}"],
        "media_egress_loopback_only": True,
        **overrides,
    }
    settings = Settings(**options)
    lookups: dict[str, list[str]] = resolved or {}

    def resolver(host: str, port: int) -> list[str]:
        resolver.calls += 1  # type: ignore[attr-defined]
        if host not in lookups:
            raise OSError(f"no stub for {host}")
        return lookups[host]

    resolver.calls = 0  # type: ignore[attr-defined]
    fetcher = SafeFetcher(settings, resolver=resolver)
    fetcher.resolver_calls = resolver  # type: ignore[attr-defined]
    return fetcher


def refused(fetcher: SafeFetcher, url: str) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        fetcher.fetch(url, max_bytes=CAP, kind="image")
    return caught.value


def test_fetches_an_allowed_file(media):
    fetched = make_fetcher(media).fetch(f"{media.origin}/photo.png", max_bytes=CAP, kind="image")
    assert fetched.data == SAMPLES["png"][0]


def test_hostname_is_resolved_once_and_the_checked_address_is_used(media):
    fetcher = make_fetcher(media, {"photos.test": ["127.0.0.1"]}, media_test_allowed=[f"photos.test:{media.port}"])
    fetched = fetcher.fetch(f"http://photos.test:{media.port}/a.jpg", max_bytes=CAP, kind="image")
    assert fetched.data == SAMPLES["jpg"][0]
    assert fetcher.resolver_calls.calls == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("meta.test", "169.254.169.254"), ("ten.test", "10.0.0.7"), ("s172.test", "172.20.1.1"),
        ("s192.test", "192.168.10.10"), ("cgnat.test", "100.100.0.1"), ("ula.test", "fd00::5"),
        ("ll.test", "fe80::1"), ("mcast.test", "239.1.1.1"), ("zero.test", "0.0.0.0"), ("v6zero.test", "::"),
        ("mapped.test", "::ffff:10.0.0.1"), ("mapped-meta.test", "::ffff:169.254.169.254"), ("lo.test", "127.0.0.1"),
        ("lo6.test", "::1"), ("reserved.test", "240.0.0.9"),
    ],
)  # fmt: skip
def test_hostnames_resolving_into_refused_ranges(media, trap, host, address):
    error = refused(make_fetcher(media, {host: [address]}), f"https://{host}/x.png")
    assert error.error_code == "MEDIA_FETCH_REFUSED", error.title
    assert trap.connections == 0


def test_one_bad_address_among_good_ones_refuses_the_host(media):
    # A rebinding-style answer: a public address and a private one for the same name.
    error = refused(make_fetcher(media, {"mixed.test": ["93.184.216.34", "10.0.0.1"]}), "https://mixed.test/x.png")
    assert error.error_code == "MEDIA_FETCH_REFUSED"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{canary}/x.png", "http://localhost:{canary}/x.png", "http://[::1]:{canary}/x.png",
        "http://2130706433:{canary}/x.png", "http://0x7f000001:{canary}/x.png", "http://127.1:{canary}/x.png",
        "http://0x7f.1:{canary}/x.png", "http://017700000001:{canary}/x.png", "http://[::ffff:127.0.0.1]:{canary}/x.png",
        "http://0.0.0.0:{canary}/x.png", "http://127.0.0.1.:{canary}/x.png", "http://LOCALHOST:{canary}/x.png",
        "ftp://127.0.0.1:{canary}/x.png", "file:///etc/passwd", "gopher://127.0.0.1:{canary}/",
        "data:image/png;base64,AA",
        "http://user:pw@127.0.0.1:{canary}/x.png", "//127.0.0.1:{canary}/x.png", "not a url",
    ],
)  # fmt: skip
def test_loopback_in_every_spelling_and_other_schemes_never_reach_the_canary(media, trap, url):
    error = refused(make_fetcher(media, {"localhost": ["127.0.0.1", "::1"]}), url.format(canary=trap.port))
    assert error.error_code == "MEDIA_FETCH_REFUSED", error.title
    assert trap.connections == 0


def test_https_only_unless_http_is_allowed(media):
    fetcher = make_fetcher(media, {"pub.test": ["93.184.216.34"]}, media_allow_http=False)
    assert "scheme" in refused(fetcher, "http://pub.test/x.png").title


def test_only_default_ports(media):
    error = refused(make_fetcher(media, {"pub.test": ["93.184.216.34"]}), "https://pub.test:8443/x.png")
    assert error.error_code == "MEDIA_FETCH_REFUSED" and "port 8443" in error.title


def test_up_to_three_redirects_are_followed(media):
    fetched = make_fetcher(media).fetch(f"{media.origin}/redirect/3/a.png", max_bytes=CAP, kind="image")
    assert fetched.data == SAMPLES["png"][0]


def test_a_fourth_redirect_is_refused(media):
    error = refused(make_fetcher(media), f"{media.origin}/redirect/4/a.png")
    assert error.error_code == "MEDIA_FETCH_REFUSED" and "redirects" in error.title


@pytest.mark.parametrize(
    "target", ["http://127.0.0.1:{canary}/x.png", "http://[::1]:{canary}/x.png", "http://meta.test/latest/meta-data"]
)
def test_redirects_into_refused_addresses(media, trap, target):
    fetcher = make_fetcher(media, {"meta.test": ["169.254.169.254"]})
    error = refused(fetcher, f"{media.origin}/redirect-to?url={target.format(canary=trap.port)}")
    assert error.error_code == "MEDIA_FETCH_REFUSED"
    assert trap.connections == 0


def test_body_without_length_is_cut_at_the_cap(media):
    with pytest.raises(Permanent) as caught:
        make_fetcher(media).fetch(f"{media.origin}/big/{CAP + 4 * 65536}", max_bytes=CAP, kind="image")
    assert caught.value.error_code == "MEDIA_TOO_LARGE"


def test_a_short_content_length_never_yields_more_than_it_claims(media):
    fetched = make_fetcher(media).fetch(f"{media.origin}/big/{CAP * 2}?length=1000", max_bytes=CAP, kind="image")
    assert len(fetched.data) == 1000


def test_declared_length_over_the_cap_is_refused_before_reading(media):
    with pytest.raises(Permanent) as caught:
        make_fetcher(media).fetch(f"{media.origin}/big/100?length={CAP + 1}", max_bytes=CAP, kind="image")
    assert caught.value.error_code == "MEDIA_TOO_LARGE"


def test_client_errors_are_permanent_and_server_errors_retry(media):
    with pytest.raises(Permanent) as gone:
        make_fetcher(media).fetch(f"{media.origin}/status/404", max_bytes=CAP, kind="image")
    assert gone.value.error_code == "MEDIA_FETCH_FAILED" and gone.value.http_status == 404
    with pytest.raises(Transient) as busy:
        make_fetcher(media).fetch(f"{media.origin}/status/503", max_bytes=CAP, kind="image")
    assert busy.value.error_code == "MEDIA_FETCH_FAILED"


def test_unresolvable_host_is_retryable(media):
    with pytest.raises(Transient) as caught:
        make_fetcher(media).fetch("https://nowhere.test/x.png", max_bytes=CAP, kind="image")
    assert caught.value.error_code == "MEDIA_FETCH_FAILED"


def test_the_egress_guard_stops_what_a_broken_check_would_let_through(media, monkeypatch, trap):
    import worker.media.fetch as fetch_module

    monkeypatch.setattr(fetch_module, "refusal_reason", lambda address: None)  # break the check on purpose
    error = refused(make_fetcher(media, {"meta.test": ["169.254.169.254"]}), "https://meta.test/x.png")
    assert error.error_code == "MEDIA_EGRESS_BLOCKED"
