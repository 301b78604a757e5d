"""Validation rules for subscription fields: pure functions returning field violations."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Sequence
from urllib.parse import urlsplit

from service_common.errors import FieldViolation

__all__ = [
    "MAX_DESCRIPTION_LENGTH",
    "MAX_MESSAGE_TYPES",
    "MAX_URL_LENGTH",
    "check_description",
    "check_disabled_reason",
    "check_message_types",
    "check_secret",
    "check_url",
]

MAX_URL_LENGTH = 2048
MAX_MESSAGE_TYPES = 100
MAX_MESSAGE_TYPE_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 1024
SECRET_PREFIX = "whsec_"  # noqa: S105  # a prefix, not a secret
_SECRET_BYTES = range(24, 65)

_EXACT_TYPE_RE = re.compile(r"^[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)+$")
_PATTERN_RE = re.compile(r"^(?:[A-Za-z0-9]+\.)+\*$")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")


def check_url(url: str, *, field: str) -> list[FieldViolation]:
    def bad(why: str) -> list[FieldViolation]:
        return [FieldViolation(field, why)]

    if not url:
        return bad("required")
    if len(url) > MAX_URL_LENGTH:
        return bad(f"at most {MAX_URL_LENGTH} characters")
    if _CONTROL_RE.search(url):
        return bad("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        return bad("is not a valid URL (check the brackets around an IPv6 host)")
    if parts.scheme not in ("http", "https"):
        return bad("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        return bad("must not contain credentials; use the subscription secret instead")
    if not parts.hostname:
        return bad("must name a host")
    if parts.fragment:
        return bad("must not have a #fragment")
    try:
        port = parts.port
    except ValueError:
        return bad("has an invalid port")
    if port == 0:
        return bad("has an invalid port")
    return []


def check_message_types(
    message_types: Sequence[str], *, known: Collection[str], field: str
) -> list[FieldViolation]:
    if not message_types:
        return [FieldViolation(field, "at least one message type or pattern is required")]
    if len(message_types) > MAX_MESSAGE_TYPES:
        return [FieldViolation(field, f"at most {MAX_MESSAGE_TYPES} entries")]
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for index, entry in enumerate(message_types):
        where = f"{field}[{index}]"
        if entry in seen:
            violations.append(FieldViolation(where, f"'{entry}' is listed twice"))
        seen.add(entry)
        violations.extend(_check_message_type(entry, known=known, field=where))
    return violations


def _check_message_type(entry: str, *, known: Collection[str], field: str) -> list[FieldViolation]:
    shown = entry[:MAX_MESSAGE_TYPE_LENGTH]
    if len(entry) > MAX_MESSAGE_TYPE_LENGTH:
        return [FieldViolation(field, f"at most {MAX_MESSAGE_TYPE_LENGTH} characters")]
    if _PATTERN_RE.fullmatch(entry):
        prefix = entry[:-1]
        if not any(name.startswith(prefix) for name in known):
            return [FieldViolation(field, f"pattern '{shown}' matches no known message type")]
        return []
    if not _EXACT_TYPE_RE.fullmatch(entry):
        return [
            FieldViolation(
                field,
                f"'{shown}' is neither a message type (event.claim.created.v1) "
                "nor a prefix pattern (event.claim.*)",
            )
        ]
    if entry not in known:
        return [FieldViolation(field, f"unknown message type '{shown}'")]
    return []


def check_description(description: str, *, field: str) -> list[FieldViolation]:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        return [FieldViolation(field, f"at most {MAX_DESCRIPTION_LENGTH} characters")]
    return []


check_disabled_reason = check_description


def check_secret(secret: str, *, field: str) -> list[FieldViolation]:
    """An empty secret means none; otherwise a Standard Webhooks `whsec_` secret."""
    if not secret:
        return []
    why = f"must be '{SECRET_PREFIX}' followed by base64 of 24 to 64 random bytes"
    if not secret.startswith(SECRET_PREFIX) or len(secret) > 200:
        return [FieldViolation(field, why)]
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return [FieldViolation(field, why)]
    if len(key) not in _SECRET_BYTES:
        return [FieldViolation(field, why)]
    return []
