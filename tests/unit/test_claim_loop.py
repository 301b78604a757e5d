"""The claim loop alone, on a `MemoryQueue` with real endpoint slots whose deliveries run
until a test lets them finish: what it claims and begins, what it gives back, how it
waits for routes, for new work and through a database outage."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher_service import claim_loop
from dispatcher_service.claim_loop import ClaimLoop
from dispatcher_service.domain import (
    ClaimedBatch,
    ClaimedDelivery,
    DeliveryState,
    PreparedEvent,
    Target,
)
from dispatcher_service.endpoint_slots import EndpointSlots
from dispatcher_service.memory_queue import MemoryQueue
from dispatcher_service.outage import Outage
from service_common.errors import StoreUnavailable
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OWNER = "worker-test"
A = Target("a", "https://a.example/in")
B = Target("b", "https://b.example/in")


@dataclass(frozen=True)
class Limits:
    max_in_flight: int = 8
    claim_batch: int = 8
    lease: timedelta = timedelta(minutes=1)
    poll_interval: float = 0.01


class FlakyQueue(MemoryQueue):
    """A memory queue whose claims raise `error` while it is set; when each claim was made
    (`time.monotonic()`), and whether it failed, is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None
        self.claims: list[tuple[float, bool]] = []

    def claim(self, **kwargs: Any) -> ClaimedBatch:
        self.claims.append((time.monotonic(), self.error is not None))
        if self.error is not None:
            raise self.error
        return super().claim(**kwargs)

    def failures(self) -> list[float]:
        return [at for at, failed in self.claims if failed]


class Harness:
    """A claim loop of `OWNER` on `queue`. Its slots run 2 deliveries at once per endpoint,
    with 2 more waiting, until `finish`; what it begins, gives back and counts is kept."""

    def __init__(
        self, queue: MemoryQueue, *, limits: Limits = Limits(), max_attempts: int = 3
    ) -> None:
        self.queue = queue
        self.now = T0
        self.ready = True
        self.begun: list[str] = []
        self.given_back: list[str] = []
        self.counted: list[tuple[DeliveryState, str]] = []
        self._finish = asyncio.Event()
        self.slots = EndpointSlots(
            max_in_flight=limits.max_in_flight,
            per_endpoint=2,
            route=lambda subscription_id: None,  # by the URL stored
            run=self._run,
            on_room=lambda room: self.loop.endpoint_has_room(room),
        )
        self.loop = ClaimLoop(
            store=queue,
            owner=OWNER,
            slots=self.slots,
            outage=Outage(),
            limits=limits,
            max_attempts=max_attempts,
            clock=lambda: self.now,
            routes_ready=lambda: self.ready,
            begin=self._begin,
            unclaim=self._unclaim,
            count=lambda state, tenant: self.counted.append((state, tenant)),
        )

    def finish(self) -> None:
        """Lets every delivery run to its end, now and from now on."""
        self._finish.set()

    def _begin(self, claimed: list[ClaimedDelivery], *, now: datetime) -> list[str]:
        assert now == self.now
        busy = [delivery.id for delivery in claimed if not self.slots.take(delivery)]
        self.begun += [delivery.id for delivery in claimed if delivery.id not in busy]
        return busy

    async def _unclaim(self, ids: list[str]) -> None:
        self.given_back += ids
        self.queue.unclaim(ids=ids, owner=OWNER)

    async def _run(self, delivery: ClaimedDelivery) -> None:
        await self._finish.wait()


@contextlib.asynccontextmanager
async def running(harness: Harness) -> AsyncIterator[Harness]:
    task = asyncio.create_task(harness.loop.run())
    try:
        yield harness
    finally:
        harness.loop.stop()
        harness.finish()
        async with asyncio.timeout(2):
            await task
        await harness.slots.settle(1)


def ingest(queue: MemoryQueue, *targets: Target, count: int = 1, at: datetime = T0) -> list[str]:
    """Stores `count` events, each with a delivery to every one of `targets`; their ids."""
    before = len(queue.delivery_ids())
    events = [
        PreparedEvent(
            tenant="acme",
            message_id=f"m{before + i}",
            message_type="event.claim.created.v1",
            payload=json.dumps({"id": i}),
            targets=targets,
        )
        for i in range(count)
    ]
    queue.ingest(events, now=at)
    return queue.delivery_ids()[before:]


def claimed_by_another(queue: MemoryQueue) -> list[str]:
    """What another worker's claim finds due and not leased."""
    batch = queue.claim(
        owner="other", limit=100, now=T0, lease=timedelta(minutes=1), max_attempts=3
    )
    return [delivery.id for delivery in batch.deliveries]


async def test_a_due_delivery_is_claimed_leased_to_the_worker_and_begun() -> None:
    queue = MemoryQueue()
    (due,) = ingest(queue, A)
    (later,) = ingest(queue, B, at=T0 + timedelta(seconds=30))
    async with running(Harness(queue)) as harness:
        await until(lambda: harness.begun == [due])
        await asyncio.sleep(0.05)  # claims every poll: the later one is not due yet
        assert harness.begun == [due]
        assert claimed_by_another(queue) == []
        harness.now = T0 + timedelta(seconds=30)
        await until(lambda: harness.begun == [due, later])
    assert harness.given_back == []
    assert harness.counted == []


async def test_nothing_is_claimed_until_the_routes_are_ready() -> None:
    queue = FlakyQueue()
    (due,) = ingest(queue, A)
    harness = Harness(queue)
    harness.ready = False
    async with running(harness):
        await asyncio.sleep(0.1)  # ten polls
        assert queue.claims == []
        assert harness.begun == []
        harness.ready = True
        await until(lambda: harness.begun == [due])


async def test_wake_ends_an_idle_wait_at_once() -> None:
    queue = FlakyQueue()
    async with running(Harness(queue, limits=Limits(poll_interval=60))) as harness:
        await until(lambda: len(queue.claims) == 1)  # found nothing due
        await asyncio.sleep(0.05)
        assert len(queue.claims) == 1  # waits for the poll, a minute away
        (due,) = ingest(queue, A)
        harness.loop.wake({"a"})
        await until(lambda: harness.begun == [due], within=2)


async def test_deliveries_that_do_not_fit_are_given_back_and_left_to_others() -> None:
    queue = MemoryQueue()
    ids = ingest(queue, A, count=6)
    async with running(Harness(queue)) as harness:
        # 2 run and 2 wait for a slot of the endpoint; the rest go back.
        await until(lambda: harness.given_back)
        await asyncio.sleep(0.05)  # claims go on, skipping the full endpoint
        assert harness.begun == ids[:4]
        assert harness.given_back == ids[4:]
        assert claimed_by_another(queue) == ids[4:]


async def test_what_was_given_back_is_claimed_once_its_endpoint_has_room() -> None:
    queue = MemoryQueue()
    ids = ingest(queue, A, count=6)
    async with running(Harness(queue, limits=Limits(poll_interval=60))) as harness:
        await until(lambda: harness.given_back == ids[4:])
        harness.finish()
        # Long before the next poll: the endpoint with room again wakes the loop.
        await until(lambda: sorted(harness.begun) == sorted(ids), within=2)


@pytest.mark.parametrize(
    ("max_attempts", "state", "begun"),
    [(3, DeliveryState.RETRYING, True), (1, DeliveryState.DEAD, False)],
)
async def test_an_attempt_cut_short_is_counted_and_its_delivery_sent_again_if_attempts_are_left(
    max_attempts: int, state: DeliveryState, begun: bool
) -> None:
    queue = MemoryQueue()
    (held,) = ingest(queue, A)
    # Held by a worker that died: its lease ran out a minute ago.
    queue.claim(owner="dead", limit=1, now=T0, lease=timedelta(minutes=1), max_attempts=3)
    harness = Harness(queue, max_attempts=max_attempts)
    harness.now = T0 + timedelta(minutes=2)
    async with running(harness):
        await until(lambda: harness.counted)
        await asyncio.sleep(0.05)
    assert harness.counted == [(state, "acme")]
    assert harness.begun == ([held] if begun else [])
    assert queue.state_of(held) is state


async def test_a_failed_claim_waits_twice_as_long_each_time_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claim_loop, "MAX_CLAIM_BACKOFF_SECONDS", 0.04)
    queue = FlakyQueue()
    (due,) = ingest(queue, A)
    queue.error = StoreUnavailable("the database is unavailable")
    async with running(Harness(queue)) as harness:
        await until(lambda: len(queue.failures()) >= 10)
        queue.error = None
        await until(lambda: harness.begun == [due])
    waits = [later - earlier for earlier, later in itertools.pairwise(queue.failures()[:10])]
    # From the poll interval (0.01 s): 0.01, 0.02, then the cap.
    expected = [0.01, 0.02] + [0.04] * 7
    assert all(wait >= 0.9 * least for wait, least in zip(waits, expected, strict=True))
    assert sum(waits) < 2.0  # doubling on without the cap: over 5 s


async def test_claims_recover_after_an_outage_and_wait_from_the_poll_interval_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher_service.outage")
    queue = FlakyQueue()
    first, second = ingest(queue, A), ingest(queue, B, at=T0 + timedelta(seconds=1))
    queue.error = StoreUnavailable("the database is unavailable")
    async with running(Harness(queue)) as harness:
        await until(lambda: len(queue.failures()) >= 6)  # the next wait: 0.32 s
        queue.error = None
        await until(lambda: harness.begun == first)
        assert any("available again" in record.getMessage() for record in caplog.records)
        queue.error = StoreUnavailable("the database is unavailable again")
        after = len(queue.failures())
        await until(lambda: len(queue.failures()) >= after + 3)
        waits = queue.failures()[after + 2] - queue.failures()[after]
        assert waits < 0.3  # 0.01 s, then 0.02 s; not 0.64 s and more
        queue.error = None
        harness.now = T0 + timedelta(seconds=1)
        await until(lambda: harness.begun == first + second)


async def test_an_unexpected_claim_error_is_logged_and_claiming_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = FlakyQueue()
    (due,) = ingest(queue, A)
    queue.error = RuntimeError("a bug")
    async with running(Harness(queue)) as harness:
        await until(lambda: len(queue.failures()) >= 2)
        queue.error = None
        await until(lambda: harness.begun == [due])
    assert any(
        record.levelname == "ERROR" and "failed unexpectedly" in record.getMessage()
        for record in caplog.records
    )
