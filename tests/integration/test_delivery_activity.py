"""GetDeliveryActivity end to end: both services on loopback, a real receiver; the last
minute of attempts by second and outcome, each token seeing its own tenant's, and the
queue as it waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, eventually, publish, routed
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

NOTE = "event.note.created.v1"  # valid with empty details
Totals = tuple[int, int, int]


def note(message_id: str) -> pb.Event:
    return pb.Event(message_id=message_id, message_type=NOTE, details="{}")


async def subscribe(stub: Stub, token: str, url: str) -> None:
    await stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(
            subscription=sub_pb.Subscription(url=url, message_types=[NOTE])
        ),
        metadata=auth(token),
    )


async def activity(
    dispatcher_stub: DispatcherStub, token: str, tenant: str = ""
) -> pb.GetDeliveryActivityResponse:
    return await dispatcher_stub.GetDeliveryActivity(
        pb.GetDeliveryActivityRequest(tenant=tenant), metadata=auth(token), timeout=5
    )


def totals(answer: pb.GetDeliveryActivityResponse) -> Totals:
    """Succeeded, retrying and dead, over the whole minute."""
    return (
        sum(second.succeeded for second in answer.seconds),
        sum(second.retrying for second in answer.seconds),
        sum(second.dead for second in answer.seconds),
    )


async def totals_become(
    dispatcher_stub: DispatcherStub, token: str, expected: Totals, tenant: str = ""
) -> pb.GetDeliveryActivityResponse:
    """Waits until the activity `token` sees adds up to `expected`; the last answer."""
    last: list[pb.GetDeliveryActivityResponse] = []

    async def reached() -> bool:
        last.append(await activity(dispatcher_stub, token, tenant))
        return totals(last[-1]) == expected

    await eventually(reached)
    return last[-1]


def totals_of(second: pb.ActivitySecond) -> int:
    return second.succeeded + second.retrying + second.dead


def second_starts(answer: pb.GetDeliveryActivityResponse) -> list[datetime]:
    return [second.start_time.ToDatetime(tzinfo=UTC) for second in answer.seconds]


async def test_deliveries_show_as_succeeded_and_a_failing_endpoint_as_retrying_then_dead(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    began = datetime.now(UTC)
    receiver.script("/failing", 503)
    await subscribe(stub, tokens.acme, receiver.url("/ok"))
    await subscribe(stub, tokens.acme, receiver.url("/failing"))
    await routed(dispatcher, "acme", NOTE, 2)
    await publish(dispatcher_stub, tokens.acme_publisher, [note(f"m-{n}") for n in range(3)])

    # Four attempts each (the test schedule): three leave it retrying, the last dead.
    answer = await totals_become(dispatcher_stub, tokens.acme_deliveries, (3, 9, 3))
    await receiver.wait_for(3, path="/ok")
    starts = second_starts(answer)
    assert len(starts) == 60
    assert starts == [starts[0] + timedelta(seconds=n) for n in range(60)]
    assert starts[-1] <= datetime.now(UTC) < starts[-1] + timedelta(seconds=2)
    busy = [s for s, second in zip(starts, answer.seconds, strict=True) if totals_of(second)]
    assert busy
    assert min(busy) >= began.replace(microsecond=0)


async def test_a_tenant_token_sees_its_tenant_and_a_platform_token_any_or_all(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/acme"))
    await subscribe(stub, tokens.globex, receiver.url("/globex"))
    await routed(dispatcher, "acme", NOTE, 1)
    await routed(dispatcher, "globex", NOTE, 1)
    await publish(dispatcher_stub, tokens.acme_publisher, [note("a-1"), note("a-2")])
    await publish(dispatcher_stub, tokens.globex_publisher, [note("g-1")])
    await receiver.wait_for(3)

    await totals_become(dispatcher_stub, tokens.platform, (3, 0, 0))
    assert totals(await activity(dispatcher_stub, tokens.acme_deliveries)) == (2, 0, 0)
    assert totals(await activity(dispatcher_stub, tokens.acme_deliveries, "acme")) == (2, 0, 0)
    assert totals(await activity(dispatcher_stub, tokens.globex_deliveries)) == (1, 0, 0)
    assert totals(await activity(dispatcher_stub, tokens.platform, "globex")) == (1, 0, 0)
    assert totals(await activity(dispatcher_stub, tokens.platform, "initech")) == (0, 0, 0)


@pytest.mark.parametrize(
    ("who", "tenant", "code"),
    [
        ("acme_deliveries", "globex", grpc.StatusCode.PERMISSION_DENIED),
        ("acme_publisher", "", grpc.StatusCode.PERMISSION_DENIED),
        ("acme", "", grpc.StatusCode.PERMISSION_DENIED),
        ("operator", "", grpc.StatusCode.PERMISSION_DENIED),
        ("platform", "not a tenant!", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_refused_without_deliveries_read_or_for_another_tenant(
    dispatcher_stub: DispatcherStub, tokens: Tokens, who: str, tenant: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await activity(dispatcher_stub, getattr(tokens, who), tenant)
    assert refused.value.code() == code


async def test_without_a_token_it_is_unauthenticated(dispatcher_stub: DispatcherStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dispatcher_stub.GetDeliveryActivity(pb.GetDeliveryActivityRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_oldest_due_delivery_and_the_queue_depth_while_nothing_delivers(
    stub: Stub,
    dispatcher_settings: DispatcherSettings,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/waiting"))
    # Ingests without delivering: what it stores is due at once, and waits.
    ingesting = await create_dispatcher(dispatcher_settings.model_copy(update={"deliver": False}))
    try:
        await asyncio.wait_for(ingesting.follower.ready.wait(), 10)
        await routed(ingesting, "acme", NOTE, 1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingesting.port}") as channel:
            dispatcher_stub = DispatcherStub(channel)
            idle = await activity(dispatcher_stub, tokens.acme_deliveries)
            assert (idle.HasField("oldest_due_time"), idle.queue_depth) == (False, 0)
            before = datetime.now(UTC)
            await publish(dispatcher_stub, tokens.acme_publisher, [note("w-1"), note("w-2")])

            # The queue is read at most once a second per tenant: the idle answer may last.
            async def waiting() -> bool:
                answer = await activity(dispatcher_stub, tokens.acme_deliveries)
                return answer.queue_depth == 2 and answer.HasField("oldest_due_time")

            await eventually(waiting)
            answer = await activity(dispatcher_stub, tokens.platform)
            oldest = answer.oldest_due_time.ToDatetime(tzinfo=UTC)
            assert before - timedelta(seconds=1) <= oldest <= datetime.now(UTC)
            assert answer.queue_depth == 2
            assert totals(answer) == (0, 0, 0)
            other = await activity(dispatcher_stub, tokens.globex_deliveries)
            assert (other.HasField("oldest_due_time"), other.queue_depth) == (False, 0)
    finally:
        await ingesting.stop(0)
