"""PostgreSQL stops under load and starts again: both services answer UNAVAILABLE meanwhile
(quickly, never INTERNAL or UNKNOWN), recover by themselves, and the dispatcher neither
loses an acknowledged event nor delivers one it did not acknowledge.

The database is a private PostgreSQL cluster (`tests.postgres_server`), so stopping it
leaves the shared test server alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import pytest

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.domain import (
    Attempt,
    ClaimedDelivery,
    Completion,
    DeliveryState,
    PreparedEvent,
    Target,
)
from dispatcher_service.ingest import _GroupCommit
from dispatcher_service.store import DeliveryStore
from service_common.errors import StoreUnavailable
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.dispatcher_process import DispatcherProcess, dispatcher_environment
from tests.integration.conftest import auth, scrape
from tests.integration.test_dispatcher import subscribe
from tests.postgres_server import PostgresServer, find_postgres_bin
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

pytestmark = pytest.mark.timeout(90)

CLAIM_CREATED = "event.claim.created.v1"
DETAILS = {
    "claimRef": "C-1",
    "receeveClaimRef": "R-1",
    "amount": 1000,
    "currency": "EUR",
    "dueDate": "2026-12-31",
}
BATCHES = 60
BATCH_SIZE = 20
STOP_AFTER_BATCH = 20
OUTAGE_SECONDS = 2.0
# Every answer, refusal included, comes within this; a call that hangs fails the test.
ANSWER_WITHIN = 3.0
RETRY_PAUSE = 0.1
METRICS = re.compile(r"dispatcher metrics on http://127\.0\.0\.1:(\d+)/metrics")
HTTP_SURFACE = re.compile(r"dispatcher HTTP surface on http://127\.0\.0\.1:(\d+)")
ACKED = (pb.PublishResult.OUTCOME_ACCEPTED, pb.PublishResult.OUTCOME_DUPLICATE)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test alone, removed afterwards even on failure."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        problem = "no PostgreSQL server programs (initdb, pg_ctl) in /usr/lib/postgresql/*/bin"
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; they are required when CI is set")
        pytest.skip(problem)
    server = PostgresServer(bin_dir)
    try:
        server.create()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def dispatcher_on_private_postgres(
    private_postgres: PostgresServer,
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess(
        dispatcher_environment(
            database_url=private_postgres.create_database("dispatcher"),
            tokens=tokens,
            subscriptions_port=subscription_server.port,
            directory=tmp_path,
            # INFO (the default here): the ports are read from the log, and so are the
            # outage's lines.
            overrides={
                "DISPATCHER_RETRY_SCHEDULE": "0s,0.2s,0.2s,0.2s,0.2s",
                "DISPATCHER_LEASE_SECONDS": "5",
                "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": "2",
                "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
            },
        )
    )
    yield process
    process.stop()


@dataclass
class Ledger:
    """What the publisher was told."""

    acked: set[str] = field(default_factory=set)
    refusals: int = 0
    slowest_refusal: float = 0.0
    # When each refused request was sent (time.monotonic()).
    refused_sent_at: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _batch(ids: list[str]) -> pb.PublishEventsRequest:
    details = json.dumps(DETAILS)
    return pb.PublishEventsRequest(
        events=[pb.Event(message_id=i, message_type=CLAIM_CREATED, details=details) for i in ids]
    )


async def _publish_all(
    port: int, token: str, ledger: Ledger, *, stop_database: asyncio.Event
) -> None:
    """Publishes BATCHES batches over one stream, one at a time; sends refused events again
    (same ids) after a pause; sets `stop_database` after batch STOP_AFTER_BATCH."""
    requests: asyncio.Queue[pb.PublishEventsRequest | None] = asyncio.Queue()

    async def feed() -> AsyncIterator[pb.PublishEventsRequest]:
        while (request := await requests.get()) is not None:
            yield request

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = DispatcherStub(channel).PublishEvents(feed(), metadata=auth(token), timeout=60)
        responses = aiter(call)
        for number in range(BATCHES):
            ids = [f"outage-{number}-{i}" for i in range(BATCH_SIZE)]
            for _ in range(300):  # bounded: 30 s of refusals at most per batch
                if not ids:
                    break
                sent = time.monotonic()
                await requests.put(_batch(ids))
                response = await asyncio.wait_for(anext(responses), ANSWER_WITHIN)
                refused = []
                for result in response.results:
                    if result.outcome in ACKED:
                        ledger.acked.add(result.message_id)
                    elif result.error.code == "UNAVAILABLE":
                        refused.append(result.message_id)
                    else:
                        ledger.unexpected.append(f"{result.message_id}: {result.error}")
                if refused:
                    ledger.refusals += 1
                    ledger.refused_sent_at.append(sent)
                    ledger.slowest_refusal = max(ledger.slowest_refusal, time.monotonic() - sent)
                    await asyncio.sleep(RETRY_PAUSE)
                ids = refused
            assert not ids, f"batch {number} was refused for too long"
            if number == STOP_AFTER_BATCH:
                stop_database.set()
        await requests.put(None)
        assert [extra async for extra in responses] == []


def _port_in_log(process: DispatcherProcess, pattern: re.Pattern[str]) -> int | None:
    for line in list(process.log_lines):
        if match := pattern.search(line):
            return int(match.group(1))
    return None


async def _wait_for_port(process: DispatcherProcess, pattern: re.Pattern[str]) -> int:
    deadline = time.monotonic() + 10
    while (port := _port_in_log(process, pattern)) is None:
        assert time.monotonic() < deadline, f"no line matching {pattern.pattern} in the log"
        await asyncio.sleep(0.05)
    return port


async def _database_up(metrics_port: int) -> float:
    samples = await scrape(metrics_port)
    up = ("webhooks_database_up", frozenset[tuple[str, str]]())
    assert up in samples, "no webhooks_database_up in the metrics"
    return samples[up]


async def _refused_while_down(
    dispatcher: DispatcherStub, session: aiohttp.ClientSession, http_port: int, token: str
) -> None:
    """The single-event calls answer UNAVAILABLE too: gRPC's status, HTTP's 503."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dispatcher.PublishEvent(
            pb.PublishEventRequest(
                event=pb.Event(
                    message_id="outage-unary",
                    message_type=CLAIM_CREATED,
                    details=json.dumps(DETAILS),
                )
            ),
            metadata=auth(token),
            timeout=ANSWER_WITHIN,
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    body = {
        "details": {"messageType": CLAIM_CREATED, **DETAILS},
        "messageId": "outage-http",
        "timestamp": "2021-10-14T15:33:16.848Z",
    }
    async with session.post(
        f"http://127.0.0.1:{http_port}/v1/events",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 503, await response.text()
        assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 2 * ANSWER_WITHIN


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the subscription service's
async def test_the_dispatcher_rides_out_a_database_outage(
    private_postgres: PostgresServer,
    dispatcher_on_private_postgres: DispatcherProcess,
    stub: Stub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/outage"), "event.claim.*")
    process = dispatcher_on_private_postgres
    port = await process.start()
    metrics_port = await _wait_for_port(process, METRICS)
    http_port = await _wait_for_port(process, HTTP_SURFACE)

    ledger = Ledger()
    stop_database = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=ANSWER_WITHIN)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        publisher = asyncio.create_task(
            _publish_all(port, tokens.acme_publisher, ledger, stop_database=stop_database)
        )
        try:
            await asyncio.wait_for(stop_database.wait(), 20)
            assert await _database_up(metrics_port) == 1
            await asyncio.to_thread(private_postgres.stop)
            # The publisher goes on meanwhile, refused and sending its batch again.
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            assert await _database_up(metrics_port) == 0
            await _refused_while_down(
                DispatcherStub(channel), session, http_port, tokens.acme_publisher
            )
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            await asyncio.to_thread(private_postgres.start)
            restarted = time.monotonic()
            await asyncio.wait_for(asyncio.shield(publisher), 30)
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)

        assert ledger.unexpected == []
        published = {f"outage-{n}-{i}" for n in range(BATCHES) for i in range(BATCH_SIZE)}
        assert ledger.acked == published
        assert ledger.refusals >= 3, "the publisher was never refused: no outage was seen"
        assert ledger.slowest_refusal < ANSWER_WITHIN
        # Recovered by itself: nothing sent after the restart was refused.
        assert all(sent < restarted for sent in ledger.refused_sent_at)
        deadline = time.monotonic() + 10
        while await _database_up(metrics_port) != 1:
            assert time.monotonic() < deadline, "webhooks_database_up stayed 0"
            await asyncio.sleep(0.1)

    def delivered() -> set[str]:
        return {json.loads(r.body)["payload"]["messageId"] for r in receiver.on("/outage")}

    deadline = time.monotonic() + 20
    while not ledger.acked <= delivered():
        missing = len(ledger.acked - delivered())
        assert time.monotonic() < deadline, f"{missing} acknowledged events were not delivered"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # anything delivered late would show now
    assert delivered() == ledger.acked  # so neither refused single event went out

    assert process.process is not None
    assert process.process.poll() is None, "the dispatcher exited"
    log = "".join(process.log_lines)
    notices = [line for line in process.log_lines if "database" in line and "available" in line]
    assert log.count("database unavailable while") == 1, f"one warning per outage: {notices}"
    assert log.count("database available again") == 1, notices
    assert "Traceback" not in log, log


@pytest.mark.postgres
async def test_the_subscription_service_rides_out_a_database_outage(
    private_postgres: PostgresServer, tokens: Tokens
) -> None:
    settings = SubscriptionSettings(
        grpc_addr="127.0.0.1:0",
        database_url=private_postgres.create_database("subscriptions"),
        auth_tokens_file=tokens.file,
        shutdown_grace_seconds=1.0,
    )
    running = await create_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await _subscription_calls_through_an_outage(Stub(channel), private_postgres, tokens)
    finally:
        await running.stop(0)


async def _subscription_calls_through_an_outage(
    stub: Stub, database: PostgresServer, tokens: Tokens
) -> None:
    metadata = auth(tokens.acme)

    async def create(url: str) -> sub_pb.Subscription:
        response = await stub.CreateSubscription(
            sub_pb.CreateSubscriptionRequest(
                subscription=sub_pb.Subscription(url=url, message_types=["event.claim.*"])
            ),
            metadata=metadata,
            timeout=ANSWER_WITHIN,
        )
        return response.subscription

    async def get(subscription_id: str) -> sub_pb.Subscription:
        response = await stub.GetSubscription(
            sub_pb.GetSubscriptionRequest(id=subscription_id),
            metadata=metadata,
            timeout=ANSWER_WITHIN,
        )
        return response.subscription

    async def count() -> int:
        response = await stub.ListSubscriptions(
            sub_pb.ListSubscriptionsRequest(), metadata=metadata, timeout=ANSWER_WITHIN
        )
        return len(response.subscriptions)

    async def watch_first() -> object:
        stream = stub.WatchSubscriptions(
            sub_pb.WatchSubscriptionsRequest(),
            metadata=auth(tokens.platform),
            timeout=ANSWER_WITHIN,
        )
        async for item in stream:
            stream.cancel()
            return item
        raise AssertionError("the watch ended without an answer")

    first = await create("https://example.com/before")
    await asyncio.to_thread(database.stop)
    for call in (
        create("https://example.com/during"),
        get(first.id),
        count(),
        watch_first(),
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        assert time.monotonic() - started < ANSWER_WITHIN
    await asyncio.to_thread(database.start)
    # The very first calls succeed: pooled connections the restart broke are replaced.
    assert (await get(first.id)).url == "https://example.com/before"
    await create("https://example.com/after")
    assert await count() == 2
    await watch_first()


def test_a_delivery_sent_twice_before_its_first_send_was_recorded_keeps_one_row_per_send(
    database_url: str,
) -> None:
    """After an outage longer than the lease, the worker may claim and send a delivery
    again before the first send is recorded: both land in one batch of completions. The
    claim again recorded the first as interrupted, under its own number; its late answer
    does not overwrite that row or clash with it, and the second send is recorded."""
    engine = create_engine(database_url)
    try:
        migrate(engine)
        store = DeliveryStore(engine)
        start = datetime.now(UTC)
        store.ingest(
            [
                PreparedEvent(
                    tenant="acme",
                    message_id="twice",
                    message_type=CLAIM_CREATED,
                    payload='{"messageId":"twice"}',
                    targets=(Target("sub_1", "http://127.0.0.1:9/in"),),
                )
            ],
            now=start,
        )
        lease = timedelta(seconds=5)
        later = start + 2 * lease
        (first,) = store.claim(
            owner="w", limit=10, now=start, lease=lease, max_attempts=8
        ).deliveries
        claimed_again = store.claim(owner="w", limit=10, now=later, lease=lease, max_attempts=8)
        assert claimed_again.interrupted == claimed_again.deliveries
        (again,) = claimed_again.deliveries
        assert (again.id, first.attempt_count, again.attempt_count) == (first.id, 0, 1)

        def sent(delivery: ClaimedDelivery, at: datetime) -> Completion:
            return Completion(
                delivery_id=delivery.id,
                tenant=delivery.tenant,
                subscription_id="sub_1",
                attempt=Attempt(
                    number=delivery.attempt_count + 1,
                    start_time=at,
                    status_code=200,
                    latency_ms=1,
                    error="",
                    response_snippet="ok",
                ),
                state=DeliveryState.SUCCEEDED,
                next_attempt_time=None,
                endpoint_failed=False,
            )

        store.complete([sent(first, start), sent(again, later)], owner="w", now=later)
        recorded = store.get(first.id, tenant="acme")
        assert recorded.state is DeliveryState.SUCCEEDED
        assert [(a.number, a.start_time, a.interrupted) for a in recorded.attempts] == [
            (1, start, True),
            (2, later, False),
        ]
    finally:
        engine.dispose()


class _BrokenStore:
    """A store whose writes fail for a reason that is not the database being away."""

    def __init__(self) -> None:
        self.calls = 0

    def ingest(self, events: object, *, now: datetime, hand_off: object = None) -> object:
        self.calls += 1
        raise RuntimeError("not a database error")


async def test_a_failed_group_commit_refuses_every_waiting_batch_as_unavailable() -> None:
    store = _BrokenStore()
    writer = _GroupCommit(store)  # type: ignore[arg-type]
    event = PreparedEvent(
        tenant="acme",
        message_id="m",
        message_type=CLAIM_CREATED,
        payload="{}",
        targets=(),
    )
    now = datetime.now(UTC)
    answers = await asyncio.gather(
        *(writer.ingest([event], now=now) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(answer, StoreUnavailable) for answer in answers), answers
    assert 1 <= store.calls <= 5
