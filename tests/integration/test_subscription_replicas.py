"""Replicas of the subscription service over one database: every watch hears every change,
whichever replica made it, in the one order of the change log, and resumes after a
position it was sent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from subscription_service.change_log import ChangeLog
from subscription_service.database import create_engine
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth
from webhooks.v1 import subscription_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

Watch = pb.WatchSubscriptionsResponse
WatchCall = grpc.aio.UnaryStreamCall[pb.WatchSubscriptionsRequest, Watch]
WAIT_SECONDS = 15.0
# What a test compares of a change: its position, type, subscription and version.
Seen = tuple[int, int, str, str]


class Replica:
    """A running server and a stub to it."""

    def __init__(self, server: RunningServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.stub = Stub(channel)

    def watch(self, *, resume_after: int = 0, token: str = Tokens.platform) -> WatchCall:
        request = pb.WatchSubscriptionsRequest(resume_after=resume_after)
        return self.stub.WatchSubscriptions(request, metadata=auth(token))

    async def create(self, tenant: str = "acme") -> pb.Subscription:
        response = await self.stub.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    tenant=tenant,
                    url=f"https://{tenant}.example.com/hooks",
                    message_types=["event.claim.*"],
                )
            ),
            metadata=auth(Tokens.operator),
        )
        return response.subscription

    async def update(self, subscription: pb.Subscription, description: str) -> pb.Subscription:
        response = await self.stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(id=subscription.id, description=description),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=auth(Tokens.operator),
        )
        return response.subscription

    async def delete(self, subscription: pb.Subscription) -> None:
        await self.stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(id=subscription.id), metadata=auth(Tokens.operator)
        )


@pytest.fixture
def replica_settings(subscription_settings: SubscriptionSettings) -> SubscriptionSettings:
    return subscription_settings.model_copy(update={"change_poll_seconds": 0.05})


@pytest.fixture
async def replicas(
    replica_settings: SubscriptionSettings,
) -> AsyncIterator[Callable[[], Sequence[Replica]]]:
    """Two replicas (A and B) over the test's database, on ports of their own."""
    servers = [await create_server(replica_settings) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    yield lambda: [Replica(s, c) for s, c in zip(servers, channels, strict=True)]
    for channel in channels:
        await channel.close(None)
    for server in servers:
        await server.stop(0)


async def read(call: WatchCall, count: int) -> list[Watch]:
    async with asyncio.timeout(WAIT_SECONDS):
        return [await next_of(call) for _ in range(count)]


async def next_of(call: WatchCall) -> Watch:
    message = await call.read()
    assert isinstance(message, Watch), "the watch ended"
    return message


async def until_snapshot_complete(call: WatchCall) -> tuple[list[Watch], int]:
    """The snapshot a watch starts with, and the position it reflects."""
    snapshot = []
    async with asyncio.timeout(WAIT_SECONDS):
        while (message := await next_of(call)).change_type == Watch.CHANGE_TYPE_SNAPSHOT:
            snapshot.append(message)
    assert message.change_type == Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE
    return snapshot, message.position


def seen(messages: Sequence[Watch]) -> list[Seen]:
    return [(m.position, m.change_type, m.subscription.id, m.subscription.etag) for m in messages]


def assert_increasing(positions: Sequence[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(positions)), positions


async def test_a_watcher_on_one_replica_hears_the_changes_made_through_another(
    replicas: Callable[[], Sequence[Replica]],
) -> None:
    a, b = replicas()
    earlier = await a.create()
    watch = b.watch()
    snapshot, start = await until_snapshot_complete(watch)
    assert [m.subscription.id for m in snapshot] == [earlier.id]
    assert start > 0

    created = await a.create()
    updated = await a.update(created, "renamed")
    await a.delete(updated)

    changes = await read(watch, 3)
    watch.cancel()
    assert [(m.change_type, m.subscription.id, m.subscription.etag) for m in changes] == [
        (Watch.CHANGE_TYPE_CREATED, created.id, created.etag),
        (Watch.CHANGE_TYPE_UPDATED, created.id, updated.etag),
        (Watch.CHANGE_TYPE_DELETED, created.id, updated.etag),
    ]
    assert_increasing([start] + [m.position for m in changes])


async def test_writes_through_both_replicas_reach_the_watchers_of_both_in_one_order(
    replicas: Callable[[], Sequence[Replica]],
) -> None:
    a, b = replicas()
    watches = [a.watch(), b.watch()]
    for watch in watches:
        await until_snapshot_complete(watch)

    made = []
    for i in range(6):
        writer = (a, b)[i % 2]
        made.append(await writer.create())
        await writer.update(made[-1], f"by the other replica {i}")
    await b.delete(made[0])
    await a.delete(made[1])

    heard = [seen(await read(watch, 14)) for watch in watches]
    for watch in watches:
        watch.cancel()
    assert heard[0] == heard[1]
    assert_increasing([position for position, *_ in heard[0]])
    assert [kind for _, kind, _, _ in heard[0][-2:]] == [Watch.CHANGE_TYPE_DELETED] * 2


async def test_concurrent_writers_through_two_replicas_never_make_a_watcher_skip_a_change(
    replicas: Callable[[], Sequence[Replica]],
) -> None:
    """Positions are taken and committed in one order (see change_log): a feed reading
    after the last position it saw never misses a change that committed late."""
    a, b = replicas()
    watches = [a.watch(), b.watch()]
    for watch in watches:
        await until_snapshot_complete(watch)
    writers, each = 10, 20

    async def write(writer: int) -> None:
        for i in range(each):
            await (a, b)[(writer + i) % 2].create(tenant=f"tenant{writer}")

    readers = [asyncio.create_task(read(watch, writers * each)) for watch in watches]
    await asyncio.gather(*(write(writer) for writer in range(writers)))
    heard = [seen(await reader) for reader in readers]
    for watch in watches:
        watch.cancel()

    assert heard[0] == heard[1]
    assert_increasing([position for position, *_ in heard[0]])
    assert len({subscription_id for _, _, subscription_id, _ in heard[0]}) == writers * each


async def test_a_watch_resumes_on_another_replica_with_exactly_the_missed_changes(
    replicas: Callable[[], Sequence[Replica]],
) -> None:
    a, b = replicas()
    kept = await a.create()
    first = a.watch()
    _, start = await until_snapshot_complete(first)
    created = await a.create()
    [applied] = await read(first, 1)
    first.cancel()

    # Missed while disconnected: through both replicas, and another tenant's.
    updated = await b.update(created, "while away")
    other = await a.create(tenant="globex")
    await b.delete(kept)

    resumed = b.watch(resume_after=applied.position)
    head = await read(resumed, 4)
    later = await a.create()
    [tail] = await read(resumed, 1)
    resumed.cancel()
    assert applied.position > start
    assert head[0].change_type == Watch.CHANGE_TYPE_RESUMED
    assert head[0].position == applied.position
    assert [(m.change_type, m.subscription.id, m.subscription.etag) for m in head[1:]] == [
        (Watch.CHANGE_TYPE_UPDATED, created.id, updated.etag),
        (Watch.CHANGE_TYPE_CREATED, other.id, other.etag),
        (Watch.CHANGE_TYPE_DELETED, kept.id, kept.etag),
    ]
    assert (tail.change_type, tail.subscription.id) == (Watch.CHANGE_TYPE_CREATED, later.id)
    assert_increasing([m.position for m in [*head, tail]])


async def test_a_tenant_watch_resumes_with_its_own_tenant_s_changes_only(
    replicas: Callable[[], Sequence[Replica]],
) -> None:
    a, b = replicas()
    await b.create(tenant="globex")
    first = a.watch(token=Tokens.acme)
    _, start = await until_snapshot_complete(first)
    first.cancel()
    await a.create(tenant="globex")
    mine = await b.create()

    resumed = b.watch(resume_after=start, token=Tokens.acme)
    head = await read(resumed, 2)
    resumed.cancel()
    assert [m.change_type for m in head] == [Watch.CHANGE_TYPE_RESUMED, Watch.CHANGE_TYPE_CREATED]
    assert head[1].subscription.id == mine.id
    assert not head[1].subscription.secret


async def test_a_position_beyond_the_newest_change_gets_a_snapshot(
    replicas: Callable[[], Sequence[Replica]],
) -> None:
    a, _ = replicas()
    created = await a.create()
    watch = a.watch(resume_after=1_000_000)
    snapshot, position = await until_snapshot_complete(watch)
    watch.cancel()
    assert [m.subscription.id for m in snapshot] == [created.id]
    assert 0 < position < 1_000_000


async def test_a_position_the_log_has_pruned_gets_a_snapshot(
    replicas: Callable[[], Sequence[Replica]], database_url: str
) -> None:
    a, b = replicas()
    watch = a.watch()
    _, start = await until_snapshot_complete(watch)
    watch.cancel()
    made = [await b.create() for _ in range(3)]
    engine = create_engine(database_url)
    try:
        # Pruned up to the newest change, as after a week of retention.
        assert await asyncio.to_thread(_prune_everything, ChangeLog(engine)) == 2
    finally:
        engine.dispose()

    resumed = a.watch(resume_after=start)
    snapshot, position = await until_snapshot_complete(resumed)
    resumed.cancel()
    assert [m.subscription.id for m in snapshot] == [s.id for s in made]
    assert position > start
    again = a.watch(resume_after=position)
    [marker] = await read(again, 1)
    again.cancel()
    assert (marker.change_type, marker.position) == (Watch.CHANGE_TYPE_RESUMED, position)


def _prune_everything(changes: ChangeLog) -> int:
    return changes.prune(before=datetime.now(UTC) + timedelta(days=1))


async def test_a_negative_position_is_invalid(replicas: Callable[[], Sequence[Replica]]) -> None:
    a, _ = replicas()
    watch = a.watch(resume_after=-1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await next_of(watch)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
