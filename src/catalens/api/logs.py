"""Logging for ``catalens serve``: one format, request ids, and secrets redacted.

``log_config(settings)`` is the ``logging.config.dictConfig`` dict that uvicorn applies (in
every worker): each line has its time and level, ``text`` or ``json`` (one object a line,
for log shippers) by ``log_format``, at ``log_level``. ``RequestIdMiddleware`` gives every
request an id (the client's ``X-Request-ID`` when sane) that its log lines and response carry.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalens.settings import Settings

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "log_config",
    "redact",
]

REQUEST_ID_HEADER = "X-Request-ID"
_request_id: ContextVar[str] = ContextVar("catalens_request_id", default="-")
# Only what is safe to echo into a header and a log line, and short.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# user:PASSWORD@ in a URL, also percent-encoded (a DSN in an access line's query string).
_DSN_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)", re.IGNORECASE)
_ENCODED_DSN_PASSWORD = re.compile(
    r"(\b[a-z][a-z0-9+.-]*%3A%2F%2F[^\s:/@%&?]+%3A)[^\s@/&?]+?(?=%40)", re.IGNORECASE
)
_HEADER_VALUE = re.compile(
    r"((?:authorization|x-api-key|api[_-]?key|password)['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(?:bearer|basic|token)\s+)?[^\s'\",;]+",
    re.IGNORECASE,
)
REDACTED = "***"


def current_request_id() -> str:
    """The id of the request being served in this context ("-" outside one)."""
    return _request_id.get()


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without DSN passwords, credential header values, or any of ``secrets``."""
    for secret in secrets:
        if secret:
            # As sent, and as a query string carries it.
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, REDACTED)
    text = _DSN_PASSWORD.sub(rf"\g<1>{REDACTED}", text)
    text = _ENCODED_DSN_PASSWORD.sub(rf"\g<1>{REDACTED}", text)
    return _HEADER_VALUE.sub(rf"\g<1>{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with ``redact``."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        # Longest first: a key that contains another is redacted whole.
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", current_request_id()),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def log_config(settings: Settings) -> dict[str, Any]:
    """The ``dictConfig`` for uvicorn's and catalens' loggers under ``settings``."""
    level = settings.log_level.upper()
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if settings.log_format == "json"
        else {"format": TEXT_FORMAT, "datefmt": "%Y-%m-%dT%H:%M:%S%z"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "catalens",
        # Filters on the handler see every record, propagated ones included.
        "filters": ["request_id", "redact"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "redact": {"()": RedactingFilter, "secrets": tuple(settings.api_keys)},
        },
        "formatters": {"catalens": formatter},
        "handlers": {"catalens": handler},
        "loggers": {
            # uvicorn's own handlers are replaced: every line goes through ours.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
        },
        "root": {"handlers": ["catalens"], "level": level},
    }


class RequestIdMiddleware:
    """Gives each HTTP request an id: the client's ``X-Request-ID`` when sane, else a new
    one; set for the request's log lines (the access line too) and sent back in the header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"x-request-id":
                given = value.decode("latin-1").strip()
                break
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        token = _request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
