"""The per-tenant publish rate limit on real servers: gRPC unary and stream, and HTTP.

A tenant over its limit is refused with a retry hint and nothing of the refused call is
stored or delivered; another tenant publishes meanwhile; after the hinted wait the first
publishes again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth, routed, scrape
from tests.integration.conftest import value as sample_value
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
RATE = 2.0  # events per second and tenant: a refill is slow next to a call
BURST = 4
GLOBEX_PUBLISHER = Tokens.globex_publisher
TIMEOUT = 5.0
Result = pb.PublishResult


@pytest.fixture
def backend() -> str:
    """SQLite only: the limit is applied before the store."""
    return "sqlite"


@pytest.fixture
def dispatcher_settings(dispatcher_settings: DispatcherSettings) -> DispatcherSettings:
    return dispatcher_settings.model_copy(
        update={"publish_rate_per_tenant": RATE, "publish_burst_per_tenant": BURST}
    )


@pytest.fixture
async def subscribed(
    stub: Stub, dispatcher: RunningDispatcher, receiver: Receiver, tokens: Tokens
) -> RunningDispatcher:
    for tenant, token in (("acme", tokens.acme), ("globex", tokens.globex)):
        await stub.CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=sub_pb.Subscription(
                    url=receiver.url(f"/{tenant}"), message_types=[NOTE]
                )
            ),
            metadata=auth(token),
            timeout=TIMEOUT,
        )
        await routed(dispatcher, tenant, NOTE, 1)
    return dispatcher


def event(message_id: str) -> pb.Event:
    return pb.Event(message_id=message_id, message_type=NOTE, details="{}")


async def publish_one(stub: DispatcherStub, token: str, message_id: str) -> pb.PublishResult:
    answer = await stub.PublishEvent(
        pb.PublishEventRequest(event=event(message_id)), metadata=auth(token), timeout=TIMEOUT
    )
    return answer.result


async def publish_many(stub: DispatcherStub, token: str, ids: Sequence[str]) -> list[Result]:
    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        yield pb.PublishEventsRequest(events=[event(i) for i in ids])

    call = stub.PublishEvents(requests(), metadata=auth(token), timeout=TIMEOUT)
    return [result async for response in call for result in response.results]


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo of a failed call, in seconds."""
    metadata: tuple[tuple[str, str | bytes], ...] = tuple(error.trailing_metadata() or ())  # type: ignore[arg-type]
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


async def stored(stub: DispatcherStub, token: str, message_id: str) -> int:
    page = await stub.ListDeliveries(
        pb.ListDeliveriesRequest(message_id=message_id), metadata=auth(token), timeout=TIMEOUT
    )
    return len(page.deliveries)


async def test_a_unary_publish_over_the_limit_is_resource_exhausted_with_retry_info(
    subscribed: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    acme, globex = tokens.acme_publisher, GLOBEX_PUBLISHER
    accepted = await publish_many(dispatcher_stub, acme, [f"a-{n}" for n in range(BURST)])
    assert {r.outcome for r in accepted} == {Result.OUTCOME_ACCEPTED}

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await publish_one(dispatcher_stub, acme, "a-refused")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in" in (refused.value.details() or "")
    delay = retry_delay(refused.value)
    assert delay is not None
    assert 0 < delay <= 1 / RATE
    samples = await scrape(subscribed.metrics_port)
    assert sample_value(samples, "webhooks_events_total", outcome="throttled") == 1

    # Another tenant is not slowed down: its whole burst goes through at once.
    others = await publish_many(dispatcher_stub, globex, [f"g-{n}" for n in range(BURST)])
    assert {r.outcome for r in others} == {Result.OUTCOME_ACCEPTED}

    await asyncio.sleep(delay)
    again = await publish_one(dispatcher_stub, acme, "a-after")
    assert again.outcome == Result.OUTCOME_ACCEPTED

    await receiver.wait_for(BURST + 1, path="/acme", within=10)
    await receiver.wait_for(BURST, path="/globex", within=10)
    received = {r.headers["webhook-id"] for r in receiver.on("/acme")}
    assert "a-refused" not in received
    assert await stored(dispatcher_stub, tokens.acme_deliveries, "a-refused") == 0
    assert await stored(dispatcher_stub, tokens.acme_deliveries, "a-after") == 1


async def test_a_stream_batch_over_the_limit_is_rejected_per_event_and_the_stream_goes_on(
    subscribed: RunningDispatcher, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    batches: asyncio.Queue[list[str] | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        while (ids := await batches.get()) is not None:
            yield pb.PublishEventsRequest(events=[event(i) for i in ids])

    call = dispatcher_stub.PublishEvents(
        requests(), metadata=auth(tokens.acme_publisher), timeout=TIMEOUT
    )
    answers = call.__aiter__()

    await batches.put([f"s-{n}" for n in range(BURST)])
    first = (await answers.__anext__()).results
    assert {r.outcome for r in first} == {Result.OUTCOME_ACCEPTED}

    # Valid events and an invalid one: the whole batch is refused for the rate, each
    # event saying so, and nothing of it is stored.
    refused_ids = ["s-x", "s-y", ""]
    await batches.put(refused_ids)
    second = (await answers.__anext__()).results
    assert [r.message_id for r in second] == refused_ids
    assert {r.outcome for r in second} == {Result.OUTCOME_REJECTED}
    assert {r.error.code for r in second} == {"RESOURCE_EXHAUSTED"}
    message = second[0].error.message
    assert "retry in" in message
    delay = float(message.rsplit("retry in ", 1)[1].split()[0])
    assert 0 < delay <= 2 / RATE

    # The same stream, after the hinted wait: the same ids are new, so none was stored.
    await asyncio.sleep(delay)
    await batches.put(["s-x", "s-y"])
    third = (await answers.__anext__()).results
    assert [(r.message_id, r.outcome) for r in third] == [
        ("s-x", Result.OUTCOME_ACCEPTED),
        ("s-y", Result.OUTCOME_ACCEPTED),
    ]
    await batches.put(None)
    assert [r async for r in answers] == []
    assert await call.code() == grpc.StatusCode.OK


async def test_http_over_the_limit_is_429_with_retry_after_and_other_tenants_go_on(
    subscribed: RunningDispatcher, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    base = f"http://127.0.0.1:{subscribed.http_port}/v1/events"

    async def post(
        session: aiohttp.ClientSession, token: str, message_id: str
    ) -> tuple[int, dict[str, object], str | None]:
        body = {
            "details": {"messageType": NOTE},
            "messageId": message_id,
            "timestamp": "2026-11-29T07:00:00.000Z",
        }
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(base, json=body, headers=headers) as response:
            return (
                response.status,
                await response.json(content_type=None),
                response.headers.get("Retry-After"),
            )

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        for n in range(BURST):
            status, _, _ = await post(session, tokens.acme_publisher, f"h-{n}")
            assert status == 202
        status, problem, retry_after = await post(session, tokens.acme_publisher, "h-refused")
        assert status == 429, problem
        assert problem["status"] == 429
        assert "retry in" in str(problem["detail"])
        assert retry_after is not None
        assert retry_after.isdigit()
        assert int(retry_after) >= 1

        for n in range(BURST):
            status, _, _ = await post(session, GLOBEX_PUBLISHER, f"hg-{n}")
            assert status == 202

        await asyncio.sleep(int(retry_after))
        status, accepted, _ = await post(session, tokens.acme_publisher, "h-refused")
        assert status == 202
        assert accepted["outcome"] == "accepted"  # not a duplicate: the refusal stored nothing
