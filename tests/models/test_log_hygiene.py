"""The log filters on their own: uvicorn access lines lose their query strings, httpx stays quiet."""

from __future__ import annotations

import logging

from models import log_hygiene


def access_record(path: str) -> logging.LogRecord:
    # The shape uvicorn logs: '%s - "%s %s HTTP/%s" %d'.
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200), None,
    )  # fmt: skip


def test_the_query_string_is_cut_from_an_access_line():
    record = access_record("/media/ab.png?expires=1&signature=deadbeef")
    assert log_hygiene.StripQueryString().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /media/ab.png HTTP/1.1" 200'


def test_a_path_without_query_is_left_alone():
    record = access_record("/healthz")
    assert log_hygiene.StripQueryString().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 200'


def test_install_quiets_httpx_and_filters_the_access_log_once():
    log_hygiene.install()
    log_hygiene.install()
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    filters = [f for f in logging.getLogger("uvicorn.access").filters if isinstance(f, log_hygiene.StripQueryString)]
    assert len(filters) == 1
