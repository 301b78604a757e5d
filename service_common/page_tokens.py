"""Opaque page tokens for keyset pagination over (time, id).

A token holds the position of the last row sent and a fingerprint of the filters, so a
token reused with other filters is refused instead of returning a confusing page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

from service_common.errors import InvalidArgument

__all__ = ["Position", "decode_page_token", "encode_page_token"]

Position = tuple[datetime, str]
_FIELD = "page_token"


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps(list(filters), default=str).encode()).hexdigest()[:16]


def encode_page_token(position: Position, filters: Sequence[object]) -> str:
    moment, last_id = position
    raw = json.dumps(
        {"t": moment.isoformat(), "i": last_id, "f": _fingerprint(filters)}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, filters: Sequence[object]) -> Position | None:
    """The position a token points after; None for the first page (empty token)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = (datetime.fromisoformat(data["t"]), str(data["i"]))
        fingerprint = data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument.of(_FIELD, "is not a token this service issued") from exc
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument.of(_FIELD, "was issued for other filters; start from the first page")
    return position
