"""Deliveries kept in this process's memory: a `DeliveryQueue` without a database, for unit
tests and for benchmarks of everything the worker does besides the database.

It keeps the contract as `DeliveryStore` does, with the same rules for what an attempt
makes of a delivery (`retry.after_interruption`) and of its endpoint's run of failures;
ids and hand-offs are made as ingestion makes them (`ingest_rows`). Nothing outlives
the object, and no call ever raises `StoreUnavailable` (a subclass may, to test outages).
It is `in_process`: callers call it on their event loop, never from other threads.

Each delivery that may be due waits in a heap of its subscription's, by due time, then
creation; each live lease in one heap by expiry. A delivery has at most one live entry
in them, named by its `ticket`; an entry whose ticket is no longer its delivery's was
left behind by a change, and is dropped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from dispatcher_service import ingest_rows
from dispatcher_service.domain import (
    DUE_STATES,
    Attempt,
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    DeliveryState,
    EndpointHealth,
    HandOff,
    Ingested,
    PreparedEvent,
)
from dispatcher_service.retry import EndpointRun, after_interruption, endpoint_runs

__all__ = ["MemoryQueue"]


@dataclass(slots=True, kw_only=True)
class _Delivery:
    """A delivery as the queue holds it: what sending it needs (as first claimed), and
    what becomes of it. `number` orders deliveries by creation."""

    sent: ClaimedDelivery
    number: int
    next_attempt_time: datetime | None
    state: DeliveryState = DeliveryState.PENDING
    attempt_count: int = 0
    lease_owner: str | None = None
    lease_expires: datetime | None = None
    claim_time: datetime | None = None
    ticket: int = 0
    attempts: list[Attempt] = field(default_factory=list)


# A heap entry: due time (or lease expiry), creation number, ticket, the delivery.
_Entry = tuple[datetime, int, int, _Delivery]


def _next_health(
    current: EndpointHealth | None, run: EndpointRun, *, subscription_id: str, now: datetime
) -> EndpointHealth | None:
    """An endpoint's run of failures after a batch did `run` to it: None once it ended in
    a success; started again at `now` after a success in the batch, or when there was none."""
    if not run.failures:
        return None
    if current is None or run.restart:
        return EndpointHealth(
            subscription_id=subscription_id,
            consecutive_failures=run.failures,
            first_failure_time=now,
        )
    return replace(current, consecutive_failures=current.consecutive_failures + run.failures)


def _claimable(
    delivery: _Delivery, due_time: datetime, *, now: datetime, after: datetime | None
) -> bool:
    """Whether a due delivery may be claimed at `now`: it holds no lease, or its lease ran
    out; and, given `after`, it became due after that."""
    lease_free = delivery.lease_expires is None or delivery.lease_expires < now
    return lease_free and (after is None or due_time > after)


def _holds(delivery: _Delivery, *, owner: str, number: int) -> bool:
    """Whether `owner` still holds `delivery` for its attempt `number`: a claim after its
    lease ran out counted one more attempt (interrupted), which fences off a late answer."""
    return delivery.lease_owner == owner and delivery.attempt_count == number - 1


class MemoryQueue:
    """A `DeliveryQueue` in memory, with `state_of`, `attempts_of`, `delivery_ids` and
    `health_of` to read back what happened."""

    in_process = True

    def __init__(self) -> None:
        self._events: set[tuple[str, str]] = set()
        self._deliveries: dict[str, _Delivery] = {}
        self._due: dict[str, list[_Entry]] = {}
        self._leases: list[_Entry] = []
        self._held: dict[str, set[str]] = {}
        self._health: dict[str, EndpointHealth] = {}
        self._numbers = itertools.count(1)
        self._tickets = itertools.count(1)

    def ingest(
        self, events: Sequence[PreparedEvent], *, now: datetime, hand_off: HandOff | None = None
    ) -> Ingested:
        """Stores new events with their deliveries; skips duplicates (see `DeliveryQueue`)."""
        first_of = ingest_rows.first_of(events)
        inserted = first_of.keys() - self._events
        self._events |= inserted
        fresh = [event for key, event in first_of.items() if key in inserted]
        by_id = dict(zip(ingest_rows.new_ids("evt", len(fresh)), fresh, strict=True))
        new = ingest_rows.delivery_rows(list(by_id.items()), now=now, hand_off=hand_off)
        for row in new.rows:
            self._add(row, by_id[str(row["event_id"])], now=now, hand_off=hand_off)
        return Ingested(
            outcomes=ingest_rows.outcomes(events, first_of, inserted),
            handed_off=new.handed_off,
            due=new.due,
        )

    def claim(
        self,
        *,
        owner: str,
        limit: int,
        now: datetime,
        lease: timedelta,
        max_attempts: int,
        excluded: Collection[str] = (),
        due_after: datetime | None = None,
        only: str | None = None,
    ) -> ClaimedBatch:
        """Leases the (up to `limit`) longest due deliveries to `owner` (see
        `DeliveryQueue`); returns them in the order they were created."""
        self._expire(now)
        candidates = self._due.keys() if only is None else {only}
        picked = self._pick(candidates - set(excluded), limit=limit, now=now, after=due_after)
        batch = ClaimedBatch(deliveries=[], interrupted=[], dead=[])
        for delivery, due_time in sorted(picked, key=lambda taken: taken[0].number):
            ending = self._take(delivery, owner=owner, now=now, lease=lease, most=max_attempts)
            claimed = replace(
                delivery.sent, attempt_count=delivery.attempt_count, due_time=due_time
            )
            if ending is DeliveryState.DEAD:
                batch.dead.append(claimed)
                continue
            batch.deliveries.append(claimed)
            if ending is not None:
                batch.interrupted.append(claimed)
        return batch

    def unclaim(self, *, ids: Sequence[str], owner: str) -> None:
        """Gives back the leases `owner` holds of `ids` untouched: due as they were."""
        for delivery_id in ids:
            delivery = self._deliveries.get(delivery_id)
            if delivery is not None and delivery.lease_owner == owner:
                self._unlease(delivery)
                self._queue_due(delivery)

    def release(self, *, owner: str) -> None:
        """Gives back every lease of `owner`."""
        self.unclaim(ids=list(self._held.get(owner, ())), owner=owner)

    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]:
        """Records the attempts `owner` still holds the deliveries of, their new states and
        their endpoints' runs; returns the run of every endpoint that failed."""
        recorded = [c for c in completions if self._record(c, owner=owner)]
        failing = []
        for subscription_id, run in endpoint_runs(recorded).items():
            current = self._health.pop(subscription_id, None)
            health = _next_health(current, run, subscription_id=subscription_id, now=now)
            if health is not None:
                self._health[subscription_id] = health
                failing.append(health)
        return failing

    def forget_endpoint(self, *, subscription_id: str) -> None:
        """Ends the current run of failures of a subscription's endpoint."""
        self._health.pop(subscription_id, None)

    def state_of(self, delivery_id: str) -> DeliveryState:
        """The state a delivery is in now."""
        return self._deliveries[delivery_id].state

    def attempts_of(self, delivery_id: str) -> list[Attempt]:
        """The attempts recorded of a delivery, in order."""
        return list(self._deliveries[delivery_id].attempts)

    def delivery_ids(self) -> list[str]:
        """The id of every delivery stored, in the order they were created."""
        return list(self._deliveries)

    def health_of(self, subscription_id: str) -> EndpointHealth | None:
        """The current run of failures of a subscription's endpoint, if it has one."""
        return self._health.get(subscription_id)

    def _add(
        self,
        row: dict[str, object],
        event: PreparedEvent,
        *,
        now: datetime,
        hand_off: HandOff | None,
    ) -> None:
        """Stores the delivery of `row`, one of `event`'s: leased as `hand_off` asks, or due."""
        sent = ClaimedDelivery(
            id=str(row["id"]),
            tenant=event.tenant,
            subscription_id=str(row["subscription_id"]),
            message_id=event.message_id,
            message_type=event.message_type,
            url=str(row["url"]),
            attempt_count=0,
            payload=event.payload,
            due_time=now,
        )
        delivery = _Delivery(sent=sent, number=next(self._numbers), next_attempt_time=now)
        self._deliveries[sent.id] = delivery
        if hand_off is not None and row["leased"]:
            delivery.claim_time = now
            self._lease(delivery, owner=hand_off.owner, until=hand_off.lease_expires)
        else:
            self._queue_due(delivery)

    def _pick(
        self, subscriptions: Iterable[str], *, limit: int, now: datetime, after: datetime | None
    ) -> list[tuple[_Delivery, datetime]]:
        """Takes out of the due heaps of `subscriptions` the (up to `limit`) longest due
        deliveries that may be claimed at `now`, with when each became due."""
        heads = [(heap[0], sid) for sid in subscriptions if (heap := self._due.get(sid))]
        heapq.heapify(heads)
        picked: list[tuple[_Delivery, datetime]] = []
        aside: list[tuple[str, _Entry]] = []
        while heads and len(picked) < limit:
            entry, subscription_id = heapq.heappop(heads)
            due_time, _, ticket, delivery = entry
            if due_time > now:
                break
            heap = self._due[subscription_id]
            heapq.heappop(heap)
            if heap:
                heapq.heappush(heads, (heap[0], subscription_id))
            if delivery.ticket != ticket:
                continue
            if _claimable(delivery, due_time, now=now, after=after):
                delivery.ticket = 0
                picked.append((delivery, due_time))
            else:
                aside.append((subscription_id, entry))
        for subscription_id, entry in aside:
            heapq.heappush(self._due[subscription_id], entry)
        return picked

    def _take(
        self, delivery: _Delivery, *, owner: str, now: datetime, lease: timedelta, most: int
    ) -> DeliveryState | None:
        """Leases `delivery` to `owner`, recording the attempt that a lease run out cut
        short; what that made of it (RETRYING, or DEAD and not leased), None if nothing."""
        ending = None
        if delivery.lease_owner is not None:
            self._unlease(delivery)
            ending = self._interrupt(delivery, now=now, lease=lease, max_attempts=most)
        if ending is not DeliveryState.DEAD:
            delivery.claim_time = now
            self._lease(delivery, owner=owner, until=now + lease)
        return ending

    @staticmethod
    def _interrupt(
        delivery: _Delivery, *, now: datetime, lease: timedelta, max_attempts: int
    ) -> DeliveryState:
        """Records the attempt cut short when `delivery`'s lease ran out; its new state."""
        number = delivery.attempt_count + 1
        claim_time = now - lease if delivery.claim_time is None else delivery.claim_time
        delivery.attempts.append(Attempt.interrupted_at(number=number, claim_time=claim_time))
        delivery.attempt_count = number
        delivery.state = after_interruption(number=number, max_attempts=max_attempts)
        if delivery.state is DeliveryState.DEAD:
            delivery.next_attempt_time = None
        return delivery.state

    def _record(self, completion: Completion, *, owner: str) -> bool:
        """Records `completion` if `owner` still holds its delivery for that attempt."""
        delivery = self._deliveries.get(completion.delivery_id)
        if delivery is None or not _holds(delivery, owner=owner, number=completion.attempt.number):
            return False
        self._unlease(delivery)
        delivery.attempts.append(completion.attempt.as_kept())
        delivery.attempt_count = completion.attempt.number
        delivery.state = completion.state
        delivery.next_attempt_time = completion.next_attempt_time
        self._queue_due(delivery)
        return True

    def _expire(self, now: datetime) -> None:
        """Makes the deliveries whose lease ran out before `now` due again (still leased,
        so that their claim records the attempt cut short)."""
        while self._leases and self._leases[0][0] < now:
            _, _, ticket, delivery = heapq.heappop(self._leases)
            if delivery.ticket == ticket:
                self._queue_due(delivery)

    def _lease(self, delivery: _Delivery, *, owner: str, until: datetime) -> None:
        delivery.lease_owner, delivery.lease_expires = owner, until
        self._held.setdefault(owner, set()).add(delivery.sent.id)
        self._push(self._leases, until, delivery)

    def _unlease(self, delivery: _Delivery) -> None:
        """Ends `delivery`'s lease, and its entry with it."""
        if delivery.lease_owner is not None:
            held = self._held[delivery.lease_owner]
            held.discard(delivery.sent.id)
            if not held:
                del self._held[delivery.lease_owner]
        delivery.lease_owner = delivery.lease_expires = None
        delivery.ticket = 0

    def _queue_due(self, delivery: _Delivery) -> None:
        """Puts `delivery` in its subscription's due heap, if it waits for an attempt."""
        due_time = delivery.next_attempt_time
        if delivery.state in DUE_STATES and due_time is not None:
            self._push(self._due.setdefault(delivery.sent.subscription_id, []), due_time, delivery)
        else:
            delivery.ticket = 0

    def _push(self, heap: list[_Entry], when: datetime, delivery: _Delivery) -> None:
        """Adds `delivery`'s one live entry to `heap`; any other it had is left behind."""
        delivery.ticket = next(self._tickets)
        heapq.heappush(heap, (when, delivery.number, delivery.ticket, delivery))
