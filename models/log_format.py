"""One JSON object per log line (``WADISPATCH_LOG_FORMAT=json``), for every process.

The text format is uvicorn's and Celery's own; nothing here changes it. With json, one formatter,
structlog's ``ProcessorFormatter``, renders every standard-library record — ours, uvicorn's,
Celery's, kombu's — so a log shipper sees the same keys everywhere: ``time`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, then the structured fields below where known, and
``exception`` (the traceback) for a record logged with one. Where it is installed:

- API and sandbox: ``uvicorn_log_config`` is uvicorn's ``log_config`` (so each uvicorn worker
  process applies it too);
- worker and beat: Celery sets its handlers up, then worker/celery_app.py gives them this
  formatter (``render_as_json``);
- lines Celery writes from signal handlers without logging: ``json_line``.

Structured fields come from a record's ``extra`` (only the names in ``FIELDS``: anything else a
library passes there, such as Celery's task arguments, stays out) and from the fields bound to
the running task (``bind_fields``, cleared between tasks).

``redact`` is the last line of defence before a line is written: URL query strings, bearer
tokens, API keys, signatures and phone numbers are masked wherever they appear. The first line
stays models/log_hygiene.py and never logging such values at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from models.log_hygiene import drop_database_details

# The structured fields a line may carry (beyond time, level, logger, message and exception).
FIELDS = (
    "message_id",
    "event_id",
    "org_id",
    "account_id",
    "attempt",
    "outcome",
    "detail",  # with an outcome: Meta's error code, or why a message was not claimed
    "duration_ms",
    "step",  # with a fenced write: which write of the claim holder its fencing token refused
)
# Keys a line starts with, in this order, then FIELDS' (the rest follow as they came).
LEADING_KEYS = ("time", "level", "logger", "message")

REDACTED = "[redacted]"

# Keys whose whole value is secret or personal, whatever it looks like. They apply to structured
# values (a dict bound as a field, structlog's own calls); a standard-library record reaches the
# processors as its formatted message, which the patterns below cover.
SECRET_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "authorization",
        "body",
        "caption",
        "password",
        "phone",
        "phone_number",
        "secret",
        "text",
        "to",
        "token",
        "wa_id",
    }
)

# The longest string a line carries whole; the rest is cut (a request path is the client's to
# choose, and no pattern below may cost more than a bounded pass over it).
MAX_REDACTED_CHARS = 8192

# A password in a URL's userinfo (redis://:secret@host). The scheme is bounded, so a long run of
# scheme-like characters costs one pass, not one per starting point.
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s/:@\"'<>]*):[^\s/@\"'<>]+@")
# What separates the tokens a query string is looked for in.
_TOKEN_EDGES = re.compile(r"([\s\"'<>]+)")
# Credentials in a header value, a key=value pair or a key: value / "key": "value" pair.
_SCHEME_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+")
_KEY_VALUE_SECRETS = re.compile(
    r"(?i)\b(access_token|api_?key|token|signature|sig|secret|password|authorization"
    r"|x-amz-(?:signature|credential|security-token))([\"']?\s*[:=]\s*[\"']?)(?!\[redacted\]|(?:bearer|basic)\s)[^&\s\"',;}]+"
)
# Our API keys and endpoint signing secrets (models/keys.py, models/events.py).
_OUR_SECRETS = re.compile(r"\b(fe_k_|fiq_|whsec_)[A-Za-z0-9_+/=-]{8,}")
# A phone number written the E.164 way, or any number given as a phone-like key's value.
_E164 = re.compile(r"(?<![\w+])\+[1-9]\d{6,14}\b")
_PHONE_KEYS = re.compile(
    r"(?i)\b(wa_id|phone|phone_number|phone_e164|recipient|to|from)([\"']?\s*[:=]\s*[\"']?)\+?\d[\d -]{5,}\d"
)


def redact_text(text: str) -> str:
    """Every pass is linear in the (capped) text, and runs only when its trigger is present."""
    if len(text) > MAX_REDACTED_CHARS:
        text = f"{text[:MAX_REDACTED_CHARS]}…[{len(text) - MAX_REDACTED_CHARS} more characters cut]"
    if "://" in text:
        text = _USERINFO.sub(rf"\1:{REDACTED}@", text)
    if "?" in text:
        text = _mask_queries(text)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _SCHEME_CREDENTIALS.sub(rf"\1 {REDACTED}", text)
    if "=" in text or ":" in text:
        text = _KEY_VALUE_SECRETS.sub(rf"\1\2{REDACTED}", text)
        text = _PHONE_KEYS.sub(rf"\1\2{REDACTED}", text)
    if "fe_k_" in text or "fiq_" in text or "whsec_" in text:
        text = _OUR_SECRETS.sub(rf"\1{REDACTED}", text)
    if "+" in text:
        text = _E164.sub(f"+{REDACTED}", text)
    if "DETAIL:" in text:
        # A traceback rendered here (format_exc_info) has not been through log_hygiene's record
        # factory, which cleans exc_text only: Postgres's DETAIL quotes a row's values.
        text = drop_database_details(text)
    return text


def _mask_queries(text: str) -> str:
    """A query string after a URL or a path (a signed media URL's signature, a presigned URL's
    credentials) is masked; the path stays, so the line still says what was asked for."""
    pieces = _TOKEN_EDGES.split(text)
    for n in range(0, len(pieces), 2):  # the tokens; the separators sit between them
        token = pieces[n]
        mark = token.find("?")
        if mark > 0 and mark + 1 < len(token) and "/" in token[:mark]:
            pieces[n] = f"{token[: mark + 1]}{REDACTED}"
    return "".join(pieces)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if str(k).lower() in SECRET_KEYS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets and personal data in every value of the line."""
    return {key: REDACTED if key.lower() in SECRET_KEYS else _redact_value(value) for key, value in event_dict.items()}


def _leading_keys_first(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ordered = {key: event_dict.pop(key) for key in (*LEADING_KEYS, *FIELDS) if key in event_dict}
    # A field nobody knew (extra={"detail": None}) is left out rather than written as null.
    return {**{key: value for key, value in ordered.items() if value is not None}, **event_dict}


_timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="time")

# Added to each record before rendering: level, logger, the allowed extras, the task's fields, time.
_PRE_CHAIN: tuple[Processor, ...] = (
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.ExtraAdder(allow=FIELDS),
    structlog.contextvars.merge_contextvars,
    _timestamp,
)

# The end of every line: redacted (tracebacks quote URLs too), keys named and ordered, rendered.
_FINISH: tuple[Callable[[WrappedLogger, str, EventDict], EventDict], ...] = (
    redact,
    structlog.processors.EventRenamer("message"),
    _leading_keys_first,
)
_render = structlog.processors.JSONRenderer()

# Rendering a record: the traceback becomes a field first.
_RENDER_CHAIN: tuple[Processor, ...] = (
    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    structlog.processors.format_exc_info,
    *_FINISH,
    _render,
)


def json_formatter() -> logging.Formatter:
    """The formatter of every handler when the format is json (dictConfig names it by path)."""
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=list(_PRE_CHAIN), processors=list(_RENDER_CHAIN))


def configure(log_format: str, level: str) -> None:
    """A process's logging before its server sets its own up: with json, the root logger writes
    JSON to stderr and warnings go through it (Celery warns before it sets logging up). uvicorn's
    ``log_config`` and Celery's set-up replace this handler later; text leaves logging alone."""
    if log_format != "json":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def render_as_json(loggers: Iterable[logging.Logger | None]) -> None:
    """Give every handler of these loggers the JSON formatter (after Celery has set them up)."""
    for logger in loggers:
        for handler in logger.handlers if logger is not None else ():
            handler.setFormatter(json_formatter())


def json_line(logger: str, level: str, message: str) -> str:
    """One line in the same shape, for the few that cannot go through logging (Celery's signal
    handlers write with os.write: logging's locks are not safe there)."""
    event: EventDict = _timestamp(None, level, {"event": message, "level": level, "logger": logger})
    for processor in _FINISH:
        event = processor(None, level, event)
    rendered = _render(None, level, event)
    return rendered if isinstance(rendered, str) else rendered.decode()


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: its own for text; for json, every logger of the process
    (uvicorn.error, uvicorn.access, the root) through the JSON formatter, the access log
    without query strings and httpx quiet (as models/log_hygiene.py does for text)."""
    if log_format != "json":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "models.log_format.json_formatter"}},
        "filters": {"strip_query": {"()": "models.log_hygiene.StripQueryString"}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False, "filters": ["strip_query"]},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
        "root": {"handlers": ["default"], "level": level},
    }


def bind_fields(**fields: object) -> None:
    """Fields every line carries until ``clear_fields`` (the running task's message, org, ...)."""
    # Ids as their text (a UUID would render as its repr); numbers stay numbers.
    structlog.contextvars.bind_contextvars(
        **{key: value if isinstance(value, int | float) else str(value) for key, value in fields.items()}
    )


def clear_fields() -> None:
    structlog.contextvars.clear_contextvars()
