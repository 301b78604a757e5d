"""An endpoint that never answers holds only its own slots: the others are served at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, publish, routed
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
