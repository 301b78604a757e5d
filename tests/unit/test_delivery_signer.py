"""The delivery signer: one signature per event for a while, signed ahead or on demand,
with a fake key signer that counts what it signs."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

from dispatcher_service.delivery_signer import _SIGNATURE_REUSE, DeliverySigner, build_body
from dispatcher_service.domain import ClaimedDelivery
from dispatcher_service.routing import Route
from dispatcher_service.signing import Signature, SignatureAlgorithm

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ECDSA = SignatureAlgorithm.ECDSA_P256_SHA256
RSA = SignatureAlgorithm.RSA_PKCS1_SHA256


class CountingSigner:
    """Signs with a made-up value naming the payload and the number of the signature."""

    def __init__(self) -> None:
        self.signed: list[tuple[str, SignatureAlgorithm]] = []
        self.threads: list[int] = []

    def sign(self, payload_as_string: str, algorithm: SignatureAlgorithm) -> Signature:
        self.signed.append((payload_as_string, algorithm))
        self.threads.append(threading.get_ident())
        return Signature(
            key_id=f"key-{algorithm.value}",
            algorithm=algorithm,
            value_b64=f"signature-{len(self.signed)}",
            p1363_b64=f"p1363-{len(self.signed)}",
        )


def route(subscription_id: str, algorithm: SignatureAlgorithm = ECDSA) -> Route:
    return Route(
        subscription_id=subscription_id,
        tenant="acme",
        url=f"https://{subscription_id}.example/in",
        signature_algorithm=algorithm,
        secret=None,
        enabled=True,
    )


def delivery(
    subscription_id: str, message_id: str = "m-1", *, tenant: str = "acme"
) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=f"{message_id}-to-{subscription_id}",
        tenant=tenant,
        subscription_id=subscription_id,
        message_id=message_id,
        message_type="event.claim.created.v1",
        url=f"https://{subscription_id}.example/in",
        attempt_count=0,
        payload=json.dumps({"messageId": message_id}),
        due_time=NOW,
    )


def new_signer(key_signer: CountingSigner, routes: dict[str, Route]) -> DeliverySigner:
    return DeliverySigner(signer=key_signer, user_agent="test-agent/1", route=routes.get)


async def test_an_events_deliveries_share_one_signature_within_the_reuse_window() -> None:
    key_signer = CountingSigner()
    routes = {name: route(name) for name in ("s1", "s2", "s3")}
    signing = new_signer(key_signer, routes)

    bodies = [
        (await signing.signed(delivery(name), routes[name], NOW + timedelta(seconds=i)))[0]
        for i, name in enumerate(routes)
    ]

    assert len(key_signer.signed) == 1
    assert {json.loads(body)["signature"] for body in bodies} == {"signature-1"}


async def test_an_event_is_signed_again_once_the_reuse_window_has_passed() -> None:
    key_signer = CountingSigner()
    routes = {"s1": route("s1")}
    signing = new_signer(key_signer, routes)

    await signing.signed(delivery("s1"), routes["s1"], NOW)
    await signing.signed(
        delivery("s1"), routes["s1"], NOW + _SIGNATURE_REUSE - timedelta(seconds=1)
    )
    assert len(key_signer.signed) == 1
    body, _ = await signing.signed(delivery("s1"), routes["s1"], NOW + _SIGNATURE_REUSE)

    assert len(key_signer.signed) == 2
    assert json.loads(body)["signature"] == "signature-2"


async def test_other_events_tenants_and_algorithms_get_signatures_of_their_own() -> None:
    key_signer = CountingSigner()
    routes = {"s1": route("s1"), "s2": route("s2", RSA)}
    signing = new_signer(key_signer, routes)

    await signing.signed(delivery("s1", "m-1"), routes["s1"], NOW)
    await signing.signed(delivery("s1", "m-2"), routes["s1"], NOW)
    await signing.signed(delivery("s1", "m-1", tenant="globex"), routes["s1"], NOW)
    await signing.signed(delivery("s2", "m-1"), routes["s2"], NOW)

    assert len(key_signer.signed) == 4
    assert [algorithm for _, algorithm in key_signer.signed] == [ECDSA, ECDSA, ECDSA, RSA]


async def test_the_body_and_headers_carry_the_signature_and_the_attempts_time() -> None:
    key_signer = CountingSigner()
    routes = {"s1": route("s1")}
    signing = new_signer(key_signer, routes)
    sent = delivery("s1")

    body, headers = await signing.signed(sent, routes["s1"], NOW)

    assert body == build_body(sent.payload, "signature-1")
    assert json.loads(body)["payloadAsString"] == sent.payload
    assert headers["webhook-id"] == "m-1"
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert headers["webhook-key-id"] == f"key-{ECDSA.value}"
    assert headers["webhook-signature-algorithm"] == "ES256"
    assert headers["webhook-signature-p1363"] == "p1363-1"
    assert headers["user-agent"] == "test-agent/1"
    assert "webhook-signature" not in headers  # the route has no secret


async def test_rsa_is_signed_off_the_event_loop_and_ecdsa_on_it() -> None:
    key_signer = CountingSigner()
    routes = {"s1": route("s1"), "s2": route("s2", RSA)}
    signing = new_signer(key_signer, routes)

    await signing.signed(delivery("s1"), routes["s1"], NOW)
    await signing.signed(delivery("s2"), routes["s2"], NOW)

    loop_thread = threading.get_ident()
    assert key_signer.threads[0] == loop_thread
    assert key_signer.threads[1] != loop_thread


async def test_a_claim_signed_ahead_is_not_signed_again_when_sent() -> None:
    key_signer = CountingSigner()
    routes = {"s1": route("s1"), "s2": route("s2")}
    signing = new_signer(key_signer, routes)
    claimed = [delivery("s1", "m-1"), delivery("s2", "m-1"), delivery("s1", "m-2")]

    signing.sign_ahead(claimed, besides=frozenset(), now=NOW)
    assert sorted(payload for payload, _ in key_signer.signed) == sorted(
        {d.payload for d in claimed}
    )
    for each in claimed:
        await signing.signed(each, routes[each.subscription_id], NOW)

    assert len(key_signer.signed) == 2


async def test_signing_ahead_skips_what_is_given_back_rsa_and_unknown_subscriptions() -> None:
    key_signer = CountingSigner()
    routes = {"s1": route("s1"), "rsa": route("rsa", RSA)}
    signing = new_signer(key_signer, routes)
    given_back = delivery("s1", "m-1")

    signing.sign_ahead(
        [given_back, delivery("rsa", "m-2"), delivery("gone", "m-3")],
        besides=frozenset({given_back.id}),
        now=NOW,
    )

    assert key_signer.signed == []
