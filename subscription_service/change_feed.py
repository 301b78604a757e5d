"""Each replica's reader of the change log: every committed change, whichever replica made
it, reaches the watch streams of this process in the order of the log.

One task per server reads the rows after the last position it published and hands them
to the `ChangeHub`. A write through this replica wakes it at once; changes made through
other replicas arrive within `poll_seconds`. The same task prunes the log of changes older
than the retention. While the database is away it warns once, backs off and carries on
from the same position when the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from service_common.errors import StoreUnavailable
from service_common.lifecycle import cancel_and_wait
from subscription_service.change_log import ChangeLog
from subscription_service.watch import ChangeHub, Watcher

__all__ = ["ChangeFeed", "retry_delay"]

log = logging.getLogger(__name__)

# Rows read per query; a backlog is read in as many queries as it takes, at once.
BATCH = 500
# Seconds between prunings of the log: retention is counted in hours, and each pruning
# costs a query on every replica.
PRUNE_EVERY_SECONDS = 60.0
# The longest wait between attempts while the database is away.
MAX_RETRY_SECONDS = 5.0
# Whatever the database raises: a lost connection is StoreUnavailable, a schema not
# migrated yet (a service started without migrating) some other error of SQLAlchemy.
_DATABASE_ERRORS = (StoreUnavailable, sa.exc.SQLAlchemyError)


def retry_delay(poll_seconds: float, *, failures: int) -> float:
    """Seconds to wait before the next read: the poll interval, doubled per failure in a
    row, up to MAX_RETRY_SECONDS (or the poll interval if that is longer)."""
    if failures == 0:
        return poll_seconds
    return max(poll_seconds, min(MAX_RETRY_SECONDS, poll_seconds * 2.0 ** min(failures, 32)))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ChangeFeed:
    """Publishes the change log to `hub`; `start()` on a running loop, `await stop()`."""

    def __init__(
        self,
        changes: ChangeLog,
        hub: ChangeHub,
        *,
        poll_seconds: float,
        retention: timedelta,
        prune_every_seconds: float = PRUNE_EVERY_SECONDS,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._changes = changes
        self._hub = hub
        self._poll_seconds = poll_seconds
        self._retention = retention
        self._prune_every = prune_every_seconds
        self._clock = clock
        self._position: int | None = None
        self._positioning = asyncio.Lock()
        self._woken = asyncio.Event()
        self._outage = False
        self._task: asyncio.Task[None] | None = None

    @property
    def position(self) -> int | None:
        """The position of the last change published; None until the feed has one."""
        return self._position

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the change feed is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)

    def wake(self) -> None:
        """Reads the log now: this replica just committed a change."""
        self._woken.set()

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Watcher]:
        """A watcher of the hub that hears every change after the position the feed has
        reached when it is registered; StoreUnavailable if the feed has none yet and the
        database cannot tell it."""
        # A feed that took its starting position after a watcher had read its snapshot
        # could skip the changes in between: a watcher only registers once it has one.
        await self._positioned()
        with self._hub.watch() as watcher:
            yield watcher

    async def _positioned(self) -> int:
        async with self._positioning:
            if self._position is None:
                # Started at the newest change: a watcher reads what came before itself.
                self._position = await asyncio.to_thread(self._changes.newest)
            return self._position

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        next_pruning = loop.time()
        while True:
            self._woken.clear()
            try:
                await self._publish_new()
                if loop.time() >= next_pruning:
                    await self._prune()
                    next_pruning = loop.time() + self._prune_every
            except _DATABASE_ERRORS as error:
                failures += 1
                self._failed(error)
            else:
                failures = 0
                self._recovered()
            delay = retry_delay(self._poll_seconds, failures=failures)
            # Not `wait_for`: on Python 3.11 it swallows a cancellation that comes as a
            # local write wakes the feed, and `stop` would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._woken.wait()

    async def _publish_new(self) -> None:
        position = await self._positioned()
        while True:
            changes = await asyncio.to_thread(self._changes.after, position, limit=BATCH)
            for change in changes:
                self._hub.publish(change)
                position = self._position = change.position
            if len(changes) < BATCH:
                return

    async def _prune(self) -> None:
        before = self._clock() - self._retention
        pruned = await asyncio.to_thread(self._changes.prune, before=before)
        if pruned:
            log.debug("pruned %d changes made before %s from the change log", pruned, before)

    def _failed(self, error: Exception) -> None:
        if not self._outage:
            self._outage = True
            log.warning(
                "cannot read the change log (%s); watchers hear of no changes until the "
                "database is back",
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            log.info("reading the change log again")
