"""`webhook_receiver.KeySet` against a real dispatcher: the JWKS and PEM routes send
`Cache-Control`, and a delivery signed by a key rotated in after the set was fetched makes the
key set fetch once more and then verifies."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from dispatcher_service.keyring import PUBLIC_KEYS_MAX_AGE_SECONDS
from dispatcher_service.server import RunningDispatcher
from dispatcher_service.signing import SignatureAlgorithm
from tests.conftest import Tokens
from tests.integration.conftest import publish, routed
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.receiver import Receiver
from webhook_receiver import KeySet, verify_webhook

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


async def test_the_dispatcher_sends_cache_control_on_the_jwks_and_the_pem(
    dispatcher: RunningDispatcher,
) -> None:
    base = f"http://127.0.0.1:{dispatcher.http_port}"
    kid = dispatcher.keys.active_key_id()
    async with httpx.AsyncClient() as client:
        jwks = await client.get(f"{base}/.well-known/jwks.json")
        pem = await client.get(f"{base}/v1/signing-keys/{kid}.pem")

    expected = f"public, max-age={PUBLIC_KEYS_MAX_AGE_SECONDS}"
    assert (jwks.status_code, jwks.headers["cache-control"]) == (200, expected)
    assert (pem.status_code, pem.headers["cache-control"]) == (200, expected)


async def test_a_key_set_refetches_once_for_a_rotated_key_and_verifies_its_deliveries(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/claims"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    transport = CountingTransport()
    now = [0.0]
    with httpx.Client(transport=transport) as client:
        keys = KeySet(
            f"http://127.0.0.1:{dispatcher.http_port}/.well-known/jwks.json",
            client=client,
            clock=lambda: now[0],
        )
        await verify_across_a_rotation(keys, dispatcher, dispatcher_stub, receiver, tokens, now)

    assert transport.paths == ["/.well-known/jwks.json"] * 2


async def verify_across_a_rotation(
    keys: KeySet,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
    now: list[float],
) -> None:
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("before-rotation")])
    (first,) = await receiver.wait_for(1)
    old_kid = first.headers["webhook-key-id"]
    webhook = await asyncio.to_thread(verify_webhook, first.body, keys, key_id=old_kid)
    assert webhook.message_id == "before-rotation"

    rotated = await asyncio.to_thread(dispatcher.keys.rotate, SignatureAlgorithm.ECDSA_P256_SHA256)
    now[0] += 10  # past the minimum refetch interval, far inside the set's max-age
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("after-rotation")])
    second = (await receiver.wait_for(2))[1]
    new_kid = second.headers["webhook-key-id"]
    assert new_kid == rotated.key_id != old_kid
    for _ in range(3):
        webhook = await asyncio.to_thread(verify_webhook, second.body, keys, key_id=new_kid)
        assert webhook.message_id == "after-rotation"
    # The retired key still verifies what it signed, from the same fetched set.
    await asyncio.to_thread(verify_webhook, first.body, keys, key_id=old_kid)
