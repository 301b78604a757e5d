"""The dispatcher's routing table follows the real subscription service, through restarts."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dispatcher_service.routing import Route, RoutingTable
from dispatcher_service.signing import SignatureAlgorithm
from dispatcher_service.subscription_follower import Backoff, SubscriptionFollower
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.integration.conftest import auth
from webhooks.v1 import subscription_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

Watch = pb.WatchSubscriptionsResponse
CLAIM_CREATED = "event.claim.created.v1"
CLAIM_UPDATED = "event.claim.updated.v1"
NOTE_CREATED = "event.note.created.v1"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_c2Vjb25kLXNlY3JldC1zZWNvbmQtc2VjcmV0"
# Fast enough that a reconnection takes a fraction of a second.
QUICK = Backoff(initial_seconds=0.02, max_seconds=0.2)
WAIT_SECONDS = 10.0


async def until(condition: Callable[[], bool], *, what: str) -> None:
    """Waits for `condition`, polling; fails naming `what` if it does not come in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def create(
    stub: Stub,
    *,
    tenant: str = "acme",
    message_types: Sequence[str] = (CLAIM_CREATED,),
    **fields: object,
) -> pb.Subscription:
    response = await stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                tenant=tenant,
                url=f"https://{tenant}.example.com/hooks",
                message_types=list(message_types),
                **fields,  # type: ignore[arg-type]
            )
        ),
        metadata=auth(Tokens.operator),
    )
    return response.subscription


async def update(stub: Stub, subscription: pb.Subscription, **fields: object) -> None:
    await stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=subscription.id, **fields),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        ),
        metadata=auth(Tokens.operator),
    )


async def delete(stub: Stub, subscription: pb.Subscription) -> None:
    await stub.DeleteSubscription(
        pb.DeleteSubscriptionRequest(id=subscription.id), metadata=auth(Tokens.operator)
    )


def routed(follower: SubscriptionFollower, message_type: str, tenant: str = "acme") -> set[str]:
    return {route.subscription_id for route in follower.routes_for(tenant, message_type)}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def start_follower(tokens: Tokens) -> AsyncIterator[Callable[..., SubscriptionFollower]]:
    """Starts followers of a port; stops them after the test."""
    started: list[SubscriptionFollower] = []

    def start(
        port: int, *, token: str = tokens.platform, **options: object
    ) -> SubscriptionFollower:
        follower = SubscriptionFollower(
            f"127.0.0.1:{port}",
            token,
            backoff=QUICK,
            **options,  # type: ignore[arg-type]
        )
        follower.start()
        started.append(follower)
        return follower

    yield start
    for follower in started:
        await follower.stop()


@pytest.fixture
async def channel_to(subscription_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscription_server.port}") as channel:
        yield channel


async def ready(follower: SubscriptionFollower) -> None:
    await asyncio.wait_for(follower.ready.wait(), WAIT_SECONDS)


# --- reconnection delays -------------------------------------------------------------


def test_reconnection_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial_seconds=1.0, max_seconds=10.0, multiplier=2.0)

    lowest = [backoff.delay(failures=n, random=lambda: 0.0) for n in range(6)]
    highest = [backoff.delay(failures=n, random=lambda: 1.0) for n in range(6)]

    assert highest == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert lowest == [delay / 2 for delay in highest]


def test_a_long_outage_keeps_the_delay_at_the_cap() -> None:
    backoff = Backoff(initial_seconds=0.5, max_seconds=30.0)

    assert backoff.delay(failures=10_000, random=lambda: 1.0) == 30.0


# --- against the subscription service ------------------------------------------------


async def test_routes_of_the_snapshot_are_served_once_ready(
    subscription_server: RunningServer,
    channel_to: grpc.aio.Channel,
    start_follower: Callable[..., SubscriptionFollower],
) -> None:
    stub = Stub(channel_to)
    exact = await create(
        stub,
        secret=SECRET,
        signature_algorithm=pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
    )
    pattern = await create(stub, tenant="globex", message_types=["event.claim.*"])
    disabled = await create(stub, enabled=False)

    follower = start_follower(subscription_server.port)
    await ready(follower)

    assert follower.syncs == 1
    assert follower.routes_for("acme", CLAIM_CREATED) == [
        Route(
            subscription_id=exact.id,
            tenant="acme",
            url="https://acme.example.com/hooks",
            signature_algorithm=SignatureAlgorithm.RSA_PKCS1_SHA256,
            secret=SECRET,
            enabled=True,
        )
    ]
    assert routed(follower, CLAIM_UPDATED, tenant="globex") == {pattern.id}
    assert routed(follower, CLAIM_UPDATED) == set()
    disabled_route = follower.route(disabled.id)
    assert disabled_route is not None
    assert not disabled_route.enabled
    pattern_route = follower.route(pattern.id)
    assert pattern_route is not None
    assert pattern_route.secret is None
    assert pattern_route.signature_algorithm is SignatureAlgorithm.ECDSA_P256_SHA256


async def test_created_updated_and_deleted_subscriptions_are_reflected_promptly(
    subscription_server: RunningServer,
    channel_to: grpc.aio.Channel,
    start_follower: Callable[..., SubscriptionFollower],
) -> None:
    stub = Stub(channel_to)
    follower = start_follower(subscription_server.port)
    await ready(follower)
    assert len(follower.table) == 0

    created = await create(stub)
    await until(lambda: routed(follower, CLAIM_CREATED) == {created.id}, what="created is routed")

    await update(stub, created, enabled=False, disabled_reason="paused by an operator")
    await until(lambda: routed(follower, CLAIM_CREATED) == set(), what="disabled is not routed")

    await update(stub, created, enabled=True, message_types=["event.note.*"], secret=OTHER_SECRET)
    await until(lambda: routed(follower, NOTE_CREATED) == {created.id}, what="new types routed")
    assert routed(follower, CLAIM_CREATED) == set()
    current = follower.route(created.id)
    assert current is not None
    assert current.secret == OTHER_SECRET

    await delete(stub, created)
    await until(lambda: follower.route(created.id) is None, what="deleted is forgotten")
    assert routed(follower, NOTE_CREATED) == set()
    assert follower.syncs == 1, "changes arrive on the open stream, without re-syncing"


async def test_the_follower_resyncs_after_the_subscription_service_restarts_on_the_same_port(
    subscription_settings: SubscriptionSettings,
    start_follower: Callable[..., SubscriptionFollower],
) -> None:
    first = await create_server(subscription_settings)
    port = first.port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            kept = await create(Stub(channel))
            doomed = await create(Stub(channel))
        follower = start_follower(port)
        await ready(follower)
    finally:
        await first.stop(0)
    assert routed(follower, CLAIM_CREATED) == {kept.id, doomed.id}, "served while down"

    # While the follower's service is down, its database changes through another instance.
    elsewhere = await create_server(subscription_settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{elsewhere.port}") as channel:
            added = await create(Stub(channel))
            await delete(Stub(channel), doomed)
    finally:
        await elsewhere.stop(0)

    restarted = await create_server(
        subscription_settings.model_copy(update={"grpc_addr": f"127.0.0.1:{port}"})
    )
    try:
        await until(lambda: follower.syncs == 2, what="the follower re-syncs")
        assert routed(follower, CLAIM_CREATED) == {kept.id, added.id}
        assert follower.route(doomed.id) is None

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            later = await create(Stub(channel))
        await until(lambda: later.id in routed(follower, CLAIM_CREATED), what="changes flow")
    finally:
        await restarted.stop(0)


async def test_the_follower_is_not_ready_until_a_late_subscription_service_answers(
    subscription_settings: SubscriptionSettings,
    start_follower: Callable[..., SubscriptionFollower],
) -> None:
    port = free_loopback_port()
    attempts: list[float] = []

    def counting_random() -> float:
        attempts.append(0.5)
        return 0.5

    follower = start_follower(port, random=counting_random)
    await until(lambda: len(attempts) >= 3, what="three refused connections")
    assert not follower.is_ready()
    assert follower.routes_for("acme", CLAIM_CREATED) == []

    late = await create_server(
        subscription_settings.model_copy(update={"grpc_addr": f"127.0.0.1:{port}"})
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            created = await create(Stub(channel))
        await ready(follower)
        await until(lambda: routed(follower, CLAIM_CREATED) == {created.id}, what="routed")
    finally:
        await late.stop(0)


async def test_a_token_not_for_the_platform_gets_no_secrets_and_says_so(
    subscription_server: RunningServer,
    channel_to: grpc.aio.Channel,
    start_follower: Callable[..., SubscriptionFollower],
    tokens: Tokens,
    caplog: pytest.LogCaptureFixture,
) -> None:
    created = await create(Stub(channel_to), secret=SECRET)

    with caplog.at_level(logging.WARNING, logger="dispatcher_service.subscription_follower"):
        follower = start_follower(subscription_server.port, token=tokens.operator)
        await ready(follower)

    route = follower.route(created.id)
    assert route is not None
    assert route.secret is None
    assert "does not carry subscription secrets" in caplog.text


async def test_a_refused_token_is_retried_with_a_warning_and_never_ready(
    subscription_server: RunningServer,
    start_follower: Callable[..., SubscriptionFollower],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher_service.subscription_follower"):
        follower = start_follower(subscription_server.port, token="nobody-issued-this")
        await until(lambda: caplog.text.count("UNAUTHENTICATED") >= 2, what="two refusals")

    assert not follower.is_ready()


class ScriptedWatch(pb_grpc.SubscriptionServiceServicer):
    """A subscription service whose watch streams say what a test scripts, one per call.

    A stream ends after its script; an event in a script holds the stream until it is set.
    Calls beyond the scripts hang.
    """

    def __init__(self, *scripts: Sequence[Watch | asyncio.Event]) -> None:
        self._scripts = list(scripts)

    async def WatchSubscriptions(
        self, request: pb.WatchSubscriptionsRequest, context: object
    ) -> AsyncIterator[Watch]:
        script = self._scripts.pop(0) if self._scripts else [asyncio.Event()]
        for step in script:
            if isinstance(step, asyncio.Event):
                await step.wait()
            else:
                yield step


def snapshot_of(subscription_id: str) -> Watch:
    return Watch(
        change_type=Watch.CHANGE_TYPE_SNAPSHOT,
        subscription=pb.Subscription(
            id=subscription_id,
            tenant="acme",
            url="https://acme.example.com/hooks",
            message_types=[CLAIM_CREATED],
            enabled=True,
        ),
    )


@pytest.fixture
async def scripted_server() -> AsyncIterator[Callable[[ScriptedWatch], Awaitable[int]]]:
    servers: list[grpc.aio.Server] = []

    async def serve(servicer: ScriptedWatch) -> int:
        server = grpc.aio.server()
        pb_grpc.add_SubscriptionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield serve
    for server in servers:
        await server.stop(0)


async def test_a_half_received_snapshot_is_never_served(
    scripted_server: Callable[[ScriptedWatch], Awaitable[int]],
    start_follower: Callable[..., SubscriptionFollower],
) -> None:
    complete = Watch(change_type=Watch.CHANGE_TYPE_SNAPSHOT_COMPLETE)
    rest_of_second, hold = asyncio.Event(), asyncio.Event()
    port = await scripted_server(
        ScriptedWatch(  # type: ignore[abstract]  # only the watch is called
            # The first stream ends right after its snapshot, as when the service restarts.
            [snapshot_of("sub_old"), complete],
            [snapshot_of("sub_new"), rest_of_second, snapshot_of("sub_newer"), complete, hold],
        )
    )
    tables: list[RoutingTable] = []

    def recording_table() -> RoutingTable:
        tables.append(RoutingTable())
        return tables[-1]

    follower = start_follower(port, table_factory=recording_table)
    await ready(follower)
    first_table = follower.table
    # tables: the empty one served before the first snapshot, the first, the second's.
    await until(lambda: len(tables) >= 3 and len(tables[2]) == 1, what="half the second snapshot")

    assert follower.table is first_table
    assert routed(follower, CLAIM_CREATED) == {"sub_old"}

    rest_of_second.set()
    await until(lambda: follower.syncs == 2, what="the second snapshot completes")
    assert routed(follower, CLAIM_CREATED) == {"sub_new", "sub_newer"}
