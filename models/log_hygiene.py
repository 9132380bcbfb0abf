"""Keep URLs' query strings, Postgres's quoted values and raw Idempotency-Keys out of every
process's log.

Two libraries log full URLs at INFO: httpx and httpcore ("HTTP Request: GET https://…?…"), which
would write media URLs' query strings (presigned credentials) and our calls to Meta; and
uvicorn's access log, which writes the request path with its query string (a signed media URL's
signature, `GET /media/{key}?expires=…&signature=…`). Each process calls ``install()`` once its
logging is set up (calling it again is harmless). With ``WADISPATCH_LOG_FORMAT=json`` the API's
uvicorn ``log_config`` carries the same filter and levels, and models/log_format.py's ``redact``
masks whatever still gets through.
"""

from __future__ import annotations

import hashlib
import logging
import re
import traceback
from typing import Any

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
    _drop_database_details_from_every_record()


# Postgres's DETAIL line quotes the row's values: `Key (phone_e164)=(+1555…) already exists.`,
# `Failing row contains (…, message text, …)`. An error's text reaches a log through a traceback
# (log.exception, Celery's "raised unexpected"), a message that formats the error, or the repr of
# one (Celery's), where the line break is the two characters \n. The primary message, the
# constraint's name and the statement (its parameters are hidden: hide_parameters) stay.
# The DETAIL runs to the next part of the error (a HINT, the statement SQLAlchemy adds, its link)
# or the end of the text, not the end of its line: a value may hold line breaks of its own.
_DETAIL = re.compile(
    r"DETAIL:.*?(?=(?:\n|\\n)+(?:HINT:|CONTEXT:|STATEMENT:|\[SQL:|\[parameters:|\(Background on this error|"
    r"During handling|The above exception|Traceback)|\Z)",
    re.DOTALL,
)
DETAIL_DROPPED = "DETAIL: [dropped: Postgres quotes values here]"


def drop_database_details(text: str) -> str:
    """``text`` without the DETAIL of any Postgres error in it, however many lines its values take."""
    return _DETAIL.sub(DETAIL_DROPPED, text) if "DETAIL:" in text else text


def _drop_database_details_from_every_record() -> None:
    """Every record of the process, whichever handler writes it (uvicorn's, Celery's, logging's
    last resort, the JSON formatter), is cleaned when it is made: a record factory sees them all,
    a filter only those of the logger or handler it is attached to."""
    current = logging.getLogRecordFactory()
    if getattr(current, "drops_database_details", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        _clean(record)
        return record

    make_record.drops_database_details = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def _clean(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it itself when the record is written
        message = ""
    if "DETAIL:" in message:
        record.msg, record.args = drop_database_details(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters use exc_text when it is set (the JSON formatter renders exc_info itself and
        # cleans it in models/log_format.py's redact).
        rendered = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if "DETAIL:" in rendered:
            record.exc_text = drop_database_details(rendered)


def key_for_log(key: object) -> str:
    """How a log line names an Idempotency-Key: a short hash and its length, never the key. The key
    is the caller's to choose (any size, any JSON over the broker) and may hold what the log must
    not (a phone number, a name); the hash still lets an operator find a submission's lines, from
    the key the sender has (`printf %s "$KEY" | sha256sum | cut -c1-12`)."""
    if isinstance(key, str):
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_HASH_CHARS]
        return f"key#{digest} ({len(key)} chars)"
    return f"key ({_json_kind(key)}, not a string)"


# 48 bits: enough to tell a day's submissions apart, too short to stand for the key.
KEY_HASH_CHARS = 12


def _json_kind(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__
