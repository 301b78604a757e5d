"""Checking a received webhook before trusting it.

In this order: the body has the webhook shape; ``signature`` verifies over the UTF-8 bytes of
``payloadAsString`` with the platform's public key; ``payloadAsString`` is exactly the JSON
of ``payload``; the payload satisfies the contract of its messageType. What comes back is
built from the signed text, never from the unsigned copy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import webhook_contracts
from webhook_contracts.locations import dotted
from webhook_wire import strict_json
from webhook_wire.keys import PublicKey, load_public_key
from webhook_wire.keys import key_id as thumbprint

from .equality import first_difference
from .errors import (
    ContractViolation,
    MalformedWebhook,
    PayloadMismatch,
    UnknownMessageType,
    UnknownSigningKey,
)
from .keyset import AsyncKeySet, KeySet
from .signing import verify_signature

__all__ = ["VerifiedWebhook", "parse_json", "verify_webhook"]


@dataclass(frozen=True)
class VerifiedWebhook:
    """A webhook whose signature, payload and contract all checked out."""

    payload: Mapping[str, Any]
    payload_as_string: str
    contract_checked: bool

    @property
    def message_id(self) -> str:
        return str(self.payload["messageId"])

    @property
    def message_type(self) -> str:
        return str(self.details["messageType"])

    @property
    def timestamp(self) -> str:
        return str(self.payload["timestamp"])

    @property
    def details(self) -> Mapping[str, Any]:
        details: Mapping[str, Any] = self.payload["details"]
        return details

    @property
    def user(self) -> Mapping[str, Any] | None:
        user: Mapping[str, Any] | None = self.payload.get("user")
        return user


class _Unset(enum.Enum):
    UNSET = enum.auto()


def verify_webhook(
    body: bytes | str | Mapping[str, Any],
    public_key_pem: bytes | str | PublicKey | KeySet,
    *,
    key_id: str | _Unset | None = _Unset.UNSET,
    validate: bool = True,
    accept_unknown_types: bool = False,
    registry: webhook_contracts.Registry | None = None,
) -> VerifiedWebhook:
    """Verify a delivery and return its payload, or raise a ``WebhookRejected``.

    ``body`` is the raw request body (preferably) or its parsed JSON. ``validate=False`` skips
    the contract; ``accept_unknown_types`` lets through a messageType the local contracts do
    not know yet (``contract_checked`` is then False) instead of raising
    ``UnknownMessageType``.

    ``public_key_pem`` is the platform's public key (PEM or loaded), or a ``KeySet`` that
    finds it by ``key_id``: the delivery's ``webhook-key-id`` header, required with a key
    set (a missing header, None, is ``UnknownSigningKey``). With one fixed key, a ``key_id``
    given must be that key's id, so a delivery signed after a rotation says so plainly.
    """
    received = body if isinstance(body, Mapping) else parse_json(body, what="body")
    payload, signature, payload_as_string = _webhook_fields(received)
    verify_signature(payload_as_string, signature, _signing_key(public_key_pem, key_id))
    signed = parse_json(payload_as_string, what="payloadAsString")
    if (where := first_difference(signed, payload)) is not None:
        raise PayloadMismatch(where)
    checked = validate and _check_contract(
        signed, registry=registry, accept_unknown_types=accept_unknown_types
    )
    return VerifiedWebhook(
        payload=signed, payload_as_string=payload_as_string, contract_checked=checked
    )


def parse_json(text: bytes | str, *, what: str) -> Any:
    """The wire format's strict JSON (`strict_json`): no NaN or overflowing numbers, no
    integers beyond 64 bits, no repeated keys, no lone surrogates, bounded nesting."""
    try:
        return strict_json.loads(text.decode() if isinstance(text, bytes) else text)
    except UnicodeDecodeError as error:
        raise MalformedWebhook(f"{what} is not UTF-8 text: {error}") from error
    except strict_json.JsonRefused as refused:
        where = f" at {dotted(refused.path)}" if refused.path else ""
        raise MalformedWebhook(f"{what}{where} {refused.reason}") from refused


def _signing_key(
    given: bytes | str | PublicKey | KeySet, kid: str | _Unset | None
) -> bytes | str | PublicKey:
    if isinstance(given, AsyncKeySet):
        raise TypeError("with an AsyncKeySet, pass the key of `await key_set.get(key_id)`")
    if isinstance(given, KeySet):
        if kid is _Unset.UNSET:
            raise TypeError("verify_webhook(body, key_set, key_id=<webhook-key-id header>)")
        if not kid:
            raise UnknownSigningKey("the delivery names no key: no webhook-key-id header")
        return given.get(kid)
    if kid is _Unset.UNSET:
        return given
    key = load_public_key(given)
    if not kid or thumbprint(key) != kid:
        raise UnknownSigningKey("the delivery is signed by another key than the one given")
    return key


def _webhook_fields(received: object) -> tuple[Mapping[str, Any], str, str]:
    if not isinstance(received, Mapping):
        raise MalformedWebhook("the body is not a JSON object")
    payload = received.get("payload")
    signature = received.get("signature")
    payload_as_string = received.get("payloadAsString")
    if not isinstance(payload, Mapping):
        raise MalformedWebhook("payload is missing or not an object")
    if not isinstance(signature, str) or not isinstance(payload_as_string, str):
        raise MalformedWebhook("signature and payloadAsString must be strings")
    return payload, signature, payload_as_string


def _check_contract(
    payload: object, *, registry: webhook_contracts.Registry | None, accept_unknown_types: bool
) -> bool:
    registry = registry or webhook_contracts.load_registry()
    try:
        registry.validate_payload(payload)
    except webhook_contracts.UnknownMessageType as error:
        if accept_unknown_types:
            return False
        raise UnknownMessageType(error.message_type) from error
    except webhook_contracts.ContractViolation as error:
        raise ContractViolation(
            location=error.location,
            message=error.message,
            keyword=error.keyword,
            message_type=error.message_type,
        ) from error
    return True
