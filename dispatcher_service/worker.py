"""Delivery workers: claim due deliveries, sign and POST them, record every attempt.

One `DeliveryWorker` per process runs many deliveries at once. What each claim looks at
is `ClaimPlanner`'s to say, how many deliveries run at once (to each endpoint and in all)
`EndpointSlots`'; signing is `DeliverySigner`'s job, recording the results (in small
batches) `AttemptRecorder`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from dispatcher_service import attempts
from dispatcher_service.attempts import SendResult
from dispatcher_service.claim_planner import Claim, ClaimPlanner, ClaimResult
from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.delivery_signer import DeliverySigner, Signer, build_body
from dispatcher_service.domain import (
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    HandOff,
    Target,
)
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

log = logging.getLogger(__name__)
# How often a worker whose busy endpoints hold all that is due looks through everything
# due for other work (in between, new deliveries are looked at alone).
_SATURATED_POLL = 0.5

# While the database is away the claim loop waits twice as long after each failed claim,
# from the poll interval up to this; an ingestion that commits (so the database is back)
# ends the wait at once.
MAX_CLAIM_BACKOFF_SECONDS = 10.0


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
            outage=self._outage,
        )
        self._wake = asyncio.Event()
        self._planner = ClaimPlanner(
            claim_batch=limits.claim_batch, max_in_flight=limits.max_in_flight
        )
        self._slots = EndpointSlots(
            max_in_flight=limits.max_in_flight,
            per_endpoint=limits.per_endpoint,
            route=routes.route,
            run=functools.partial(
                attempts.run, attempt=self.deliver_one, record=self._recorder.put
            ),
            on_room=self._endpoint_has_room,
        )
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self, subscription_ids: Collection[str] = ()) -> None:
        """Tells the worker that new deliveries are due: for `subscription_ids` (after an
        ingestion), or for any subscription (none given)."""
        self._planner.wake(subscription_ids)
        self._wake.set()

    def offer(self, targets: Sequence[Target]) -> HandOff | None:
        """What this worker takes of the new deliveries to `targets` that ingestion is about
        to store: leased to it in the ingestion's own transaction, so that no claim has to
        find them. As many as start at once, while room for a whole claim stays free.
        None: none now. The room stays held until `accept` or `withdraw`."""
        if not self._tasks or self._stopping or not self._routes.is_ready():
            return None
        room = self._planner.hand_off_room(self._slots.free())
        counts = self._slots.startable(targets, room=room)
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
            self._planner.look_again()
            await self._unclaim(busy)

    def withdraw(self, offer: HandOff) -> None:
        """Frees the room held for `offer` (its deliveries are started, or not stored)."""
        self._slots.release(offer.total)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="claim deliveries"),
            asyncio.create_task(self._recorder.run(), name="record attempts"),
        ]

    async def stop(self, grace: float) -> None:
        """Stops claiming, lets deliveries in flight finish for `grace` seconds, records them."""
        self._stopping = True
        self._slots.close()  # `release` gives back what waits for a slot
        self._wake.set()
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

    async def _claim_loop(self) -> None:
        backoff = self._limits.poll_interval
        while not self._stopping:
            claim = await self._next_claim()
            if claim is None:
                continue
            now = self._clock()
            try:
                batch = await self._claim(claim, now=now)
            except Exception as error:
                backoff = await self._claim_failed(error, backoff)
                continue
            backoff = self._limits.poll_interval
            self._outage.ended()
            if await self._took(claim, batch, now=now):
                await self._idle()

    async def _next_claim(self) -> Claim | None:
        """The claim to make now, once what it needs is there; None: look again."""
        if not self._routes.is_ready():
            # Until the first routing table arrives every subscription looks deleted;
            # claiming now would kill deliveries that are merely early. The first
            # ingestion (which waits for the table too) or a poll ends the wait.
            await self._idle()
            return None
        free = self._slots.free()
        if free < self._planner.claim_room:
            await self._slots.wait_for_room(self._planner.claim_room)
            return None
        claim = self._planner.next_claim(free=free, full=self._slots.full_subscriptions())
        if claim is None and not await self._idle(max(self._limits.poll_interval, _SATURATED_POLL)):
            # Polled: for what other replicas gave back and leases that ran out.
            self._planner.look_again()
        return claim

    async def _claim(self, claim: Claim, *, now: datetime) -> ClaimedBatch:
        return await store_call(
            self._store,
            self._store.claim,
            owner=self.owner,
            limit=claim.limit,
            now=now,
            lease=self._limits.lease,
            max_attempts=self._schedule.max_attempts,
            excluded=claim.excluded,
            due_after=claim.due_after,
            only=claim.only,
        )

    async def _claim_failed(self, error: Exception, backoff: float) -> float:
        """Waits `backoff` seconds after a failed claim; returns the wait after the next."""
        if isinstance(error, StoreUnavailable):
            self._outage.failed("claiming deliveries")
        else:
            # Not a reason to stop claiming: a dead loop would deliver nothing more.
            log.exception("claiming deliveries failed unexpectedly", exc_info=error)
        log.debug("claiming again in %.2fs", backoff)
        await self._idle(backoff)
        return min(backoff * 2, max(MAX_CLAIM_BACKOFF_SECONDS, self._limits.poll_interval))

    async def _took(self, claim: Claim, batch: ClaimedBatch, *, now: datetime) -> bool:
        """Starts what `claim` took and gives back what does not fit; True: it found all
        that is due."""
        attempts.note_interrupted(batch, count=self._recorder.count)
        waiting = self._slots.waiting
        busy = self._begin(batch.deliveries, now=now)
        result = ClaimResult(
            sent=batch.deliveries,
            dead=batch.dead,
            given_back=len(busy),
            queued=self._slots.waiting - waiting,
            full=self._slots.full_subscriptions(),
            now=now,
        )
        caught_up = self._planner.claimed(claim, result)
        if busy:
            await self._unclaim(busy)
        return caught_up

    def _begin(self, claimed: list[ClaimedDelivery], *, now: datetime) -> list[str]:
        """Starts sending what this worker holds in `claimed`, or queues it for its
        endpoint; returns the ids of those to give back (their endpoints are full)."""
        busy = [delivery.id for delivery in claimed if not self._slots.take(delivery)]
        # Before the tasks just started get to run.
        self._signing.sign_ahead(claimed, besides=frozenset(busy), now=now)
        return busy

    def _endpoint_has_room(self, room: int) -> None:
        self._planner.endpoint_has_room(room)
        self._wake.set()

    async def _unclaim(self, ids: list[str]) -> None:
        """Gives back deliveries whose endpoint is busy, without an attempt: they stay due,
        for this worker once a slot frees or for another replica now."""
        try:
            await store_call(self._store, self._store.unclaim, ids=ids, owner=self.owner)
        except StoreUnavailable:
            self._outage.failed("giving back deliveries")  # their leases expire instead

    async def _idle(self, seconds: float | None = None) -> bool:
        """Waits for `wake` (or `stop`), at most `seconds` (the poll interval by default);
        False when the time ran out."""
        woken = True
        try:
            # Not `wait_for`, which on Python 3.11 may swallow a cancellation.
            async with asyncio.timeout(self._limits.poll_interval if seconds is None else seconds):
                await self._wake.wait()
        except TimeoutError:
            woken = False
        self._wake.clear()
        return woken
