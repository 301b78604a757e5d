"""Opaque page tokens for keyset pagination over (time, id).

A token holds the position of the last row sent and a fingerprint of the filters, so a
token reused with other filters is refused instead of returning a confusing page.

Tokens are not signed, so anyone can write one. A token is therefore checked as strictly
as the encoder writes it (its length and alphabet, its keys and their types, an aware time,
an id of the shape the service gives its rows) before any of it reaches a database, where
a lone surrogate (SQLite) or a NUL (PostgreSQL) in the id failed as INTERNAL. A token only
says where in the ordering to resume: the filters, the tenant above all, always come from
the request, so a forged token can skip rows but never show another tenant's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from service_common.errors import InvalidArgument

__all__ = ["MAX_TOKEN_LENGTH", "Position", "decode_page_token", "encode_page_token"]

Position = tuple[datetime, str]

# Over three times the longest token these services write (about 150 characters for an id
# of 40). Bounding the text also bounds how deeply its JSON can nest, so parsing can never
# reach the recursion limit.
MAX_TOKEN_LENGTH = 512

_FIELD = "page_token"
_NOT_OURS = "is not a token this service issued"
_KEYS = frozenset({"t", "i", "f"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
# What `datetime.isoformat` writes for an aware time; re.ASCII keeps \d from matching other
# scripts' digits, which `fromisoformat` would not read.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?[+-]\d\d:\d\d", re.ASCII)


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps(list(filters), default=str).encode()).hexdigest()[:16]


def _unpadded_base64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def encode_page_token(position: Position, filters: Sequence[object]) -> str:
    moment, last_id = position
    if moment.utcoffset() is None:
        # A naive time would be read as local time here and be refused by the decoder.
        raise ValueError("a page position's time must be timezone-aware")
    # In UTC, because SQLite compares the stored UTC wall time and ignores any offset.
    at = moment.astimezone(UTC).isoformat()
    raw = json.dumps({"t": at, "i": last_id, "f": _fingerprint(filters)}, separators=(",", ":"))
    return _unpadded_base64(raw.encode())


def decode_page_token(
    token: str, filters: Sequence[object], *, id_shape: re.Pattern[str]
) -> Position | None:
    """The position a token points after; None for the first page (empty token).

    `id_shape` must match the whole of every id the service gives its rows, and nothing a
    database could choke on; anything else is refused as not ours.
    """
    if not token:
        return None
    fields = _fields(_json_of(token))
    position = (_time(fields["t"]), _id(fields["i"], id_shape=id_shape))
    if fields["f"] != _fingerprint(filters):
        raise InvalidArgument.of(_FIELD, "was issued for other filters; start from the first page")
    return position


def _not_ours() -> InvalidArgument:
    return InvalidArgument.of(_FIELD, _NOT_OURS)


def _json_of(token: str) -> object:
    """The JSON value inside a token, if the token is the canonical base64url of ASCII JSON."""
    if len(token) > MAX_TOKEN_LENGTH or not _BASE64URL.fullmatch(token):
        raise _not_ours()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError as exc:  # binascii.Error: a length no base64 text has
        raise _not_ours() from exc
    # Re-encoding refuses other spellings of the same bytes (set trailing bits); the encoder
    # escapes everything outside ASCII, so other bytes were not written by it.
    if _unpadded_base64(raw) != token or not raw.isascii():
        raise _not_ours()
    try:
        return json.loads(raw.decode("ascii"), object_pairs_hook=_without_repeated_keys)
    except ValueError as exc:  # JSONDecodeError, or a repeated key
        raise _not_ours() from exc


def _without_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key is repeated")
    return found


def _fields(data: object) -> dict[str, str]:
    """The token's fields: exactly the keys the encoder writes, each a string."""
    if not isinstance(data, dict) or data.keys() != _KEYS:
        raise _not_ours()
    if not all(isinstance(value, str) for value in data.values()):
        raise _not_ours()
    if not _FINGERPRINT.fullmatch(data["f"]):
        raise _not_ours()
    return data


def _time(text: str) -> datetime:
    # The pattern requires an offset, so the time read is aware; in UTC it compares right
    # on both backends. Fields out of range raise ValueError, and a time near either end of
    # the calendar that leaves it when moved to UTC raises OverflowError.
    if not _TIME.fullmatch(text):
        raise _not_ours()
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _not_ours() from exc


def _id(text: str, *, id_shape: re.Pattern[str]) -> str:
    if not id_shape.fullmatch(text):
        raise _not_ours()
    return text
