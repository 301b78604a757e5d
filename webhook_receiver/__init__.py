"""Receiver kit: verify a webhook's signature and payload, validate it, de-duplicate it.

    >>> from webhook_receiver import verify_webhook
    >>> webhook = verify_webhook(request_body, public_key_pem)
    >>> webhook.message_type, webhook.details

or, with the keys fetched from the platform's JWKS and following its rotations:

    >>> keys = KeySet("https://dispatcher.example/.well-known/jwks.json")
    >>> webhook = verify_webhook(request_body, keys, key_id=headers.get("webhook-key-id"))

The signing side (``payload_as_string``, ``sign_payload`` and the key helpers) comes from
``webhook_wire``, the wire format the platform itself uses, so both sides agree by construction.
"""

from webhook_wire.canonical import payload_as_string
from webhook_wire.keys import (
    PrivateKey,
    PublicKey,
    UnsupportedKey,
    generate_ecdsa_key,
    generate_rsa_key,
    key_id,
    load_jwk,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_jwk,
    public_key_pem,
)
from webhook_wire.signing import ieee_p1363_signature, sign_payload

from .dedup import Claim, Deduplicator
from .equality import first_difference, same_json
from .errors import (
    ContractViolation,
    InvalidSignature,
    KeySetUnavailable,
    MalformedWebhook,
    PayloadMismatch,
    UnknownMessageType,
    UnknownSigningKey,
    WebhookRejected,
)
from .keyset import AsyncKeySet, KeySet
from .signing import verify_signature
from .verify import VerifiedWebhook, parse_json, verify_webhook
from .webhook import build_webhook

__all__ = [
    "AsyncKeySet",
    "Claim",
    "ContractViolation",
    "Deduplicator",
    "InvalidSignature",
    "KeySet",
    "KeySetUnavailable",
    "MalformedWebhook",
    "PayloadMismatch",
    "PrivateKey",
    "PublicKey",
    "UnknownMessageType",
    "UnknownSigningKey",
    "UnsupportedKey",
    "VerifiedWebhook",
    "WebhookRejected",
    "build_webhook",
    "first_difference",
    "generate_ecdsa_key",
    "generate_rsa_key",
    "ieee_p1363_signature",
    "key_id",
    "load_jwk",
    "load_private_key",
    "load_public_key",
    "parse_json",
    "payload_as_string",
    "private_key_pem",
    "public_jwk",
    "public_key_pem",
    "same_json",
    "sign_payload",
    "verify_signature",
    "verify_webhook",
]
