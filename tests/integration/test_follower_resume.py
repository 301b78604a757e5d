"""The dispatcher's follower resumes its watch after the last change it applied, and falls
back to a snapshot when the subscription service cannot resume it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest

from dispatcher_service.subscription_follower import SubscriptionFollower
from subscription_service.change_log import ChangeLog
from subscription_service.database import create_engine
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.integration.test_subscription_follower import (
    CLAIM_CREATED,
    QUICK,
    create,
    delete,
    routed,
    snapshot_of,
    until,
    update,
)
from webhooks.v1 import subscription_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

Watch = pb.WatchSubscriptionsResponse
WAIT_SECONDS = 10.0


@pytest.fixture
async def follower_of(tokens: Tokens) -> AsyncIterator[Callable[[int], SubscriptionFollower]]:
    started: list[SubscriptionFollower] = []

    def start(port: int) -> SubscriptionFollower:
        follower = SubscriptionFollower(f"127.0.0.1:{port}", tokens.platform, backoff=QUICK)
        follower.start()
        started.append(follower)
        return follower

    yield start
    for follower in started:
        await follower.stop()


async def restarted_follower_case(
    settings: SubscriptionSettings,
    follower_of: Callable[[int], SubscriptionFollower],
    *,
    prune: bool,
) -> tuple[SubscriptionFollower, bool, RunningServer]:
    """Follows a service, changes things while it is down, restarts it on its port; whether
    the follower kept its table, and the restarted service (to stop)."""
    first = await create_server(settings)
    port = first.port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            kept = await create(Stub(channel))
            doomed = await create(Stub(channel))
        follower = follower_of(port)
        await asyncio.wait_for(follower.ready.wait(), WAIT_SECONDS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await update(Stub(channel), kept, description="seen before the restart")
        await until(lambda: follower.position > 0 and follower.syncs == 1, what="a position")
        position = follower.position
    finally:
        await first.stop(0)
    table = follower.table

    elsewhere = await create_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{elsewhere.port}") as channel:
            added = await create(Stub(channel))
            await update(Stub(channel), kept, enabled=False)
            await delete(Stub(channel), doomed)
    finally:
        await elsewhere.stop(0)
    if prune:
        await prune_all(settings.database_url)

    restarted = await create_server(settings.model_copy(update={"grpc_addr": f"127.0.0.1:{port}"}))
    await until(lambda: follower.syncs == 2, what="the follower reconnects")
    await until(lambda: routed(follower, CLAIM_CREATED) == {added.id}, what="the changes apply")
    assert follower.route(doomed.id) is None
    disabled = follower.route(kept.id)
    assert disabled is not None
    assert not disabled.enabled
    assert follower.position > position
    return follower, follower.table is table, restarted


async def prune_all(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        cutoff = datetime.now(UTC) + timedelta(days=1)
        await asyncio.to_thread(ChangeLog(engine).prune, before=cutoff)
    finally:
        engine.dispose()


async def test_the_follower_resumes_after_a_restart_and_keeps_its_table(
    subscription_settings: SubscriptionSettings,
    follower_of: Callable[[int], SubscriptionFollower],
) -> None:
    follower, kept_table, restarted = await restarted_follower_case(
        subscription_settings, follower_of, prune=False
    )
    try:
        assert kept_table, "resumed: the missed changes were applied to the table it had"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            later = await create(Stub(channel))
        await until(lambda: later.id in routed(follower, CLAIM_CREATED), what="changes flow")
    finally:
        await restarted.stop(0)


async def test_the_follower_rebuilds_from_a_snapshot_when_its_position_was_pruned(
    subscription_settings: SubscriptionSettings,
    follower_of: Callable[[int], SubscriptionFollower],
) -> None:
    _, kept_table, restarted = await restarted_follower_case(
        subscription_settings, follower_of, prune=True
    )
    await restarted.stop(0)
    assert not kept_table, "a new table, built from a snapshot"


class RecordingWatch(pb_grpc.SubscriptionServiceServicer):
    """A watch that answers each call with the next script and records what it was asked;
    a stream ends after its script, and calls beyond the scripts hang."""

    def __init__(self, *scripts: Sequence[Watch]) -> None:
        self._scripts = list(scripts)
        self.asked: list[int] = []

    async def WatchSubscriptions(
        self, request: pb.WatchSubscriptionsRequest, context: object
    ) -> AsyncIterator[Watch]:
        self.asked.append(request.resume_after)
        if not self._scripts:
            await asyncio.Event().wait()
        for step in self._scripts.pop(0):
            yield step


def marker(change_type: Watch.ChangeType.ValueType, position: int) -> Watch:
    return Watch(change_type=change_type, position=position)


def created(subscription_id: str, position: int) -> Watch:
    message = snapshot_of(subscription_id)
    message.change_type = Watch.CHANGE_TYPE_CREATED
    message.position = position
    return message


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[RecordingWatch], Awaitable[int]]]:
    servers: list[grpc.aio.Server] = []

    async def start(servicer: RecordingWatch) -> int:
        server = grpc.aio.server()
        pb_grpc.add_SubscriptionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(0)


async def test_the_follower_asks_to_resume_after_the_last_change_it_applied(
    serve: Callable[[RecordingWatch], Awaitable[int]],
    follower_of: Callable[[int], SubscriptionFollower],
) -> None:
    watch = RecordingWatch(  # type: ignore[abstract]  # only the watch is called
        [snapshot_of("sub_a"), marker(Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE, 5), created("sub_b", 7)],
        [marker(Watch.CHANGE_TYPE_RESUMED, 7), created("sub_c", 9)],
    )
    follower = follower_of(await serve(watch))
    await until(lambda: routed(follower, CLAIM_CREATED) == {"sub_a", "sub_b", "sub_c"}, what="all")

    assert watch.asked[:2] == [0, 7]
    assert follower.position == 9
    assert follower.syncs == 2
    await until(lambda: len(watch.asked) == 3, what="a third connection")
    assert watch.asked[2] == 9


async def test_a_service_that_sends_no_positions_is_never_asked_to_resume(
    serve: Callable[[RecordingWatch], Awaitable[int]],
    follower_of: Callable[[int], SubscriptionFollower],
) -> None:
    complete = marker(Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE, 0)
    watch = RecordingWatch(  # type: ignore[abstract]  # only the watch is called
        [snapshot_of("sub_a"), complete, created("sub_b", 0)],
        [snapshot_of("sub_a"), complete],
    )
    follower = follower_of(await serve(watch))
    await until(lambda: len(watch.asked) == 3, what="three connections")

    assert watch.asked == [0, 0, 0]
    assert routed(follower, CLAIM_CREATED) == {"sub_a"}, "the second snapshot replaced the table"


async def test_a_resume_after_another_position_makes_the_next_connection_start_over(
    serve: Callable[[RecordingWatch], Awaitable[int]],
    follower_of: Callable[[int], SubscriptionFollower],
) -> None:
    watch = RecordingWatch(  # type: ignore[abstract]  # only the watch is called
        [snapshot_of("sub_a"), marker(Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE, 5)],
        [marker(Watch.CHANGE_TYPE_RESUMED, 3), created("sub_wrong", 4)],
        [snapshot_of("sub_b"), marker(Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE, 8)],
    )
    follower = follower_of(await serve(watch))
    await until(lambda: routed(follower, CLAIM_CREATED) == {"sub_b"}, what="the new snapshot")

    assert watch.asked[:3] == [0, 5, 0]
    assert follower.route("sub_wrong") is None
