"""Recording attempts: the results of a worker's deliveries, written in small batches,
and the subscriptions disabled because of them.

Results wait a moment to be written together, one transaction each batch, so the database
is not the bottleneck of a fast receiver. While the database is away a batch is written
again with backoff: its receivers have their deliveries already. An endpoint that keeps
failing has its subscription disabled when the auto-disable policy says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from dispatcher_service.activity import ActivityWindow
from dispatcher_service.domain import Completion, DeliveryState, EndpointHealth
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.outage import Outage, store_call
from dispatcher_service.retry import DisablePolicy, should_disable
from dispatcher_service.routing import Route
from service_common.errors import StoreUnavailable

__all__ = [
    "FIRST_RECORD_DELAY_SECONDS",
    "MAX_RECORD_DELAY_SECONDS",
    "AttemptRecorder",
    "AttemptStore",
    "Disabler",
]

log = logging.getLogger(__name__)

# While the database is away, recording a batch waits twice as long after each failure,
# from the first delay up to the cap.
FIRST_RECORD_DELAY_SECONDS = 0.1
MAX_RECORD_DELAY_SECONDS = 10.0

# Disables a subscription (its id, and why) through the subscription service.
Disabler = Callable[[str, str], Awaitable[None]]


class AttemptStore(Protocol):
    """What recording needs of the delivery store."""

    @property
    def in_process(self) -> bool: ...

    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]: ...

    def forget_endpoint(self, *, subscription_id: str) -> None: ...


class AttemptRecorder:
    """Records the attempts of the worker `owner`: `put` each result, `run` the loop that
    writes them, and `flush_all` what is left when the worker stops.

    Results wait `flush_interval` seconds at most to be recorded together, unless
    `flush_batch` of them wait already. Each one recorded is counted in `metrics` and, by
    tenant, in `activity` (at the time `clock` tells)."""

    def __init__(
        self,
        *,
        store: AttemptStore,
        owner: str,
        route: Callable[[str], Route | None],
        disable: Disabler,
        disable_policy: DisablePolicy | None,
        flush_interval: float,
        flush_batch: int,
        clock: Callable[[], datetime],
        metrics: DispatcherMetrics,
        activity: ActivityWindow,
        outage: Outage,
    ) -> None:
        self._store = store
        self._owner = owner
        self._route = route
        self._disable = disable
        self._disable_policy = disable_policy
        self._flush_interval = flush_interval
        self._flush_batch = flush_batch
        self._clock = clock
        self._metrics = metrics
        self._activity = activity
        self._outage = outage
        self._recorded = {
            state: metrics.deliveries.labels(state.value)
            for state in (DeliveryState.SUCCEEDED, DeliveryState.RETRYING, DeliveryState.DEAD)
        }
        self._results: asyncio.Queue[Completion] = asyncio.Queue()
        self._batch_full = asyncio.Event()
        # 1 while `run` holds the first result of a batch and waits for the rest.
        self._holding = 0
        self._disabling: set[str] = set()

    def put(self, completion: Completion) -> None:
        """Queues `completion` for the next batch."""
        self._results.put_nowait(completion)
        if self._holding + self._results.qsize() >= self._flush_batch:
            self._batch_full.set()

    def count(self, state: DeliveryState, tenant: str) -> None:
        """Counts an attempt of `tenant`'s recorded as leaving its delivery in `state`
        (SUCCEEDED, RETRYING or DEAD), here or by a claim that found it cut short."""
        self._recorded[state].inc()
        self._activity.record(tenant, state, self._clock())

    async def run(self) -> None:
        """Records what is put, batch after batch, until cancelled."""
        while True:
            first = await self._results.get()
            self._holding = 1
            if self._results.qsize() + 1 < self._flush_batch:
                # Not `wait_for`: on Python 3.11 it swallows a cancellation that comes as
                # the batch fills up, and the loop would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._batch_full.wait()
            self._holding = 0
            self._batch_full.clear()
            batch = [first]
            while not self._results.empty() and len(batch) < self._flush_batch:
                batch.append(self._results.get_nowait())
            await self._record(batch)

    async def flush_all(self, *, give_up_at: float) -> None:
        """Records everything still waiting, in one batch, trying until `give_up_at` (a
        `time.monotonic()` value) while the database is away."""
        batch: list[Completion] = []
        while not self._results.empty():
            batch.append(self._results.get_nowait())
        if batch:
            await self._record(batch, give_up_at=give_up_at)

    async def disable_quietly(self, subscription_id: str, reason: str, *, kind: str) -> None:
        """Disables a subscription for `reason` and counts it as `kind` (the metric's
        reason label); a failure is logged, not raised."""
        if subscription_id in self._disabling:
            return  # several deliveries' answers agree at once: one disable is enough
        self._disabling.add(subscription_id)
        try:
            await self._disable(subscription_id, reason)
            self._metrics.subscriptions_disabled.labels(kind).inc()
            # The run of failures ends with the disable: enabled again, the endpoint
            # starts from a clean count rather than one failure away from the threshold.
            await store_call(
                self._store, self._store.forget_endpoint, subscription_id=subscription_id
            )
        except Exception:
            log.exception("could not disable subscription %s (%s)", subscription_id, reason)
        finally:
            self._disabling.discard(subscription_id)

    async def _record(self, batch: list[Completion], *, give_up_at: float | None = None) -> None:
        """Records `batch`, retrying while the database is away (until `give_up_at`, a
        `time.monotonic()` value, if given)."""
        delay = FIRST_RECORD_DELAY_SECONDS
        while True:
            began = self._outage.began()
            try:
                failing = await store_call(
                    self._store,
                    self._store.complete,
                    completions=batch,
                    owner=self._owner,
                    now=self._clock(),
                )
                break
            except StoreUnavailable:
                # Keep the results: the receiver has them already; recording them late
                # beats sending them again after the lease runs out.
                self._outage.failed("recording attempts", began=began)
                if give_up_at is not None and time.monotonic() + delay > give_up_at:
                    log.warning(
                        "%d attempts not recorded: their deliveries will be sent again", len(batch)
                    )
                    return
                log.debug("recording %d attempts again in %.2fs", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECORD_DELAY_SECONDS)
            except Exception:
                # Retrying what fails for another reason would hold up every later batch;
                # these deliveries are sent again once their leases run out.
                log.exception("could not record %d attempts", len(batch))
                return
        self._outage.ended(began=began)
        for completion in batch:
            self.count(completion.state, completion.tenant)
        for health in failing:
            await self._maybe_disable(health)

    async def _maybe_disable(self, health: EndpointHealth) -> None:
        """Applies the auto-disable policy to an endpoint that failed in a batch."""
        policy = self._disable_policy
        route = self._route(health.subscription_id)
        if route is None or not route.enabled:
            return  # disabled already (by us, a moment ago, or by its owner) or gone
        if policy is None or not should_disable(
            policy,
            consecutive_failures=health.consecutive_failures,
            first_failure_at=health.first_failure_time,
            now=self._clock(),
        ):
            return
        await self.disable_quietly(
            health.subscription_id,
            f"{health.consecutive_failures} failed attempts in a row since "
            f"{health.first_failure_time.isoformat(timespec='seconds')}",
            kind="failing",
        )
