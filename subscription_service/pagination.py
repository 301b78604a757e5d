"""Opaque page tokens for ListSubscriptions.

A token holds the cursor of the last row sent and a fingerprint of the filters, so a
token reused with other filters is refused instead of returning a confusing page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime

from service_common.errors import InvalidArgument
from subscription_service.domain import ListQuery
from subscription_service.store import Cursor

__all__ = ["decode_page_token", "encode_page_token"]

_FIELD = "page_token"


def _fingerprint(query: ListQuery) -> str:
    filters = [query.tenant, query.message_type, query.enabled]
    return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:16]


def encode_page_token(cursor: Cursor, query: ListQuery) -> str:
    raw = json.dumps(
        {"t": cursor.create_time.isoformat(), "i": cursor.id, "f": _fingerprint(query)},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, query: ListQuery) -> Cursor | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = Cursor(create_time=datetime.fromisoformat(data["t"]), id=str(data["i"]))
        fingerprint = data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument.of(_FIELD, "is not a token this service issued") from exc
    if fingerprint != _fingerprint(query):
        raise InvalidArgument.of(_FIELD, "was issued for other filters; start from the first page")
    return cursor
