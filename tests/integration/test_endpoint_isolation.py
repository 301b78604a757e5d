"""An endpoint that never answers holds only its own slots: the others are served at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, eventually, publish, routed
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

EVENTS = 20
PER_ENDPOINT = 2


@pytest.fixture
def dispatcher_settings(dispatcher_settings: DispatcherSettings) -> DispatcherSettings:
    return dispatcher_settings.model_copy(
        update={
            "max_concurrent_per_endpoint": PER_ENDPOINT,
            "max_concurrent_deliveries": 2 * PER_ENDPOINT,
            "attempt_timeout_seconds": 4.0,
            "retry_schedule": "0s,30s",
        }
    )


@pytest.fixture
async def healthy() -> AsyncIterator[Receiver]:
    """A second receiver: another port, so another endpoint."""
    running = Receiver()
    await running.start()
    yield running
    await running.stop()


async def test_a_hanging_endpoint_does_not_hold_up_the_others(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    healthy: Receiver,
    tokens: Tokens,
) -> None:
    receiver.script("/hangs", "hang")
    hanging = await subscribe(stub, tokens.acme, receiver.url("/hangs"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    # The hanging endpoint's deliveries are due first, so they are claimed first.
    await publish(
        dispatcher_stub, tokens.acme_publisher, [claim_event(f"h-{n}") for n in range(EVENTS)]
    )
    await receiver.wait_for(PER_ENDPOINT, path="/hangs")
    await subscribe(stub, tokens.acme, healthy.url("/ok"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 2)
    await publish(
        dispatcher_stub, tokens.acme_publisher, [claim_event(f"ok-{n}") for n in range(EVENTS)]
    )

    await healthy.wait_for(EVENTS, path="/ok", within=30)
    # Every healthy delivery arrived while the first hanging attempts were still open:
    # nothing waited for their timeout.
    page = await dispatcher_stub.ListDeliveries(
        pb.ListDeliveriesRequest(subscription_id=hanging.id, page_size=100),
        metadata=auth(tokens.acme_deliveries),
    )
    assert len(page.deliveries) == 2 * EVENTS  # the later events are routed there too
    assert all(d.attempt_count == 0 for d in page.deliveries)
    # The hanging endpoint never had more than its own slots in use, and the deliveries
    # that found them taken were not charged an attempt for it.
    assert len(receiver.on("/hangs")) == PER_ENDPOINT


async def test_new_events_for_other_endpoints_need_no_poll_while_one_is_full(
    stub: Stub,
    dispatcher_settings: DispatcherSettings,
    receiver: Receiver,
    healthy: Receiver,
    tokens: Tokens,
) -> None:
    # While a full endpoint's backlog waits, claims look only at what became due since
    # the last look through everything, and at an endpoint with room again through its
    # subscriptions' own index, not at that backlog again; what is published meanwhile
    # is still found at once, long before the next poll.
    dispatcher = await create_dispatcher(
        dispatcher_settings.model_copy(
            update={"poll_interval_seconds": 60.0, "max_concurrent_deliveries": 64}
        )
    )
    try:
        await asyncio.wait_for(dispatcher.follower.ready.wait(), 10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}") as channel:
            publisher = DispatcherStub(channel)
            receiver.script("/hangs", "hang")
            await subscribe(stub, tokens.acme, receiver.url("/hangs"), CLAIM_CREATED)
            await routed(dispatcher, "acme", CLAIM_CREATED, 1)
            slow = [claim_event(f"h-{n}") for n in range(EVENTS)]
            await publish(publisher, tokens.acme_publisher, slow)
            await receiver.wait_for(PER_ENDPOINT, path="/hangs")
            ok = await subscribe(stub, tokens.acme, healthy.url("/ok"), CLAIM_CREATED)
            await routed(dispatcher, "acme", CLAIM_CREATED, 2)
            # Ten at a time fill the healthy endpoint's slots and queue too, so its own
            # subscription is skipped and claimed again as it drains.
            for round_number in range(1, 4):
                fresh = [claim_event(f"ok-{round_number}-{n}") for n in range(10)]
                await publish(publisher, tokens.acme_publisher, fresh)
                await healthy.wait_for(10 * round_number, path="/ok", within=2.5)

            # A redelivery is new work too, of no subscription in particular; it waits
            # until the first delivery is recorded (a delivery in flight is left alone).
            async def redelivered() -> bool:
                try:
                    await publisher.RedeliverEvent(
                        pb.RedeliverEventRequest(message_id="ok-1-0", subscription_id=ok.id),
                        metadata=auth(tokens.acme_deliveries),
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return False
                return True

            await eventually(redelivered, within=5)
            await healthy.wait_for(31, path="/ok", within=2.5)
        assert len(receiver.on("/hangs")) == PER_ENDPOINT
    finally:
        await dispatcher.stop(0)
