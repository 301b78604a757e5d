"""Logging for both services: JSON lines (or text), with the ids of the work at hand.

`log_context(message_id=..., delivery_id=...)` puts ids on every record logged inside it,
in the same task and the tasks it starts; `bind_log_context` does so for the rest of a
task. Credentials never reach a log: bearer tokens, Standard Webhooks secrets and PEM
private keys are masked in every message, whoever logged it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

__all__ = ["bind_log_context", "configure_logging", "log_context", "redact"]

_CONTEXT: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039

_SECRETS = re.compile(
    r"(?P<bearer>\bBearer\s+)[^\s'\",]+"
    r"|\bwhsec_[A-Za-z0-9+/=]+"
    r"|-----BEGIN (?P<kind>[A-Z ]*)PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    re.DOTALL,
)


def redact(text: str) -> str:
    """`text` with credentials masked."""
    return _SECRETS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    if match.group("bearer"):
        return f"{match.group('bearer')}[redacted]"
    if match.group(0).startswith("whsec_"):
        return "whsec_[redacted]"
    return "[redacted private key]"


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Adds `fields` to every record logged inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_log_context(**fields: str) -> None:
    """Adds `fields` to every record logged from here to the end of the current task
    (cheaper than `log_context` for a task that does one piece of work)."""
    _CONTEXT.set({**_CONTEXT.get(), **fields})


class _ContextFilter(logging.Filter):
    """Puts the context's ids on the record and masks credentials in its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _CONTEXT.get()
        for key, value in context.items():
            setattr(record, key, value)
        record.context = "".join(f" {key}={value}" for key, value in context.items())
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class _JsonFormatter(JsonFormatter):
    def formatException(self, ei: object) -> str:
        return redact(super().formatException(ei))  # type: ignore[arg-type]


def configure_logging(level: str, log_format: Literal["json", "text"]) -> None:
    """Sends every record to stderr, one line each (JSON) or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(
            _JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                # Everything else a record carries is its context's ids.
                reserved_attrs=[*RESERVED_ATTRS, "context", "taskName"],
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s%(context)s")
        )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
