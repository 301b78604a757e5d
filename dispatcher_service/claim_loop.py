"""The claim loop of a delivery worker: claims due deliveries as room frees, starts them,
and gives back what does not fit.

What each claim looks at is `ClaimPlanner`'s to say, how much room there is
`EndpointSlots`'. The loop waits for the routing table before its first claim, for room
for a whole claim before each, and for new work (`wake`) or a poll once it found all that
is due. While the database is away it waits twice as long after each failed claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import Protocol

from dispatcher_service import attempts
from dispatcher_service.claim_planner import Claim, ClaimPlanner, ClaimResult
from dispatcher_service.delivery_queue import DeliveryQueue
from dispatcher_service.domain import ClaimedBatch, ClaimedDelivery, DeliveryState
from dispatcher_service.endpoint_slots import EndpointSlots
from dispatcher_service.outage import Outage, store_call
from service_common.errors import StoreUnavailable

__all__ = ["MAX_CLAIM_BACKOFF_SECONDS", "Begin", "ClaimLimits", "ClaimLoop"]

log = logging.getLogger(__name__)
# How often a loop whose busy endpoints hold all that is due looks through everything
# due for other work (in between, new deliveries are looked at alone).
_SATURATED_POLL = 0.5

# While the database is away the claim loop waits twice as long after each failed claim,
# from the poll interval up to this; an ingestion that commits (so the database is back)
# ends the wait at once.
MAX_CLAIM_BACKOFF_SECONDS = 10.0


class ClaimLimits(Protocol):
    """The limits of a worker that its claims go by (`WorkerLimits` has them)."""

    @property
    def max_in_flight(self) -> int: ...
    @property
    def claim_batch(self) -> int: ...
    @property
    def lease(self) -> timedelta: ...
    @property
    def poll_interval(self) -> float: ...


class Begin(Protocol):
    """Starts the deliveries `claimed` at `now`, or queues them for their endpoint;
    returns the ids of those to give back (their endpoints are full)."""

    def __call__(self, claimed: list[ClaimedDelivery], *, now: datetime) -> list[str]: ...


class ClaimLoop:
    """Claims due deliveries for the worker `owner` (`run`) until `stop`: each claim leases
    them for `limits.lease`, `begin`s them and `unclaim`s what does not fit; attempts that
    a claim found cut short are `count`ed by what they left their delivery in (and tenant).

    Nothing is claimed until `routes_ready()`: before the first routing table arrives
    every subscription looks deleted, and a claim would kill deliveries merely early."""

    def __init__(
        self,
        *,
        store: DeliveryQueue,
        owner: str,
        slots: EndpointSlots,
        outage: Outage,
        limits: ClaimLimits,
        max_attempts: int,
        clock: Callable[[], datetime],
        routes_ready: Callable[[], bool],
        begin: Begin,
        unclaim: Callable[[list[str]], Awaitable[None]],
        count: Callable[[DeliveryState, str], None],
    ) -> None:
        self._store = store
        self._owner = owner
        self._slots = slots
        self._outage = outage
        self._limits = limits
        self._max_attempts = max_attempts
        self._clock = clock
        self._routes_ready = routes_ready
        self._begin = begin
        self._unclaim = unclaim
        self._count = count
        self._planner = ClaimPlanner(
            claim_batch=limits.claim_batch, max_in_flight=limits.max_in_flight
        )
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self, subscription_ids: Collection[str] = ()) -> None:
        """New deliveries are due: for `subscription_ids` (after an ingestion), or for any
        subscription (none given). Ends the loop's wait at once."""
        self._planner.wake(subscription_ids)
        self._wake.set()

    def endpoint_has_room(self, room: int) -> None:
        """A full endpoint has room for `room` again: its subscriptions are claimed now."""
        self._planner.endpoint_has_room(room)
        self._wake.set()

    def hand_off_room(self) -> int:
        """How many new deliveries ingestion may hand over now: room for a whole claim stays
        free for what else is due."""
        return self._planner.hand_off_room(self._slots.free())

    def look_again(self) -> None:
        """The next claim looks through everything (deliveries were given back, due again)."""
        self._planner.look_again()

    def stop(self) -> None:
        """Makes `run` return once the claim under way, if any, is taken in."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Claims, starts and gives back, claim after claim, until `stop`."""
        backoff = self._limits.poll_interval
        while not self._stopping:
            claim = await self._next_claim()
            if claim is None:
                continue
            now = self._clock()
            began = self._outage.began()
            try:
                batch = await self._claim(claim, now=now)
            except Exception as error:
                backoff = await self._claim_failed(error, backoff, began=began)
                continue
            backoff = self._limits.poll_interval
            self._outage.ended(began=began)
            if await self._took(claim, batch, now=now):
                await self._idle()

    async def _next_claim(self) -> Claim | None:
        """The claim to make now, once what it needs is there; None: look again."""
        if not self._routes_ready():
            # The first ingestion (which waits for the table too) or a poll ends the wait.
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
            owner=self._owner,
            limit=claim.limit,
            now=now,
            lease=self._limits.lease,
            max_attempts=self._max_attempts,
            excluded=claim.excluded,
            due_after=claim.due_after,
            only=claim.only,
        )

    async def _claim_failed(self, error: Exception, backoff: float, *, began: float) -> float:
        """Waits `backoff` seconds after a failed claim; returns the wait after the next."""
        if isinstance(error, StoreUnavailable):
            self._outage.failed("claiming deliveries", began=began)
        else:
            # Not a reason to stop claiming: a dead loop would deliver nothing more.
            log.exception("claiming deliveries failed unexpectedly", exc_info=error)
        log.debug("claiming again in %.2fs", backoff)
        await self._idle(backoff)
        return min(backoff * 2, max(MAX_CLAIM_BACKOFF_SECONDS, self._limits.poll_interval))

    async def _took(self, claim: Claim, batch: ClaimedBatch, *, now: datetime) -> bool:
        """Starts what `claim` took and gives back what does not fit; True: it found all
        that is due."""
        attempts.note_interrupted(batch, count=self._count)
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
