"""Building a delivery body: what the platform sends, and what tests send to receivers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook_wire.canonical import payload_as_string
from webhook_wire.keys import PrivateKey
from webhook_wire.signing import sign_payload

__all__ = ["build_webhook"]


def build_webhook(payload: Mapping[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """The body of a delivery: ``payload``, its canonical text, and the signature of that text."""
    text = payload_as_string(payload)
    return {
        "payload": payload,
        "signature": sign_payload(text, private_key),
        "payloadAsString": text,
    }
