"""Keep URLs' query strings out of every process's log.

Two libraries log full URLs at INFO: httpx and httpcore ("HTTP Request: GET https://…?…"), which
would write media URLs' query strings (presigned credentials) and our calls to Meta; and
uvicorn's access log, which writes the request path with its query string (a signed media URL's
signature, `GET /media/{key}?expires=…&signature=…`). Each process calls ``install()`` once its
logging is set up (calling it again is harmless). With ``WADISPATCH_LOG_FORMAT=json`` the API's
uvicorn ``log_config`` carries the same filter and levels, and models/log_format.py's ``redact``
masks whatever still gets through.
"""

from __future__ import annotations

import logging

QUIET_LOGGERS = ("httpx", "httpcore")
ACCESS_LOGGER = "uvicorn.access"


class StripQueryString(logging.Filter):
    """uvicorn's access record has args (client, method, path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def install() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(existing, StripQueryString) for existing in access.filters):
        access.addFilter(StripQueryString())
