"""Two dispatcher processes on one PostgreSQL database deliver every event exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.dispatcher_process import DispatcherProcess, dispatcher_environment
from tests.integration.conftest import auth
from tests.receiver import Receiver
from webhook_receiver import verify_webhook
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

CLAIM_CREATED = "event.claim.created.v1"
DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)
EVENTS = 400
BATCH = 25


@pytest.fixture
def replica_env(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> Callable[[str], dict[str, str]]:
    """The environment of one replica; every replica gets the same database."""
    database_url = new_database_url("dispatcher")

    def env(name: str) -> dict[str, str]:
        # A directory, so a key directory, per replica: the webhook-key-id header tells
        # who sent a request.
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        return dispatcher_environment(
            database_url=database_url,
            tokens=tokens,
            subscriptions_port=subscription_server.port,
            directory=directory,
            overrides={
                "DISPATCHER_RETRY_SCHEDULE": "0s,0.2s,0.2s,0.2s",
                "DISPATCHER_LEASE_SECONDS": "11",
                "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": "5",
                "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
            },
        )

    return env


@pytest.fixture
def replicas(replica_env: Callable[[str], dict[str, str]]) -> Iterator[list[DispatcherProcess]]:
    started = [DispatcherProcess(replica_env("a")), DispatcherProcess(replica_env("b"))]
    yield started
    for process in started:
        process.terminate()
    for process in started:
        process.stop()


async def _until_routing_is_loaded(stub: DispatcherStub, token: str) -> None:
    """An empty event is refused as INVALID_ARGUMENT once routing is loaded, UNAVAILABLE before."""
    deadline = time.monotonic() + 15
    while True:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PublishEvent(pb.PublishEventRequest(event=pb.Event()), metadata=auth(token))
        if refused.value.code() != grpc.StatusCode.UNAVAILABLE:
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return
        assert time.monotonic() < deadline, "the replica never loaded its routing table"
        await asyncio.sleep(0.05)


async def _publish(stub: DispatcherStub, token: str, ids: list[str]) -> list[pb.PublishResult]:
    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        for start in range(0, len(ids), BATCH):
            yield pb.PublishEventsRequest(
                events=[
                    pb.Event(message_id=message_id, message_type=CLAIM_CREATED, details=DETAILS)
                    for message_id in ids[start : start + BATCH]
                ]
            )

    stream = stub.PublishEvents(requests(), metadata=auth(token))
    return [result async for response in stream for result in response.results]


async def _all_deliveries(stub: DispatcherStub, token: str) -> list[pb.Delivery]:
    found: list[pb.Delivery] = []
    page_token = ""
    while True:
        page = await stub.ListDeliveries(
            pb.ListDeliveriesRequest(page_size=1000, page_token=page_token), metadata=auth(token)
        )
        found.extend(page.deliveries)
        if not page.next_page_token:
            return found
        page_token = page.next_page_token


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_two_replicas_on_one_database_deliver_each_event_exactly_once(
    stub: Stub,
    receiver: Receiver,
    tokens: Tokens,
    replicas: list[DispatcherProcess],
) -> None:
    await stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(
            subscription=sub_pb.Subscription(
                url=receiver.url("/replicas"), message_types=[CLAIM_CREATED]
            )
        ),
        metadata=auth(tokens.acme),
    )
    for replica in replicas:
        replica.spawn()
    ports = await asyncio.gather(*(replica.listening_port() for replica in replicas))
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        stubs = [DispatcherStub(channel) for channel in channels]
        await asyncio.gather(*(_until_routing_is_loaded(s, tokens.acme_publisher) for s in stubs))
        listing = pb.ListSigningKeysRequest()
        keys = await asyncio.gather(
            *(s.ListSigningKeys(listing, metadata=auth(tokens.acme)) for s in stubs)
        )
        pem_of = {k.key_id: k.public_key_pem for listed in keys for k in listed.keys}
        key_ids = [{k.key_id for k in listed.keys} for listed in keys]
        assert not key_ids[0] & key_ids[1], "the replicas must sign with keys of their own"

        ids = [f"replica-{n}" for n in range(EVENTS)]
        # Both streams at once, half of the events through each replica.
        halves = [ids[0::2], ids[1::2]]
        published = await asyncio.wait_for(
            asyncio.gather(
                *(
                    _publish(s, tokens.acme_publisher, half)
                    for s, half in zip(stubs, halves, strict=True)
                )
            ),
            30,
        )
        for results in published:
            assert {(r.outcome, r.deliveries) for r in results} == {
                (pb.PublishResult.OUTCOME_ACCEPTED, 1)
            }
        assert sorted(r.message_id for results in published for r in results) == sorted(ids)

        deadline = time.monotonic() + 60
        while True:
            deliveries = await _all_deliveries(stubs[0], tokens.acme_deliveries)
            done = [d for d in deliveries if d.state == pb.DELIVERY_STATE_SUCCEEDED]
            if len(done) == EVENTS:
                break
            assert time.monotonic() < deadline, f"{EVENTS - len(done)} deliveries not succeeded"
            await asyncio.sleep(0.2)
        # Anything sent twice would have arrived by now.
        await asyncio.sleep(0.5)

        arrived = Counter(r.headers["webhook-id"] for r in receiver.requests)
        assert set(arrived) == set(ids)
        assert {m: n for m, n in arrived.items() if n != 1} == {}
        assert len(receiver.requests) == EVENTS

        senders = Counter(
            0 if r.headers["webhook-key-id"] in key_ids[0] else 1 for r in receiver.requests
        )
        assert all(r.headers["webhook-key-id"] in pem_of for r in receiver.requests)
        assert senders[0] > 0, f"replica a delivered nothing: {senders}"
        assert senders[1] > 0, f"replica b delivered nothing: {senders}"
        for request in receiver.requests:
            webhook = verify_webhook(request.body, pem_of[request.headers["webhook-key-id"]])
            assert webhook.message_id == request.headers["webhook-id"]

        assert sorted(d.message_id for d in deliveries) == sorted(ids)
        assert {d.attempt_count for d in deliveries} == {1}
        details = await asyncio.gather(
            *(
                stubs[n % 2].GetDelivery(
                    pb.GetDeliveryRequest(id=d.id), metadata=auth(tokens.acme_deliveries)
                )
                for n, d in enumerate(deliveries)
            )
        )
        attempts = {g.delivery.message_id: list(g.delivery.attempts) for g in details}
        assert {m: [(a.number, a.status_code) for a in got] for m, got in attempts.items()} == {
            m: [(1, 200)] for m in ids
        }
    finally:
        for channel in channels:
            await channel.close(None)
