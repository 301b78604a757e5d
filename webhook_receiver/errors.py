"""Why a webhook was rejected.

WebhookRejected (ValueError)
 ├── MalformedWebhook      the body is not the webhook shape (not JSON, fields missing...)
 ├── InvalidSignature      the signature does not verify over payloadAsString
 ├── UnknownSigningKey     the key set publishes no key with the webhook-key-id (or none came)
 ├── PayloadMismatch       payloadAsString is not the JSON text of payload
 ├── ContractViolation     the payload breaks its contract (also webhook_contracts')
 └── UnknownMessageType    no local contract has its messageType (also webhook_contracts')

Answer any of them with a 4xx: a delivery that fails this way will not get better by retrying,
except ``UnknownMessageType`` after upgrading the contracts.

KeySetUnavailable (Exception)   the key set could not be fetched: answer 503, the platform
                                retries; not a WebhookRejected, the webhook may be fine.
"""

from __future__ import annotations

import webhook_contracts
from webhook_contracts.locations import Location, dotted

__all__ = [
    "ContractViolation",
    "InvalidSignature",
    "KeySetUnavailable",
    "MalformedWebhook",
    "PayloadMismatch",
    "UnknownMessageType",
    "UnknownSigningKey",
    "WebhookRejected",
]


class WebhookRejected(ValueError):
    """Base: this webhook must not be processed."""


class MalformedWebhook(WebhookRejected):
    """The body is not a webhook: not JSON, or without payload/signature/payloadAsString."""


class InvalidSignature(WebhookRejected):
    """The signature is not a valid signature of payloadAsString by the given key."""


class UnknownSigningKey(WebhookRejected):
    """No published key has the delivery's key id, even after fetching the key set again
    (or the delivery names no key id). A key that was retired past its retention ends here."""


class KeySetUnavailable(Exception):
    """The key set could not be fetched (connection, timeout, an answer that is no key set).

    Answer 503: the platform retries the delivery later, when the keys may be reachable.
    """


class PayloadMismatch(WebhookRejected):
    """payloadAsString (what was signed) differs from payload (what was sent alongside)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        where = dotted(("payload", *location))
        super().__init__(f"payload differs from payloadAsString at {where}")


class ContractViolation(WebhookRejected, webhook_contracts.ContractViolation):
    """The signed payload breaks the contract of its messageType."""


class UnknownMessageType(WebhookRejected, webhook_contracts.UnknownMessageType):
    """No local contract has this messageType (the contracts may need an upgrade)."""
