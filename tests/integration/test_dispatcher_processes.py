"""Two dispatcher processes on one PostgreSQL database, both following one subscription
service, both delivering to one receiver: with one of them SIGKILLed mid-stream nothing is
lost, and only what it held is sent twice; with both alive nothing is sent twice.

The receiver has two subscriptions of one tenant, so every event makes two deliveries,
and a subscription of another tenant for the same events, which must get none of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import grpc
import pytest
import sqlalchemy as sa
from aiohttp import web

from dispatcher_service.database import create_engine
from dispatcher_service.domain import INTERRUPTED_ERROR, DeliveryState
from dispatcher_service.models import AttemptRow, DeliveryRow
from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.dispatcher_process import DispatcherProcess, dispatcher_environment
from tests.integration.conftest import auth
from tests.integration.test_dispatcher import subscribe
from tests.receiver import ReceivedRequest, Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

pytestmark = [
    pytest.mark.postgres,
    # Both services on PostgreSQL, each on a database of its own; the two dispatchers share
    # theirs.
    pytest.mark.parametrize("backend", ["postgresql"], indirect=True),
    pytest.mark.timeout(90),
]

CLAIM_CREATED = "event.claim.created.v1"
DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)
PATHS = ("/first", "/second")
OTHER_TENANT_PATH = "/globex"
EVENTS = 600
BATCH = 10
# Between a publisher's batches: deliveries keep flowing while events are published.
PUBLISH_PAUSE = 0.01
# Each POST is answered this late, so that a dispatcher delivering always has some in
# flight.
RECEIVER_DELAY = 0.01
# A killed dispatcher's leases run out this soon; a lease must exceed twice the attempt
# timeout (settings), hence the short attempt timeout.
LEASE_SECONDS = 3
ATTEMPT_TIMEOUT_SECONDS = 1
# POSTs a dispatcher sends at once to one endpoint (scheme://host:port); the receiver is
# one endpoint, whatever the path.
PER_ENDPOINT = 8
# The kill comes once the receiver has this many requests (of 2 * EVENTS), and the killed
# dispatcher's publisher sends nothing more after this share of its events has been
# acknowledged, so a third of them is surely left to publish again to the survivor.
KILL_AT_REQUESTS = 150
KILLED_PUBLISHER_STOPS_AT = 2 / 3
# Every wait ends within this.
SETTLE_WITHIN = 45.0
ACKED = (pb.PublishResult.OUTCOME_ACCEPTED, pb.PublishResult.OUTCOME_DUPLICATE)
T = TypeVar("T")


class SlowReceiver(Receiver):
    """The tests' receiver, answering (and recording) each POST RECEIVER_DELAY late."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(RECEIVER_DELAY)
        return await super()._handle(request)


@pytest.fixture
async def slow_receiver() -> AsyncIterator[Receiver]:
    running = SlowReceiver()
    await running.start()
    yield running
    await running.stop()


@dataclass(frozen=True)
class Pair:
    """Two dispatcher processes sharing the database at `database_url`."""

    processes: tuple[DispatcherProcess, DispatcherProcess]
    database_url: str


@pytest.fixture
def pair(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> Iterator[Pair]:
    database_url = new_database_url("dispatcher")

    def process(name: str) -> DispatcherProcess:
        # A directory, so signing keys, of its own: the webhook-key-id header tells which
        # process sent a request.
        directory = tmp_path / name
        directory.mkdir()
        return DispatcherProcess(
            dispatcher_environment(
                database_url=database_url,
                tokens=tokens,
                subscriptions_port=subscription_server.port,
                directory=directory,
                overrides={
                    "DISPATCHER_RETRY_SCHEDULE": "0s,0.2s,0.2s,0.2s",
                    "DISPATCHER_LEASE_SECONDS": str(LEASE_SECONDS),
                    "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": str(ATTEMPT_TIMEOUT_SECONDS),
                    "DISPATCHER_CONNECT_TIMEOUT_SECONDS": str(ATTEMPT_TIMEOUT_SECONDS),
                    "DISPATCHER_MAX_CONCURRENT_PER_ENDPOINT": str(PER_ENDPOINT),
                    "DISPATCHER_SHUTDOWN_GRACE_SECONDS": "1",
                },
            )
        )

    started = (process("a"), process("b"))
    yield Pair(started, database_url)
    for running in started:
        running.terminate()
    for running in started:
        running.stop()


async def _subscribe_all(stub: Stub, tokens: Tokens, receiver: Receiver) -> None:
    for path in PATHS:
        await subscribe(stub, tokens.acme, receiver.url(path), "event.claim.*")
    # Another tenant's subscription to the same message type: acme's events are not its.
    await subscribe(stub, tokens.globex, receiver.url(OTHER_TENANT_PATH), "event.claim.*")


async def _start(pair: Pair, token: str) -> tuple[list[grpc.aio.Channel], list[DispatcherStub]]:
    """Starts both processes (the subscriptions made already) and waits until both have
    their routing table."""
    for process in pair.processes:
        process.spawn()
    ports = await asyncio.gather(*(process.listening_port() for process in pair.processes))
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    stubs = [DispatcherStub(channel) for channel in channels]
    await asyncio.gather(*(_until_routing_is_loaded(s, token) for s in stubs))
    return channels, stubs


async def _until_routing_is_loaded(stub: DispatcherStub, token: str) -> None:
    """An empty event is refused as INVALID_ARGUMENT once routing is loaded, UNAVAILABLE before."""
    deadline = time.monotonic() + 15
    while True:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PublishEvent(
                pb.PublishEventRequest(event=pb.Event()), metadata=auth(token), timeout=5
            )
        if refused.value.code() != grpc.StatusCode.UNAVAILABLE:
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            return
        assert time.monotonic() < deadline, "a dispatcher never loaded its routing table"
        await asyncio.sleep(0.05)


async def _key_ids(stub: DispatcherStub, token: str) -> set[str]:
    listed = await stub.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=auth(token))
    return {key.key_id for key in listed.keys}


async def _publish(
    stub: DispatcherStub,
    token: str,
    ids: list[str],
    acked: set[str],
    *,
    stop_after: int | None = None,
) -> None:
    """Publishes `ids` over one PublishEvents stream, BATCH at a time, each batch once the
    one before is answered, adding each acknowledged id to `acked`. With `stop_after`, once
    that many are acknowledged it sends nothing more and waits, the stream open, for the
    call to break. A broken call raises."""
    requests: asyncio.Queue[pb.PublishEventsRequest | None] = asyncio.Queue()

    async def feed() -> AsyncIterator[pb.PublishEventsRequest]:
        while (request := await requests.get()) is not None:
            yield request

    call = stub.PublishEvents(feed(), metadata=auth(token), timeout=60)
    responses = aiter(call)
    for start in range(0, len(ids), BATCH):
        if stop_after is not None and len(acked) >= stop_after:
            # Until the kill breaks the stream (bounded by the call's timeout).
            async for extra in responses:
                raise AssertionError(f"an answer to nothing: {extra}")
            raise AssertionError("the stream ended without the kill")
        batch = ids[start : start + BATCH]
        await requests.put(
            pb.PublishEventsRequest(
                events=[
                    pb.Event(message_id=message_id, message_type=CLAIM_CREATED, details=DETAILS)
                    for message_id in batch
                ]
            )
        )
        try:
            response = await asyncio.wait_for(anext(responses), 10)
        except TimeoutError:
            raise AssertionError(f"no answer within 10 s to the batch of {batch[0]}") from None
        for result in response.results:
            assert result.outcome in ACKED, result
            if result.outcome == pb.PublishResult.OUTCOME_ACCEPTED:
                assert result.deliveries == len(PATHS), result
            acked.add(result.message_id)
        assert {r.message_id for r in response.results} == set(batch)
        await asyncio.sleep(PUBLISH_PAUSE)
    await requests.put(None)
    assert [extra async for extra in responses] == []


class _Delivery(NamedTuple):
    id: str
    message_id: str
    path: str
    state: str
    lease_owner: str | None


def _path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def _deliveries(database_url: str) -> list[_Delivery]:
    table = DeliveryRow.__table__  # type: ignore[attr-defined]
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    table.c.id,
                    table.c.message_id,
                    table.c.url,
                    table.c.state,
                    table.c.lease_owner,
                )
            )
            return [_Delivery(i, m, _path_of(url), s, o) for i, m, url, s, o in rows]
    finally:
        engine.dispose()


def _interrupted(database_url: str) -> dict[str, int]:
    """The deliveries with an attempt cut short (their lease ran out): how many each."""
    attempts = AttemptRow.__table__  # type: ignore[attr-defined]
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(attempts.c.delivery_id, attempts.c.status_code, attempts.c.error).where(
                    attempts.c.error.like("interrupted:%")
                )
            )
            found: Counter[str] = Counter()
            for delivery_id, status_code, error in rows:
                assert (status_code, error) == (0, INTERRUPTED_ERROR)
                found[delivery_id] += 1
            return dict(found)
    finally:
        engine.dispose()


def _payload_id(request: ReceivedRequest) -> str:
    message_id = json.loads(request.body)["payload"]["messageId"]
    assert isinstance(message_id, str)
    return message_id


def _tail(process: DispatcherProcess, lines: int = 15) -> str:
    return "".join(process.log_lines[-lines:])


async def _within(seconds: float, awaitable: Awaitable[T], problem: Callable[[], str]) -> T:
    """`awaitable`'s result; after `seconds`, a failure saying `problem()`."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"not done within {seconds:g} s: {problem()}") from None


async def _until_settled(
    receiver: Receiver, database_url: str, ids: list[str], survivor: DispatcherProcess
) -> list[_Delivery]:
    """Waits until every (path, event) pair reached the receiver and every delivery in the
    database has succeeded; returns the deliveries."""
    expected = {(path, m) for path in PATHS for m in ids}
    deadline = time.monotonic() + SETTLE_WITHIN
    while True:
        seen = {(r.path, _payload_id(r)) for r in list(receiver.requests)}
        deliveries = await asyncio.to_thread(_deliveries, database_url)
        states = Counter(d.state for d in deliveries)
        if expected <= seen and states == {DeliveryState.SUCCEEDED.value: len(expected)}:
            return deliveries
        if time.monotonic() > deadline:
            missing = sorted(expected - seen)
            raise AssertionError(
                f"not settled within {SETTLE_WITHIN:g} s: {len(missing)} of {len(expected)} "
                f"(path, event) pairs never reached the receiver (e.g. {missing[:5]}); "
                f"{len(deliveries)} deliveries stored, by state {dict(states)}; "
                f"the survivor's last log lines:\n{_tail(survivor)}"
            )
        await asyncio.sleep(0.1)


async def test_a_sigkilled_dispatcher_loses_nothing_and_only_what_it_held_is_sent_twice(
    stub: Stub,
    slow_receiver: Receiver,
    tokens: Tokens,
    pair: Pair,
) -> None:
    """Half of the events is published through each process, both streams at once. Once
    the receiver has KILL_AT_REQUESTS requests, process a is SIGKILLed; its publisher then
    publishes whatever a had not acknowledged to b (dedupe by messageId makes that safe),
    and b delivers what a acknowledged, once a's leases run out.

    What may reach the receiver twice is what a held leased when it died: the POSTs it
    had in flight (at most PER_ENDPOINT: the receiver is one endpoint), those queued for
    a slot of that endpoint (at most PER_ENDPOINT more), and those answered whose results
    were not recorded yet (attempts are recorded in batches, up to 0.25 s after their
    answer). That last kind is bounded by time, not by any setting, and at this pace it is
    most of them: several times PER_ENDPOINT. The database tells exactly which deliveries a
    held: each got an interrupted attempt when b claimed it again, and the bound asserted
    is that set, each of its deliveries sent at most twice, by a and then by b."""
    receiver = slow_receiver
    await _subscribe_all(stub, tokens, receiver)
    killed, survivor = pair.processes
    channels, (killed_stub, survivor_stub) = await _start(pair, tokens.acme_publisher)
    try:
        killed_keys, survivor_keys = (
            await _key_ids(killed_stub, tokens.acme),
            await _key_ids(survivor_stub, tokens.acme),
        )
        assert not killed_keys & survivor_keys, "each process signs with keys of its own"

        ids = [f"kill-{n}" for n in range(EVENTS)]
        killed_share, survivor_share = ids[0::2], ids[1::2]
        acked_by_killed: set[str] = set()
        acked_by_survivor: set[str] = set()
        leases_at_kill: list[_Delivery] = []
        received_at_kill: list[int] = []

        async def kill_mid_stream() -> None:
            try:
                await receiver.wait_for(KILL_AT_REQUESTS, within=20)
            except TimeoutError:
                raise AssertionError(
                    f"the receiver got {len(receiver.requests)} requests, not "
                    f"{KILL_AT_REQUESTS}; process a's last log lines:\n{_tail(killed)}"
                ) from None
            await asyncio.to_thread(killed.kill)
            received_at_kill.append(len(receiver.requests))
            # At once: a's leases stay as they were until they run out, LEASE_SECONDS on.
            leases_at_kill.extend(
                d
                for d in await asyncio.to_thread(_deliveries, pair.database_url)
                if d.lease_owner is not None
            )

        async def publish_to_the_killed_one() -> None:
            with pytest.raises(grpc.aio.AioRpcError) as broken:
                await _publish(
                    killed_stub,
                    tokens.acme_publisher,
                    killed_share,
                    acked_by_killed,
                    stop_after=int(len(killed_share) * KILLED_PUBLISHER_STOPS_AT),
                )
            assert broken.value.code() == grpc.StatusCode.UNAVAILABLE, broken.value
            # As a publisher does on an error: what was not acknowledged goes again,
            # to the dispatcher still up.
            again = [m for m in killed_share if m not in acked_by_killed]
            await _publish(survivor_stub, tokens.acme_publisher, again, acked_by_survivor)

        await _within(
            40,
            asyncio.gather(
                kill_mid_stream(),
                publish_to_the_killed_one(),
                _publish(survivor_stub, tokens.acme_publisher, survivor_share, acked_by_survivor),
            ),
            lambda: (
                f"publishing: {len(acked_by_killed)} events acknowledged by a, "
                f"{len(acked_by_survivor)} by b, of {EVENTS}; "
                f"{len(receiver.requests)} requests received; "
                f"b's last log lines:\n{_tail(survivor)}"
            ),
        )
        assert killed.process is not None
        assert killed.process.returncode == -9, "SIGKILLed"
        (received,) = received_at_kill
        assert received < EVENTS, f"the kill came late: {received} requests had arrived"
        assert 0 < len(acked_by_killed) < len(killed_share)
        assert acked_by_killed | acked_by_survivor == set(ids)

        deliveries = await _until_settled(receiver, pair.database_url, ids, survivor)
        # Anything sent late, or twice more, would show now.
        await asyncio.sleep(0.5)
        assert sorted(await asyncio.to_thread(_deliveries, pair.database_url)) == sorted(deliveries)
    finally:
        for channel in channels:
            await channel.close(None)

    # The database: one delivery per (path, event), all succeeded.
    assert sorted((d.path, d.message_id) for d in deliveries) == sorted(
        (path, m) for path in PATHS for m in ids
    )
    assert {d.state for d in deliveries} == {DeliveryState.SUCCEEDED.value}
    assert {d.lease_owner for d in deliveries} == {None}

    # The receiver: every (path, event) pair, nothing for the other tenant's subscription,
    # every copy of a pair under the same webhook-id (its message id) and the same payload.
    copies: defaultdict[tuple[str, str], list[ReceivedRequest]] = defaultdict(list)
    for request in receiver.requests:
        copies[request.path, _payload_id(request)].append(request)
    assert set(copies) == {(path, m) for path in PATHS for m in ids}
    assert receiver.on(OTHER_TENANT_PATH) == []
    for (_, message_id), sent in copies.items():
        assert {r.headers["webhook-id"] for r in sent} == {message_id}
        assert len({json.loads(r.body)["payloadAsString"] for r in sent}) == 1
    deduplicated = {(r.path, r.headers["webhook-id"]) for r in receiver.requests}
    assert len(deduplicated) == len(PATHS) * EVENTS

    # What went twice: only deliveries that a held leased when it died, sent first by a
    # and then once by b.
    twice = {key: sent for key, sent in copies.items() if len(sent) > 1}
    by_pair = {(d.path, d.message_id): d for d in deliveries}
    interrupted = await asyncio.to_thread(_interrupted, pair.database_url)
    assert set(interrupted.values()) <= {1}, "one interrupted attempt per lost lease"
    held = {d.id: d for d in leases_at_kill if d.id in interrupted}
    owners = {d.lease_owner for d in held.values()}
    counts = (
        f"{len(receiver.requests)} requests, {len(twice)} pairs sent twice, "
        f"{len(interrupted)} interrupted attempts, {len(leases_at_kill)} leases at the kill"
    )
    assert interrupted, f"a held no delivery when it died: the kill came too late; {counts}"
    assert set(held) == set(interrupted), f"every lease that ran out was a's: {counts}"
    assert len(owners) == 1, f"only one process lost leases: {owners}; {counts}"
    killed_held = {d.id for d in leases_at_kill if d.lease_owner in owners}
    assert killed_held == set(interrupted), f"every lease a held ran out: {counts}"
    for key, sent in twice.items():
        assert by_pair[key].id in interrupted, f"{key} was sent twice but not held by a"
        assert [r.headers["webhook-key-id"] in killed_keys for r in sent] == [True, False], key
        assert sent[1].headers["webhook-key-id"] in survivor_keys, key
    assert len(twice) <= len(interrupted), counts
    duplicates = len(receiver.requests) - len(deduplicated)
    assert duplicates == len(twice), counts

    # The survivor is up and well.
    assert survivor.process is not None
    assert survivor.process.poll() is None, f"the survivor exited:\n{_tail(survivor)}"
    assert "Traceback" not in "".join(survivor.log_lines), _tail(survivor, 60)


async def test_two_live_dispatchers_never_send_the_same_delivery(
    stub: Stub,
    slow_receiver: Receiver,
    tokens: Tokens,
    pair: Pair,
) -> None:
    """With both processes up the whole time, leases keep them from ever sending the same
    delivery: each (event, subscription) pair arrives exactly once, and both deliver."""
    receiver = slow_receiver
    await _subscribe_all(stub, tokens, receiver)
    channels, stubs = await _start(pair, tokens.acme_publisher)
    try:
        keys = [await _key_ids(s, tokens.acme) for s in stubs]
        ids = [f"live-{n}" for n in range(EVENTS)]
        acked: set[str] = set()
        await _within(
            30,
            asyncio.gather(
                *(
                    _publish(s, tokens.acme_publisher, share, acked)
                    for s, share in zip(stubs, (ids[0::2], ids[1::2]), strict=True)
                )
            ),
            lambda: (
                f"publishing: {len(acked)} of {EVENTS} events acknowledged; last log lines "
                f"of a:\n{_tail(pair.processes[0])}of b:\n{_tail(pair.processes[1])}"
            ),
        )
        assert acked == set(ids)
        deliveries = await _until_settled(receiver, pair.database_url, ids, pair.processes[1])
        await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
    finally:
        for channel in channels:
            await channel.close(None)

    arrived = Counter((r.path, r.headers["webhook-id"]) for r in receiver.requests)
    assert {key: n for key, n in arrived.items() if n != 1} == {}
    assert set(arrived) == {(path, m) for path in PATHS for m in ids}
    assert len(receiver.requests) == len(PATHS) * EVENTS
    assert all(_payload_id(r) == r.headers["webhook-id"] for r in receiver.requests)
    assert sorted((d.path, d.message_id) for d in deliveries) == sorted(arrived)
    assert await asyncio.to_thread(_interrupted, pair.database_url) == {}, "no lease ran out"
    senders = Counter(
        next(n for n, held in enumerate(keys) if r.headers["webhook-key-id"] in held)
        for r in receiver.requests
    )
    assert senders[0] > 0, f"process a delivered nothing: {senders}"
    assert senders[1] > 0, f"process b delivered nothing: {senders}"
