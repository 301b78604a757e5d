"""Retention in a running dispatcher: every `interval` seconds, one run deletes the finished
events past the retention window and empties the payloads past theirs (see `retention`).

A run goes batch after batch until one comes back short, paced (`retention.Pace`): each
batch sized to hold the database briefly, each followed by a pause as long, so that
ingestion and delivery get the database; it stops after `max_batches` of each kind
whatever is left: the next run goes on. One replica at a time runs (see
`EventPruner.try_lock`); the others skip their turn. While the database is away a run
fails with one WARNING, and the next interval tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.outage import Outage
from dispatcher_service.pruning import EventPruner
from dispatcher_service.retention import Pace, PrunedRows, RetentionPolicy, run_summary
from service_common.errors import StoreUnavailable
from service_common.lifecycle import cancel_and_wait

__all__ = ["DEFAULT_PACE", "FIRST_BATCH_SIZE", "MAX_BATCHES_PER_RUN", "PruneRun", "Pruner"]

log = logging.getLogger(__name__)

# A run stops after this many batches of each kind (at 10 ms and a 10 ms pause each, under
# an hour), so that one run of a backlog never holds the replica's turn for hours.
MAX_BATCHES_PER_RUN = 100_000
# The size of a run's first batch (at most the batch size setting); the pace sizes the rest.
FIRST_BATCH_SIZE = 100
DEFAULT_PACE = Pace()


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PruneRun:
    """What one run did: rows deleted, payloads emptied, and stranded deliveries ended
    (due deliveries of expunged events: none, unless the database was changed by hand)."""

    pruned: PrunedRows
    expunged: int
    ended: int
    seconds: float


class Pruner:
    """Runs retention every `interval` seconds (`start` ... `stop`), or once (`run_once`)."""

    def __init__(
        self,
        *,
        pruner: EventPruner,
        policy: RetentionPolicy,
        interval: float,
        batch_size: int,
        metrics: DispatcherMetrics | None = None,
        clock: Callable[[], datetime] = _utc_now,
        max_batches: int = MAX_BATCHES_PER_RUN,
        pace: Pace = DEFAULT_PACE,
    ) -> None:
        self._pruner = pruner
        self._policy = policy
        self._interval = interval
        self._batch_size = batch_size
        self._metrics = metrics
        self._clock = clock
        self._max_batches = max_batches
        self._pace = pace
        self._outage = Outage()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the pruner is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pruner")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)

    async def run_once(self) -> PruneRun | None:
        """One run; None when another replica holds the turn. Raises `StoreUnavailable`."""
        lock = await asyncio.to_thread(self._pruner.try_lock)
        if lock is None:
            log.debug("another replica is pruning: this run is skipped")
            return None
        try:
            return await self._run_locked()
        finally:
            await asyncio.to_thread(lock.release)

    async def _run(self) -> None:
        while True:
            await self._run_quietly()
            await asyncio.sleep(self._interval)

    async def _run_quietly(self) -> None:
        """A run whose failure is told, never raised: the next interval tries again."""
        try:
            done = await self.run_once()
        except StoreUnavailable:
            self._outage.failed("pruning old events")
            return
        except Exception:
            log.exception("pruning old events failed")
            return
        self._outage.ended()
        if done is not None:
            self._tell(done)

    async def _run_locked(self) -> PruneRun:
        started = time.monotonic()
        now = self._clock()
        pruned, expunged, ended = PrunedRows(), 0, 0
        if (cutoff := self._policy.prune_cutoff(now)) is not None:
            pruned = await self._prune(cutoff)
        if (payload_cutoff := self._policy.expunge_cutoff(now)) is not None:
            expunged = await self._batches(
                lambda limit: self._pruner.expunge_batch(payload_cutoff, limit, now=now),
                self._counted_expunged,
            )
            ended = await self._batches(
                lambda limit: self._pruner.end_stranded(now=now, limit=limit)
            )
        return PruneRun(pruned, expunged, ended, seconds=time.monotonic() - started)

    async def _prune(self, cutoff: datetime) -> PrunedRows:
        total = PrunedRows()

        def batch(limit: int) -> int:
            nonlocal total
            rows = self._pruner.prune_batch(cutoff, limit)
            total += rows
            if self._metrics is not None:
                for table, count in rows.by_table().items():
                    self._metrics.pruned_rows.labels(table).inc(count)
            return rows.events

        await self._batches(batch)
        return total

    async def _batches(
        self, batch: Callable[[int], int], count: Callable[[int], None] = lambda rows: None
    ) -> int:
        """Runs `batch(limit)` until it comes back short (or `max_batches` times), paced;
        the rows it changed."""
        total, size = 0, min(FIRST_BATCH_SIZE, self._batch_size)
        for _ in range(self._max_batches):
            began = time.monotonic()
            rows = await asyncio.to_thread(batch, size)
            took = time.monotonic() - began
            count(rows)
            total += rows
            if rows < size:
                break
            await asyncio.sleep(self._pace.pause(took))
            size = self._pace.next_size(size, took, largest=self._batch_size)
        return total

    def _counted_expunged(self, rows: int) -> None:
        if self._metrics is not None:
            self._metrics.payloads_expunged.inc(rows)

    def _tell(self, done: PruneRun) -> None:
        level = logging.INFO if done.pruned.events or done.expunged else logging.DEBUG
        log.log(
            level,
            "%s",
            run_summary(done.pruned, done.expunged, policy=self._policy, seconds=done.seconds),
        )
