"""What GetDeliveryActivity answers: the activity window of this dispatcher, and the
queue as the database has it, read at most once a second per tenant.

The window is in memory; the queue is not. However many consoles poll at once, at most
one read per tenant (or for every tenant) per `max_age` reaches the database: callers
within it share the last read, or the one in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dispatcher_service.activity import ActivitySecond, ActivityWindow
from dispatcher_service.domain import QueueStats
from service_common.auth import Caller, Scope, validate_tenant

__all__ = ["ActivityReader", "DeliveryActivity", "QueueStatsCache"]

# Reads the queue stats at a time, of one tenant or every tenant (None); blocking.
ReadQueueStats = Callable[[datetime, str | None], QueueStats]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DeliveryActivity:
    """The last minute by second (oldest first), and what waits now."""

    seconds: list[ActivitySecond]
    # When the longest-waiting due delivery became due; None when none is due.
    oldest_due_time: datetime | None
    # Deliveries waiting for an attempt, now or later.
    queue_depth: int


@dataclass(frozen=True)
class _Read:
    started: datetime
    stats: asyncio.Future[QueueStats]


class QueueStatsCache:
    """Queue stats by tenant key (None: every tenant), read in a worker thread at most
    once per `max_age` per key; a read in flight is shared, however long it takes."""

    def __init__(
        self,
        read: ReadQueueStats,
        *,
        clock: Callable[[], datetime] = _utc_now,
        max_age: timedelta = timedelta(seconds=1),
    ) -> None:
        self._read = read
        self._clock = clock
        self._max_age = max_age
        self._reads: dict[str | None, _Read] = {}

    async def stats(self, tenant: str | None) -> QueueStats:
        """The queue stats of `tenant` (every tenant's when None), at most `max_age` old;
        a failed read fails every caller until it is that old."""
        now = self._clock()
        last = self._reads.get(tenant)
        if last is None or not self._fresh(last, now):
            self._forget_old(now)
            last = _Read(now, asyncio.ensure_future(asyncio.to_thread(self._read, now, tenant)))
            last.stats.add_done_callback(_retrieve)
            self._reads[tenant] = last
        # Shielded: a caller that gives up does not cancel the read the others wait for.
        return await asyncio.shield(last.stats)

    def _fresh(self, read: _Read, now: datetime) -> bool:
        return not read.stats.done() or timedelta(0) <= now - read.started < self._max_age

    def _forget_old(self, now: datetime) -> None:
        """Drops the reads no longer fresh, so keys asked for once are not kept."""
        for key in [key for key, read in self._reads.items() if not self._fresh(read, now)]:
            del self._reads[key]


def _retrieve(stats: asyncio.Future[QueueStats]) -> None:
    """Marks a failed read's error as seen, for when every caller has given up on it."""
    if not stats.cancelled():
        stats.exception()


class ActivityReader:
    """GetDeliveryActivity for a caller with `deliveries:read`: the window's seconds and
    the cached queue stats, of the caller's tenant (or the one a `*` token names, or all)."""

    def __init__(
        self,
        *,
        window: ActivityWindow,
        queue: QueueStatsCache,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._window = window
        self._queue = queue
        self._clock = clock

    async def read(self, caller: Caller, tenant: str) -> DeliveryActivity:
        caller.require(Scope.DELIVERIES_READ)
        only = caller.tenant_to_read(tenant)
        if only is not None:
            # A cache key and a query parameter: only a tenant's shape gets that far.
            validate_tenant(only, field="tenant")
        stats = await self._queue.stats(only)
        return DeliveryActivity(
            seconds=self._window.seconds(only, self._clock()),
            oldest_due_time=stats.oldest_due_time,
            queue_depth=sum(stats.depth.values()),
        )
