"""Receiver kit: verify a webhook's signature and payload, validate it, de-duplicate it.

    >>> from webhook_receiver import verify_webhook
    >>> webhook = verify_webhook(request_body, public_key_pem)
    >>> webhook.message_type, webhook.details

The signing side (``payload_as_string``, ``sign_payload`` and the key helpers) is what the
platform itself uses, so both sides agree by construction.
"""

from .canonical import payload_as_string
from .dedup import Claim, Deduplicator
from .equality import first_difference, same_json
from .errors import (
    ContractViolation,
    InvalidSignature,
    MalformedWebhook,
    PayloadMismatch,
    UnknownMessageType,
    WebhookRejected,
)
from .keys import (
    PrivateKey,
    PublicKey,
    UnsupportedKey,
    generate_ecdsa_key,
    generate_rsa_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_jwk,
    public_key_pem,
)
from .signing import sign_payload, verify_signature
from .verify import VerifiedWebhook, parse_json, verify_webhook
from .webhook import build_webhook

__all__ = [
    "Claim",
    "ContractViolation",
    "Deduplicator",
    "InvalidSignature",
    "MalformedWebhook",
    "PayloadMismatch",
    "PrivateKey",
    "PublicKey",
    "UnknownMessageType",
    "UnsupportedKey",
    "VerifiedWebhook",
    "WebhookRejected",
    "build_webhook",
    "first_difference",
    "generate_ecdsa_key",
    "generate_rsa_key",
    "key_id",
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
