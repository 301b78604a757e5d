"""A subscription that keeps failing is disabled; its neighbours on the same receiver are not."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, publish, routed
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

CLAIM_CREATED = "event.claim.created.v1"
ACCEPTED = pb.PublishResult.OUTCOME_ACCEPTED
DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)
# Retries come 2.4 s to 3.6 s after a failure (20 % jitter): long enough for the disable
# to reach the routing table before any retry of the failing subscription is due.
RETRY_SCHEDULE = "0s,3s,3s,3s,3s"


@pytest.fixture
async def disabling_dispatcher(
    dispatcher_settings: DispatcherSettings,
) -> AsyncIterator[RunningDispatcher]:
    settings = dispatcher_settings.model_copy(
        update={
            "disable_after_failures": 3,
            "disable_after_seconds": 0,
            "retry_schedule": RETRY_SCHEDULE,
        }
    )
    running = await create_dispatcher(settings)
    await asyncio.wait_for(running.follower.ready.wait(), 10)
    yield running
    await running.stop(1)


@pytest.fixture
async def disabling_stub(
    disabling_dispatcher: RunningDispatcher,
) -> AsyncIterator[DispatcherStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{disabling_dispatcher.port}") as channel:
        yield DispatcherStub(channel)


async def _subscribe(stub: Stub, token: str, url: str) -> sub_pb.Subscription:
    response = await stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(
            subscription=sub_pb.Subscription(url=url, message_types=[CLAIM_CREATED])
        ),
        metadata=auth(token),
    )
    return response.subscription


async def _publish(stub: DispatcherStub, token: str, ids: Sequence[str]) -> list[pb.PublishResult]:
    events = [pb.Event(message_id=i, message_type=CLAIM_CREATED, details=DETAILS) for i in ids]
    [results] = await publish(stub, token, events)
    return results


async def _deliveries_to(
    stub: DispatcherStub, token: str, subscription_id: str
) -> list[pb.Delivery]:
    listed = await stub.ListDeliveries(
        pb.ListDeliveriesRequest(subscription_id=subscription_id, page_size=1000),
        metadata=auth(token),
    )
    assert not listed.next_page_token
    return list(listed.deliveries)


async def _until(
    stub: DispatcherStub,
    token: str,
    subscription_id: str,
    done: str,
    check: Callable[[list[pb.Delivery]], bool],
    *,
    within: float = 15,
) -> list[pb.Delivery]:
    """Polls the subscription's deliveries until `check(deliveries)` holds; `done` names it."""
    deadline = time.monotonic() + within
    while True:
        deliveries = await _deliveries_to(stub, token, subscription_id)
        if check(deliveries):
            return deliveries
        assert time.monotonic() < deadline, f"not {done}: {deliveries}"
        await asyncio.sleep(0.05)


async def _subscription(stub: Stub, token: str, subscription_id: str) -> sub_pb.Subscription:
    got = await stub.GetSubscription(
        sub_pb.GetSubscriptionRequest(id=subscription_id), metadata=auth(token)
    )
    return got.subscription


def _webhook_ids(receiver: Receiver, path: str) -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.on(path)]


async def test_a_subscription_failing_three_times_in_a_row_is_disabled_and_its_neighbour_is_not(
    stub: Stub,
    disabling_dispatcher: RunningDispatcher,
    disabling_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    receiver.script("/failing", 500)
    failing = await _subscribe(stub, tokens.acme, receiver.url("/failing"))
    healthy = await _subscribe(stub, tokens.acme, receiver.url("/healthy"))
    await routed(disabling_dispatcher, "acme", CLAIM_CREATED, 2)
    reader = tokens.acme_deliveries

    # Two failures: below the threshold, so the subscription stays enabled.
    first = await _publish(disabling_stub, tokens.acme_publisher, ["d-1", "d-2"])
    assert [(r.outcome, r.deliveries) for r in first] == [(ACCEPTED, 2)] * 2
    retrying = await _until(
        disabling_stub,
        reader,
        failing.id,
        "two failed first attempts recorded",
        lambda ds: (
            len(ds) == 2
            and all(d.state == pb.DELIVERY_STATE_RETRYING and d.attempt_count == 1 for d in ds)
        ),
    )
    assert {d.message_id for d in retrying} == {"d-1", "d-2"}
    # A disable follows the recording of the failures; give it time to show, were it due.
    await asyncio.sleep(0.3)
    assert (await _subscription(stub, tokens.acme, failing.id)).enabled is True
    assert sorted(_webhook_ids(receiver, "/failing")) == ["d-1", "d-2"]

    # The third failure in a row disables it.
    third = await _publish(disabling_stub, tokens.acme_publisher, ["d-3"])
    assert [(r.outcome, r.deliveries) for r in third] == [(ACCEPTED, 2)]
    deadline = time.monotonic() + 10
    while (current := await _subscription(stub, tokens.acme, failing.id)).enabled:
        assert time.monotonic() < deadline, "the failing subscription was never disabled"
        await asyncio.sleep(0.05)
    assert "3 failed attempts in a row" in current.disabled_reason
    assert (await _subscription(stub, tokens.acme, healthy.id)).enabled is True
    await routed(disabling_dispatcher, "acme", CLAIM_CREATED, 1)
    assert disabling_dispatcher.follower.routes_for("acme", CLAIM_CREATED)[0].subscription_id == (
        healthy.id
    )
    posted_to_failing = _webhook_ids(receiver, "/failing")
    assert sorted(posted_to_failing) == ["d-1", "d-2", "d-3"]

    # New events go to the healthy subscription only.
    later = await _publish(disabling_stub, tokens.acme_publisher, ["d-4", "d-5"])
    assert [(r.outcome, r.deliveries) for r in later] == [(ACCEPTED, 1)] * 2
    await receiver.wait_for(5, path="/healthy", within=10)

    # The retries of the failing subscription's deliveries die without a request.
    dead = await _until(
        disabling_stub,
        reader,
        failing.id,
        "every delivery to the disabled subscription dead",
        lambda ds: len(ds) == 3 and all(d.state == pb.DELIVERY_STATE_DEAD for d in ds),
    )
    for delivery in dead:
        got = await disabling_stub.GetDelivery(
            pb.GetDeliveryRequest(id=delivery.id), metadata=auth(reader)
        )
        attempts = [(a.number, a.status_code, a.error) for a in got.delivery.attempts]
        assert attempts == [(1, 500, ""), (2, 0, "subscription disabled")], delivery.message_id

    succeeded = await _until(
        disabling_stub,
        reader,
        healthy.id,
        "every delivery to the healthy subscription succeeded",
        lambda ds: len(ds) == 5 and all(d.state == pb.DELIVERY_STATE_SUCCEEDED for d in ds),
    )
    assert {d.attempt_count for d in succeeded} == {1}
    await asyncio.sleep(0.3)
    assert sorted(_webhook_ids(receiver, "/healthy")) == ["d-1", "d-2", "d-3", "d-4", "d-5"]
    assert _webhook_ids(receiver, "/failing") == posted_to_failing


async def test_a_subscription_enabled_again_starts_a_new_run_of_failures(
    stub: Stub,
    disabling_dispatcher: RunningDispatcher,
    disabling_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    receiver.script("/flaky", 500)
    flaky = await _subscribe(stub, tokens.acme, receiver.url("/flaky"))
    await routed(disabling_dispatcher, "acme", CLAIM_CREATED, 1)
    await _publish(disabling_stub, tokens.acme_publisher, ["e-1", "e-2", "e-3"])
    deadline = time.monotonic() + 10
    while (await _subscription(stub, tokens.acme, flaky.id)).enabled:
        assert time.monotonic() < deadline, "the failing subscription was never disabled"
        await asyncio.sleep(0.05)

    # Its owner fixes the endpoint halfway and turns the subscription back on.
    current = await _subscription(stub, tokens.acme, flaky.id)
    await stub.UpdateSubscription(
        sub_pb.UpdateSubscriptionRequest(
            subscription=sub_pb.Subscription(id=flaky.id, enabled=True, etag=current.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
        metadata=auth(tokens.acme),
    )
    await routed(disabling_dispatcher, "acme", CLAIM_CREATED, 1)
    await _publish(disabling_stub, tokens.acme_publisher, ["e-4", "e-5"])
    await receiver.wait_for(5, path="/flaky", within=10)
    await _until(
        disabling_stub,
        tokens.acme_deliveries,
        flaky.id,
        "the two new failures recorded",
        lambda ds: sum(d.message_id in ("e-4", "e-5") and d.attempt_count == 1 for d in ds) == 2,
    )
    # Two failures since it was enabled again: under the threshold of three.
    await asyncio.sleep(0.3)
    assert (await _subscription(stub, tokens.acme, flaky.id)).enabled is True
