"""Delivery workers: claim due deliveries, sign and POST them, record every attempt.

One `DeliveryWorker` per process runs many deliveries at once. Claiming them is
`ClaimLoop`'s job, how many run at once (to each endpoint and in all) `EndpointSlots`';
signing is `DeliverySigner`'s job, recording the results (in small batches)
`AttemptRecorder`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from dispatcher_service import attempts
from dispatcher_service.activity import ActivityWindow
from dispatcher_service.attempts import SendResult
from dispatcher_service.claim_loop import ClaimLoop
from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.delivery_signer import DeliverySigner, Signer, build_body
from dispatcher_service.domain import ClaimedDelivery, Completion, HandOff, Target
from dispatcher_service.endpoint_slots import EndpointSlots
from dispatcher_service.metrics import DispatcherMetrics
from dispatcher_service.outage import Outage, store_call
from dispatcher_service.recorder import AttemptRecorder, Disabler
from dispatcher_service.retry import AttemptOutcome, DisablePolicy, RetrySchedule, classify
from dispatcher_service.routing import Route
from service_common.errors import StoreUnavailable

# `Disabler` and `build_body` live with the recorder and the signer; named here for the
# callers that import them from the worker.
__all__ = ["DeliveryWorker", "Disabler", "WorkerLimits", "build_body"]


class RouteLookup(Protocol):
    def is_ready(self) -> bool: ...

    def route(self, subscription_id: str) -> Route | None: ...


class Sender(Protocol):
    async def send(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> SendResult: ...


@dataclass(frozen=True, kw_only=True)
class WorkerLimits:
    max_in_flight: int = 256
    # Deliveries sent at once to one endpoint (scheme://host:port).
    per_endpoint: int = 16
    claim_batch: int = 100
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 0.5
    # Results wait this long at most to be recorded together, unless `flush_batch` of
    # them wait already: the delivery log may lag behind the receivers by this much.
    flush_interval: float = 0.25
    flush_batch: int = 200


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeliveryWorker:
    def __init__(
        self,
        *,
        store: DeliveryQueue,
        routes: RouteLookup,
        sender: Sender,
        signer: Signer,
        disable: Disabler,
        schedule: RetrySchedule,
        disable_policy: DisablePolicy | None,
        limits: WorkerLimits = WorkerLimits(),
        user_agent: str,
        clock: Callable[[], datetime] = _utc_now,
        rng: Callable[[], float] = random.random,
        metrics: DispatcherMetrics | None = None,
        activity: ActivityWindow | None = None,
    ) -> None:
        self._metrics = metrics or DispatcherMetrics()
        self._store = store
        self._routes = routes
        self._sender = sender
        self._schedule = schedule
        self._limits = limits
        self._clock = clock
        self._rng = rng
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        # One for the claim loop and the recorder both: one warning per outage.
        self._outage = Outage()
        self._signing = DeliverySigner(signer=signer, user_agent=user_agent, route=routes.route)
        self._recorder = AttemptRecorder(
            store=store,
            owner=self.owner,
            route=routes.route,
            disable=disable,
            disable_policy=disable_policy,
            flush_interval=limits.flush_interval,
            flush_batch=limits.flush_batch,
            clock=clock,
            metrics=self._metrics,
            # Where recorded attempts are counted by second and tenant (GetDeliveryActivity).
            activity=activity or ActivityWindow(),
            outage=self._outage,
        )
        self._slots = EndpointSlots(
            max_in_flight=limits.max_in_flight,
            per_endpoint=limits.per_endpoint,
            route=routes.route,
            run=functools.partial(
                attempts.run, attempt=self.deliver_one, record=self._recorder.put
            ),
            on_room=lambda room: self._claims.endpoint_has_room(room),
        )
        self._claims = ClaimLoop(
            store=store,
            owner=self.owner,
            slots=self._slots,
            outage=self._outage,
            limits=limits,
            max_attempts=schedule.max_attempts,
            clock=clock,
            routes_ready=routes.is_ready,
            begin=self._begin,
            unclaim=self._unclaim,
            count=self._recorder.count,
        )
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self, subscription_ids: Collection[str] = ()) -> None:
        """Tells the worker that new deliveries are due: for `subscription_ids` (after an
        ingestion), or for any subscription (none given)."""
        self._claims.wake(subscription_ids)

    def offer(self, targets: Sequence[Target]) -> HandOff | None:
        """What this worker takes of the new deliveries to `targets` that ingestion is about
        to store: leased to it in the ingestion's own transaction, so that no claim has to
        find them. As many as start at once, while room for a whole claim stays free.
        None: none now. The room stays held until `accept` or `withdraw`."""
        if not self._tasks or self._stopping or not self._routes.is_ready():
            return None
        counts = self._slots.startable(targets, room=self._claims.hand_off_room())
        if not counts:
            return None
        offer = HandOff(
            owner=self.owner, lease_expires=self._clock() + self._limits.lease, counts=counts
        )
        self._slots.hold(offer.total)
        return offer

    async def accept(self, offer: HandOff, deliveries: list[ClaimedDelivery]) -> None:
        """Sends `deliveries`, stored leased to this worker as `offer` asked."""
        self.withdraw(offer)
        if self._stopping:  # stored while this worker stops: for others to claim
            await self._unclaim([delivery.id for delivery in deliveries])
            return
        busy = self._begin(deliveries, now=self._clock())
        if busy:
            # Claims took the room meanwhile. What is given back is due again.
            self._claims.look_again()
            await self._unclaim(busy)

    def withdraw(self, offer: HandOff) -> None:
        """Frees the room held for `offer` (its deliveries are started, or not stored)."""
        self._slots.release(offer.total)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claims.run(), name="claim deliveries"),
            asyncio.create_task(self._recorder.run(), name="record attempts"),
        ]

    async def stop(self, grace: float) -> None:
        """Stops claiming, lets deliveries in flight finish for `grace` seconds, records them."""
        self._stopping = True
        self._slots.close()  # `release` gives back what waits for a slot
        self._claims.stop()
        if not self._tasks:
            return
        claim_loop, flush_loop = self._tasks
        await claim_loop
        await self._slots.settle(grace)
        flush_loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flush_loop
        # Bounded: with the database away, shutting down must not wait for it forever.
        await self._recorder.flush_all(give_up_at=time.monotonic() + max(grace, 1.0))
        with contextlib.suppress(StoreUnavailable):
            await store_call(self._store, self._store.release, owner=self.owner)

    async def deliver_one(self, delivery: ClaimedDelivery) -> Completion:
        """One attempt at `delivery`: routed as its subscription is now, signed, sent, and
        classified into what the delivery becomes."""
        started = self._clock()
        route = self._routes.route(delivery.subscription_id)
        if route is None or not route.enabled:
            return attempts.unsent(delivery, started, deleted=route is None)
        body, headers = await self._signing.signed(delivery, route, started)
        result = await self._sender.send(route.url, body=body, headers=headers)
        self._metrics.attempt(result.status_code, result.latency)
        outcome = classify(result.status_code, result.error)
        then = attempts.next_state(
            outcome,
            attempts_made=delivery.attempt_count + 1,
            retry_after=result.retry_after,
            schedule=self._schedule,
            clock=self._clock,
            rng=self._rng,
        )
        if outcome is AttemptOutcome.DISABLE:
            await self._recorder.disable_quietly(
                delivery.subscription_id, "the endpoint answered 410 Gone", kind="gone"
            )
        return attempts.answered(delivery, started, result, outcome, then)

    def _begin(self, claimed: list[ClaimedDelivery], *, now: datetime) -> list[str]:
        """Starts sending what this worker holds in `claimed`, or queues it for its
        endpoint; returns the ids of those to give back (their endpoints are full)."""
        busy = [delivery.id for delivery in claimed if not self._slots.take(delivery)]
        # Before the tasks just started get to run.
        self._signing.sign_ahead(claimed, besides=frozenset(busy), now=now)
        return busy

    async def _unclaim(self, ids: list[str]) -> None:
        """Gives back deliveries whose endpoint is busy, without an attempt: they stay due,
        for this worker once a slot frees or for another replica now."""
        began = self._outage.began()
        try:
            await store_call(self._store, self._store.unclaim, ids=ids, owner=self.owner)
        except StoreUnavailable:
            self._outage.failed(
                "giving back deliveries", began=began
            )  # their leases expire instead
