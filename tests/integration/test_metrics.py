"""Both services' `/metrics` endpoints, scraped over HTTP while real work goes through them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from dispatcher_service.server import RunningDispatcher
from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.integration.conftest import Samples, auth, eventually, publish, routed, scrape, value
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub


def grpc_handled(samples: Samples, method: str, code: str) -> float:
    """`grpc_server_handled_total` of one method and code, whatever its service and type."""
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "grpc_server_handled_total"
        and ("grpc_method", method) in labels
        and ("grpc_code", code) in labels
    )


async def test_dispatcher_counters_move_with_events_deliveries_and_calls(
    subscription_server: RunningServer,
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    before = await scrape(dispatcher.metrics_port)
    assert value(before, "webhooks_database_up") == 1
    receiver.script("/failing", 500)
    receiver.script("/gone", 410)
    await subscribe(stub, tokens.acme, receiver.url("/ok"), CLAIM_CREATED)
    await subscribe(stub, tokens.acme, receiver.url("/failing"), CLAIM_CREATED)
    await subscribe(stub, tokens.acme, receiver.url("/gone"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 3)

    results = await publish(
        dispatcher_stub,
        tokens.acme_publisher,
        [claim_event("m-1"), claim_event("m-2"), claim_event("m-1")],
        [claim_event("m-3", amount="not a number")],
    )
    assert [r.outcome for batch in results for r in batch] == [
        pb.PublishResult.OUTCOME_ACCEPTED,
        pb.PublishResult.OUTCOME_ACCEPTED,
        pb.PublishResult.OUTCOME_DUPLICATE,
        pb.PublishResult.OUTCOME_REJECTED,
    ]
    with pytest.raises(grpc.aio.AioRpcError):
        await dispatcher_stub.PublishEvent(
            pb.PublishEventRequest(event=claim_event("m-4")), metadata=auth("no-such-token")
        )
    # Two events to /ok; four attempts each to /failing (the whole schedule); one to /gone
    # each, where the first 410 disables the subscription.
    await receiver.wait_for(2, path="/ok")
    await receiver.wait_for(8, path="/failing")

    async def all_recorded() -> bool:
        now = await scrape(dispatcher.metrics_port)
        return (
            value(now, "webhooks_deliveries_total", outcome="dead")
            - value(before, "webhooks_deliveries_total", outcome="dead")
            == 2 + 2
            and value(now, "webhooks_deliveries_total", outcome="succeeded")
            - value(before, "webhooks_deliveries_total", outcome="succeeded")
            == 2
        )

    await eventually(all_recorded)
    after = await scrape(dispatcher.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("webhooks_events_total", outcome="accepted") == 2
    assert moved("webhooks_events_total", outcome="duplicate") == 1
    assert moved("webhooks_events_total", outcome="rejected") == 1
    # /failing: three attempts left the delivery retrying, the fourth made it dead; a 410
    # from /gone makes its delivery dead at once.
    assert moved("webhooks_deliveries_total", outcome="retrying") == 2 * 3
    assert moved("webhooks_delivery_attempt_seconds_count", status_class="2xx") == 2
    assert moved("webhooks_delivery_attempt_seconds_count", status_class="5xx") == 2 * 4
    assert moved("webhooks_delivery_attempt_seconds_count", status_class="4xx") == 2
    # Once, or twice when the second 410 came back after the first disable was done but
    # before the watch told this dispatcher about it.
    assert moved("webhooks_subscriptions_disabled_total", reason="gone") in (1, 2)
    assert (
        grpc_handled(after, "PublishEvents", "OK") - grpc_handled(before, "PublishEvents", "OK")
        == 1
    )
    assert (
        grpc_handled(after, "PublishEvent", "UNAUTHENTICATED")
        - grpc_handled(before, "PublishEvent", "UNAUTHENTICATED")
        == 1
    )
    latency_count = sum(
        count
        for (name, labels), count in after.items()
        if name == "grpc_server_handling_seconds_count"
        and ("grpc_method", "PublishEvents") in labels
    )
    assert latency_count >= 1
    # Nothing is left waiting: every delivery succeeded or died.
    assert value(after, "webhooks_delivery_queue_depth", state="pending") == 0
    assert value(after, "webhooks_delivery_queue_depth", state="retrying") == 0
    assert value(after, "webhooks_delivery_oldest_due_age_seconds") == 0


async def test_queue_depth_and_age_show_deliveries_that_wait(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    # The endpoint never answers: each attempt holds its delivery until the attempt times
    # out, so the deliveries stay queued for a while, due and unfinished.
    receiver.script("/hangs", "hang")
    await subscribe(stub, tokens.acme, receiver.url("/hangs"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await publish(
        dispatcher_stub, tokens.acme_publisher, [claim_event(f"wait-{n}") for n in range(3)]
    )
    await receiver.wait_for(3, path="/hangs")
    samples = await scrape(dispatcher.metrics_port)
    waiting = value(samples, "webhooks_delivery_queue_depth", state="pending") + value(
        samples, "webhooks_delivery_queue_depth", state="retrying"
    )
    assert waiting == 3
    assert value(samples, "webhooks_delivery_oldest_due_age_seconds") > 0


async def test_subscription_service_counts_calls_and_subscriptions(
    subscription_server: RunningServer,
    stub: Stub,
    tokens: Tokens,
    receiver: Receiver,
) -> None:
    before = await scrape(subscription_server.metrics_port)
    await subscribe(stub, tokens.acme, receiver.url("/a"), CLAIM_CREATED)
    await subscribe(stub, tokens.acme, receiver.url("/b"), CLAIM_CREATED, enabled=False)
    with pytest.raises(grpc.aio.AioRpcError):
        await subscribe(stub, tokens.acme, "not a url", CLAIM_CREATED)
    after = await scrape(subscription_server.metrics_port)
    assert (
        grpc_handled(after, "CreateSubscription", "OK")
        - grpc_handled(before, "CreateSubscription", "OK")
        == 2
    )
    assert (
        grpc_handled(after, "CreateSubscription", "INVALID_ARGUMENT")
        - grpc_handled(before, "CreateSubscription", "INVALID_ARGUMENT")
        == 1
    )
    assert value(after, "webhooks_subscriptions", enabled="true") == 1
    assert value(after, "webhooks_subscriptions", enabled="false") == 1
    assert value(after, "webhooks_database_up") == 1
