"""Logging: one line per record, plain or JSON, each tagged with the request it belongs to.

The request id comes from the client's `X-Request-ID` header when it is a sane token, else it is
made up; the middleware puts it in a context variable (so every log line written while serving
the request carries it) and echoes it in the response header.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("xmr_request_id", default=None)

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
MAX_LOGGED_FIELD = 512  # a client-chosen value (a path) is cut to this in every log line
# fields a log call may attach with `extra=`; anything else (bodies, headers) is never written
EXTRA_FIELDS = ("method", "path", "status", "duration_ms", "client", "job_id", "kind")


def request_id_from(header: bytes | None) -> str:
    """The client's id if it is a plain token of at most 128 characters, else a new one."""
    if header:
        candidate = header.decode("latin-1")
        if _SAFE_REQUEST_ID.match(candidate):
            return candidate
    return uuid.uuid4().hex


def loggable(value: str) -> str:
    """A client-chosen value made safe for a log line: bounded, control characters escaped.

    A `%0A` in a path must not write a forged line into a text log.
    """
    cut = value[:MAX_LOGGED_FIELD] + ("…" if len(value) > MAX_LOGGED_FIELD else "")
    return _CONTROL_CHARS.sub(_escape, cut)


class TextFormatter(logging.Formatter):
    """The text format, with control characters in the message escaped (one event, one line)."""

    def format(self, record: logging.LogRecord) -> str:
        original = record.msg, record.args
        record.msg, record.args = _CONTROL_CHARS.sub(_escape, record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = original


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so both formats can show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, known extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger (uvicorn's too) through one handler in the chosen format."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the request middleware logs requests
