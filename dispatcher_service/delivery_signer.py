"""Signing deliveries: the body and headers of each attempt, one signature per event.

An event's deliveries to several subscriptions carry the same payload, signed with the
same key, so one signature serves them all: made once, then reused for a while. The
deliveries of a claim are signed ahead, one after another, before their tasks start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Protocol

import orjson

from dispatcher_service.domain import ClaimedDelivery
from dispatcher_service.routing import Route
from dispatcher_service.signing import Signature, SignatureAlgorithm, delivery_headers

__all__ = ["DeliverySigner", "Signer", "build_body"]

# An event's deliveries to several subscriptions carry one signature: the same payload,
# signed with the same key. Kept this long after it was made, so that the deliveries
# claimed together share it, and a signature never outlives its key's retirement by much.
_SIGNATURE_REUSE = timedelta(seconds=60)
_MAX_SIGNATURES = 4096
_SignatureKey = tuple[str, str, SignatureAlgorithm]  # tenant, message id, algorithm


class Signer(Protocol):
    def sign(self, payload_as_string: str, algorithm: SignatureAlgorithm) -> Signature: ...


def build_body(payload: str, signature: str) -> bytes:
    """The delivery body of DESIGN section 2, with `payload` being exactly `payloadAsString`.

    Spliced as text rather than re-serialised, so the `payload` object a receiver parses
    is byte for byte the text that was signed.
    """
    return b"".join(
        (
            b'{"payload":',
            payload.encode(),
            b',"signature":',
            orjson.dumps(signature),
            b',"payloadAsString":',
            orjson.dumps(payload),
            b"}",
        )
    )


class DeliverySigner:
    """Signs the deliveries of one worker with `signer`, reusing each event's signature.

    `route` looks up a subscription's route (for the algorithm of deliveries signed ahead).
    """

    def __init__(
        self, *, signer: Signer, user_agent: str, route: Callable[[str], Route | None]
    ) -> None:
        self._signer = signer
        self._user_agent = user_agent
        self._route = route
        self._signatures: dict[_SignatureKey, tuple[Signature, datetime]] = {}

    async def signed(
        self, delivery: ClaimedDelivery, route: Route, now: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of `delivery`'s attempt at `now`, sent as `route` says."""
        signature = await self._signature(delivery, route.signature_algorithm, now)
        body = build_body(delivery.payload, signature.value_b64)
        headers = delivery_headers(
            message_id=delivery.message_id,
            timestamp=int(now.timestamp()),
            body=body,
            signature=signature,
            secret=route.secret,
            user_agent=self._user_agent,
        )
        return body, headers

    def sign_ahead(
        self, claimed: Iterable[ClaimedDelivery], *, besides: frozenset[str], now: datetime
    ) -> None:
        """Signs the ECDSA deliveries of a claim one after another, except `besides`.

        Signed each in its own task, between the HTTP work of dozens of others, a signature
        took nearly twice the CPU time it takes in a row (caches gone cold in between)."""
        for delivery in claimed:
            route = self._route(delivery.subscription_id)
            if (
                delivery.id in besides
                or route is None
                or route.signature_algorithm is not SignatureAlgorithm.ECDSA_P256_SHA256
            ):
                continue
            key = (delivery.tenant, delivery.message_id, route.signature_algorithm)
            if self._made_signature(key, now) is None:
                signature = self._signer.sign(delivery.payload, route.signature_algorithm)
                self._keep_signature(key, signature, now)

    async def _signature(
        self, delivery: ClaimedDelivery, algorithm: SignatureAlgorithm, now: datetime
    ) -> Signature:
        """The signature of `delivery`'s payload: made here, or made ahead, or reused from
        another delivery of its event made a moment ago."""
        key = (delivery.tenant, delivery.message_id, algorithm)
        made = self._made_signature(key, now)
        if made is not None:
            return made
        if algorithm is SignatureAlgorithm.RSA_PKCS1_SHA256:
            # RSA signs ten times slower than ECDSA but releases the GIL: keep it off the loop.
            signature = await asyncio.to_thread(self._signer.sign, delivery.payload, algorithm)
        else:
            signature = self._signer.sign(delivery.payload, algorithm)
        self._keep_signature(key, signature, now)
        return signature

    def _made_signature(self, key: _SignatureKey, now: datetime) -> Signature | None:
        """The signature made for `key` less than `_SIGNATURE_REUSE` ago, if any."""
        made = self._signatures.get(key)
        return made[0] if made is not None and now - made[1] < _SIGNATURE_REUSE else None

    def _keep_signature(self, key: _SignatureKey, signature: Signature, now: datetime) -> None:
        if len(self._signatures) >= _MAX_SIGNATURES:
            self._signatures.clear()
        self._signatures[key] = (signature, now)
