"""A dispatcher killed with SIGKILL mid-stream loses nothing it acknowledged, and its
log of attempts still accounts for every POST the receiver saw."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import grpc
import pytest
import sqlalchemy as sa

from dispatcher_service.database import create_engine
from dispatcher_service.domain import INTERRUPTED_ERROR, DeliveryState
from dispatcher_service.models import AttemptRow, DeliveryRow
from dispatcher_service.store import DeliveryStore
from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.dispatcher_process import DispatcherProcess, dispatcher_environment
from tests.integration.conftest import auth
from tests.integration.test_dispatcher import subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

DETAILS = json.dumps(
    {
        "claimRef": "C-1",
        "receeveClaimRef": "R-1",
        "amount": 1000,
        "currency": "EUR",
        "dueDate": "2026-12-31",
    }
)


@pytest.fixture
def dispatcher_env(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    subscription_server: RunningServer,
    tmp_path: Path,
) -> dict[str, str]:
    return dispatcher_environment(
        database_url=new_database_url("dispatcher"),
        tokens=tokens,
        subscriptions_port=subscription_server.port,
        directory=tmp_path,
        overrides={
            # Attempts to spare: POSTs held until the kill time out and are retried, and an
            # attempt cut short by the kill counts as one.
            "DISPATCHER_RETRY_SCHEDULE": ",".join(["0s"] + ["0.2s"] * 9),
            # A short lease, so what the killed process held is claimed again soon.
            "DISPATCHER_LEASE_SECONDS": "5",
            "DISPATCHER_ATTEMPT_TIMEOUT_SECONDS": "2",
        },
    )


@pytest.fixture
def dispatcher_process(dispatcher_env: dict[str, str]) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess(dispatcher_env)
    yield process
    process.stop()


async def _publish_until_killed(
    port: int,
    token: str,
    acked: set[str],
    *,
    kill_after: int,
    kill: Callable[[], Awaitable[None]],
) -> None:
    """Streams batches of 20 events, 4 at a time, recording each ACCEPTED id; at
    `kill_after` it sends no more, the stream still open, and awaits `kill`."""
    counter = iter(range(100_000))
    # Without it the stream could send and have acknowledged every batch while `kill`
    # waits, and end before it.
    unanswered = asyncio.Semaphore(4)
    killing = asyncio.Event()

    async def batches() -> AsyncIterator[pb.PublishEventsRequest]:
        for _ in range(500):  # bounded: 10,000 events at most
            await unanswered.acquire()
            if killing.is_set():
                await asyncio.Event().wait()  # until the kill ends the call
            yield pb.PublishEventsRequest(
                events=[
                    pb.Event(
                        message_id=f"crash-{next(counter)}",
                        message_type="event.claim.created.v1",
                        details=DETAILS,
                    )
                    for _ in range(20)
                ]
            )

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = DispatcherStub(channel).PublishEvents(batches(), metadata=auth(token))

        async def consume() -> None:
            async for response in stream:
                unanswered.release()
                acked.update(
                    r.message_id
                    for r in response.results
                    if r.outcome == pb.PublishResult.OUTCOME_ACCEPTED
                )
                if len(acked) >= kill_after:
                    killing.set()
                    await kill()

        # The kill ends the stream; anything else is a failure of the test.
        with pytest.raises(grpc.aio.AioRpcError) as broken:
            await consume()
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE


class _Attempt(NamedTuple):
    delivery_id: str
    message_id: str
    url: str
    number: int
    status_code: int
    error: str


@dataclass(frozen=True)
class _Log:
    """The dispatcher's database as the test reads it."""

    leased: int
    attempts: list[_Attempt]
    # (message id, url) of each delivery: its attempt_count
    attempt_counts: dict[tuple[str, str], int]


def _read_log(database_url: str) -> _Log:
    deliveries = DeliveryRow.__table__  # type: ignore[attr-defined]
    attempts = AttemptRow.__table__  # type: ignore[attr-defined]
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            leased = connection.execute(
                sa.select(sa.func.count()).where(deliveries.c.lease_owner.is_not(None))
            ).scalar_one()
            rows = connection.execute(
                sa.select(
                    deliveries.c.id,
                    deliveries.c.message_id,
                    deliveries.c.url,
                    attempts.c.number,
                    attempts.c.status_code,
                    attempts.c.error,
                ).join(deliveries, deliveries.c.id == attempts.c.delivery_id)
            )
            logged = [_Attempt(*row) for row in rows]
            counts = connection.execute(
                sa.select(deliveries.c.message_id, deliveries.c.url, deliveries.c.attempt_count)
            )
            return _Log(
                leased=leased,
                attempts=logged,
                attempt_counts={(m, url): count for m, url, count in counts},
            )
    finally:
        engine.dispose()


def _settled(database_url: str) -> bool:
    """Whether every stored delivery has succeeded, its last attempt recorded."""
    engine = create_engine(database_url)
    try:
        counts = DeliveryStore(engine).counts_by_state()
    finally:
        engine.dispose()
    return set(counts) == {DeliveryState.SUCCEEDED}


async def test_every_acknowledged_event_is_delivered_after_a_sigkill_and_every_post_is_in_the_log(
    stub: Stub,
    receiver: Receiver,
    tokens: Tokens,
    dispatcher_env: dict[str, str],
    dispatcher_process: DispatcherProcess,
) -> None:
    database_url = dispatcher_env["DISPATCHER_DATABASE_URL"]
    await subscribe(stub, tokens.acme, receiver.url("/crash"), "event.claim.*")
    # A second endpoint holds every POST unanswered until the kill, so that some are
    # surely cut short by it whatever the timing.
    receiver.script("/held", "hang")
    await subscribe(stub, tokens.acme, receiver.url("/held"), "event.claim.*")
    port = await dispatcher_process.start()
    acked: set[str] = set()
    held_at_kill: list[str] = []

    async def kill_while_a_post_is_held() -> None:
        if held_at_kill:
            return  # killed already; the stream has yet to notice
        # One that has just arrived: the attempt timeout is far from ending it.
        arrived = await receiver.wait_for(len(receiver.on("/held")) + 1, path="/held")
        dispatcher_process.kill()
        held_at_kill.append(json.loads(arrived[-1].body)["payload"]["messageId"])

    await asyncio.wait_for(
        _publish_until_killed(
            port, tokens.acme_publisher, acked, kill_after=400, kill=kill_while_a_post_is_held
        ),
        60,
    )
    assert len(acked) >= 400
    # What the killed dispatcher held: sent and unanswered, answered and unrecorded, or
    # waiting for a free slot of its endpoint.
    leased_at_kill = (await asyncio.to_thread(_read_log, database_url)).leased
    receiver.script("/held", 200)

    port = await dispatcher_process.start()
    deadline = time.monotonic() + 60

    def delivered(path: str) -> set[str]:
        return {json.loads(r.body)["payload"]["messageId"] for r in receiver.on(path)}

    while not (
        acked <= delivered("/crash")
        and acked <= delivered("/held")
        and await asyncio.to_thread(_settled, database_url)
    ):
        assert time.monotonic() < deadline, f"{len(acked - delivered('/crash'))} acked events lost"
        await asyncio.sleep(0.1)

    log = await asyncio.to_thread(_read_log, database_url)
    posts = len(receiver.requests)
    interrupted = [a for a in log.attempts if a.error.startswith("interrupted:")]
    answered = len(log.attempts) - len(interrupted)
    counts = (
        f"{posts} POSTs; {answered} answered and {len(interrupted)} interrupted attempts; "
        f"{leased_at_kill} deliveries leased at the kill"
    )
    # Each delivery the killed dispatcher held got one interrupted attempt when it was
    # claimed again. So every POST is in the log, as an answered attempt or an interrupted
    # one; an interrupted one may also stand for a POST that never left.
    assert len(interrupted) == leased_at_kill, counts
    assert posts - leased_at_kill <= answered <= posts <= answered + len(interrupted), counts
    assert all(a.status_code == 0 and a.error == INTERRUPTED_ERROR for a in interrupted)
    # The POST held at the kill is one of them, and GetDelivery says so.
    (held,) = held_at_kill
    (cut_short,) = [
        a for a in interrupted if (a.message_id, a.url) == (held, receiver.url("/held"))
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await DispatcherStub(channel).GetDelivery(
            pb.GetDeliveryRequest(id=cut_short.delivery_id), metadata=auth(tokens.acme_deliveries)
        )
    shown = {a.number: a for a in answer.delivery.attempts}[cut_short.number]
    assert (shown.status_code, shown.error) == (0, INTERRUPTED_ERROR)
    assert answer.delivery.state == pb.DELIVERY_STATE_SUCCEEDED
    # Attempt numbers stay unique and in step with each delivery's count.
    numbers: dict[tuple[str, str], list[int]] = {key: [] for key in log.attempt_counts}
    for attempt in log.attempts:
        numbers[attempt.message_id, attempt.url].append(attempt.number)
    assert {key: sorted(found) for key, found in numbers.items()} == {
        key: list(range(1, count + 1)) for key, count in log.attempt_counts.items()
    }
