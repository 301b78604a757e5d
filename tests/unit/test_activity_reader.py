"""The reader of GetDeliveryActivity: at most one queue read per tenant key per second,
on a fake clock and a fake store; who may read what."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher_service.activity import ActivityWindow
from dispatcher_service.activity_reader import ActivityReader, QueueStatsCache
from dispatcher_service.domain import DeliveryState, QueueStats
from service_common.auth import Caller, Scope
from service_common.errors import InvalidArgument, PermissionDenied, StoreUnavailable

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DUE = NOW - timedelta(seconds=30)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeQueue:
    """Counts reads by tenant key; a read waits for `release` while `hold` is set."""

    def __init__(self) -> None:
        self.reads: list[tuple[datetime, str | None]] = []
        self.error: Exception | None = None
        self.hold = False
        self.release = threading.Event()

    def __call__(self, now: datetime, tenant: str | None) -> QueueStats:
        self.reads.append((now, tenant))
        if self.hold:
            self.release.wait(5)
        if self.error is not None:
            raise self.error
        pending = len(self.reads)
        return QueueStats(
            depth={DeliveryState.PENDING: pending, DeliveryState.RETRYING: 2},
            oldest_due_time=DUE,
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def cache(clock: Clock, queue: FakeQueue) -> QueueStatsCache:
    return QueueStatsCache(queue, clock=clock)


async def test_callers_within_a_second_share_one_read_per_tenant(
    cache: QueueStatsCache, queue: FakeQueue, clock: Clock
) -> None:
    first = await asyncio.gather(*(cache.stats("acme") for _ in range(20)))
    clock.advance(0.99)
    again = await asyncio.gather(*(cache.stats("acme") for _ in range(20)))
    assert queue.reads == [(NOW, "acme")]
    assert {stats.depth[DeliveryState.PENDING] for stats in first + again} == {1}


async def test_each_tenant_key_is_read_on_its_own(cache: QueueStatsCache, queue: FakeQueue) -> None:
    await asyncio.gather(cache.stats("acme"), cache.stats("globex"), cache.stats(None))
    await asyncio.gather(cache.stats("acme"), cache.stats("globex"), cache.stats(None))
    assert sorted(queue.reads, key=str) == sorted(
        [(NOW, "acme"), (NOW, "globex"), (NOW, None)], key=str
    )


async def test_a_second_later_the_queue_is_read_again(
    cache: QueueStatsCache, queue: FakeQueue, clock: Clock
) -> None:
    await cache.stats("acme")
    clock.advance(1)
    stats = await cache.stats("acme")
    assert queue.reads == [(NOW, "acme"), (NOW + timedelta(seconds=1), "acme")]
    assert stats.depth[DeliveryState.PENDING] == 2


async def test_a_slow_read_is_shared_however_long_it_takes(
    cache: QueueStatsCache, queue: FakeQueue, clock: Clock
) -> None:
    queue.hold = True
    first = asyncio.ensure_future(cache.stats("acme"))
    await asyncio.sleep(0)
    clock.advance(5)
    later = asyncio.ensure_future(cache.stats("acme"))
    queue.release.set()
    assert (await first) == (await later)
    assert queue.reads == [(NOW, "acme")]


async def test_a_caller_giving_up_does_not_cancel_the_read_others_wait_for(
    cache: QueueStatsCache, queue: FakeQueue
) -> None:
    queue.hold = True
    impatient = asyncio.ensure_future(cache.stats("acme"))
    patient = asyncio.ensure_future(cache.stats("acme"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    queue.release.set()
    assert (await patient).oldest_due_time == DUE
    assert impatient.cancelled()


async def test_a_failed_read_fails_its_second_then_is_tried_again(
    cache: QueueStatsCache, queue: FakeQueue, clock: Clock
) -> None:
    queue.error = StoreUnavailable("database unavailable")
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await cache.stats(None)
    assert len(queue.reads) == 1
    queue.error = None
    clock.advance(1)
    assert (await cache.stats(None)).oldest_due_time == DUE
    assert len(queue.reads) == 2


async def test_keys_no_longer_fresh_are_forgotten(
    cache: QueueStatsCache, queue: FakeQueue, clock: Clock
) -> None:
    for number in range(100):
        await cache.stats(f"tenant-{number}")
    clock.advance(1)
    await cache.stats("acme")
    assert len(cache._reads) == 1


def reader(clock: Clock, queue: FakeQueue, window: ActivityWindow) -> ActivityReader:
    return ActivityReader(window=window, queue=QueueStatsCache(queue, clock=clock), clock=clock)


async def test_the_reader_sums_the_queue_and_takes_the_tenants_seconds(
    clock: Clock, queue: FakeQueue
) -> None:
    window = ActivityWindow()
    window.record("acme", DeliveryState.SUCCEEDED, NOW)
    window.record("globex", DeliveryState.DEAD, NOW)
    acme = Caller(tenant="acme", scopes=frozenset({Scope.DELIVERIES_READ}))
    activity = await reader(clock, queue, window).read(acme, "")
    assert len(activity.seconds) == 60
    assert (activity.seconds[-1].succeeded, activity.seconds[-1].dead) == (1, 0)
    assert (activity.queue_depth, activity.oldest_due_time) == (3, DUE)
    assert queue.reads == [(NOW, "acme")]


async def test_a_token_of_every_tenant_reads_all_or_the_one_it_names(
    clock: Clock, queue: FakeQueue
) -> None:
    operator = Caller(tenant="*", scopes=frozenset({Scope.ADMIN}))
    activities = reader(clock, queue, ActivityWindow())
    await activities.read(operator, "")
    await activities.read(operator, "globex")
    assert queue.reads == [(NOW, None), (NOW, "globex")]
    with pytest.raises(InvalidArgument):
        await activities.read(operator, "no such/tenant")


async def test_reading_needs_deliveries_read_and_the_callers_own_tenant(
    clock: Clock, queue: FakeQueue
) -> None:
    activities = reader(clock, queue, ActivityWindow())
    publisher = Caller(tenant="acme", scopes=frozenset({Scope.PUBLISH}))
    with pytest.raises(PermissionDenied):
        await activities.read(publisher, "")
    acme = Caller(tenant="acme", scopes=frozenset({Scope.DELIVERIES_READ}))
    with pytest.raises(PermissionDenied):
        await activities.read(acme, "globex")
    assert queue.reads == []
