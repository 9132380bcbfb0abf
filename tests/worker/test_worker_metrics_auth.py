"""A worker's /metrics takes WADISPATCH_METRICS_TOKEN as the API's does (bearer only), and listens
on loopback unless told otherwise. The worker's own server on a real port, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import httpx
import pytest

from models.settings import Settings
from tests.support.processes import free_port
from worker.metrics_server import serve_worker_metrics

TOKEN = "worker-metrics-token-for-tests"


@pytest.fixture
def serving() -> Iterator[list[WSGIServer]]:
    servers: list[WSGIServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def _serve(servers: list[WSGIServer], **settings: object) -> tuple[WSGIServer, str]:
    port = free_port()
    server = serve_worker_metrics(Settings(worker_metrics_port=port, **settings))  # type: ignore[arg-type]
    assert server is not None
    servers.append(server)
    return server, f"http://127.0.0.1:{port}/metrics"


def test_with_a_token_only_its_bearer_may_scrape(serving):
    _, url = _serve(serving, metrics_token=TOKEN)

    refused = httpx.get(url, timeout=5)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "wadispatch_" not in refused.text and "WADISPATCH_METRICS_TOKEN" in refused.text
    for wrong in ("Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"):
        assert httpx.get(url, headers={"Authorization": wrong}, timeout=5).status_code == 401, wrong

    answer = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain") and "wadispatch_" in answer.text


def test_it_listens_on_loopback_unless_told_otherwise(serving):
    assert Settings().worker_metrics_host == "127.0.0.1"
    server, _ = _serve(serving, metrics_token=TOKEN)
    assert server.server_address[0] == "127.0.0.1"
    other, _ = _serve(serving, metrics_token=TOKEN, worker_metrics_host="0.0.0.0")
    assert other.server_address[0] == "0.0.0.0"


def test_without_a_token_development_scrapes_freely(serving):
    _, url = _serve(serving)
    assert httpx.get(url, timeout=5).status_code == 200


def test_off_when_no_port_is_set():
    assert serve_worker_metrics(Settings(worker_metrics_port=0)) is None
