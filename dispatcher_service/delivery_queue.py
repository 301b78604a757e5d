"""The delivery store as ingestion and the delivery worker use it: events in, due
deliveries leased out, attempts recorded. `DeliveryStore` is the one implementation; this
is the contract those callers rely on, apart from what operators read and replay.

A lease is how a worker holds a delivery while it sends it: the delivery is taken by no
other claim until the lease runs out. One that runs out (its worker was killed or stalled)
is claimed again, and that claim records the attempt it cut short as interrupted. Every
method is synchronous and raises `StoreUnavailable` when the database is lost or out of
reach; a transaction that fails so stores nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from dispatcher_service.domain import (
    ClaimedBatch,
    Completion,
    EndpointHealth,
    HandOff,
    Ingested,
    PreparedEvent,
)

__all__ = ["DeliveryQueue"]


class DeliveryQueue(Protocol):
    """What ingestion, the worker's claim loop, its recorder and `outage.store_call` call."""

    @property
    def in_process(self) -> bool:
        """Whether calls run inside this process (SQLite) rather than wait on a server:
        callers on an event loop then make them directly, not through a thread."""

    def ingest(
        self, events: Sequence[PreparedEvent], *, now: datetime, hand_off: HandOff | None = None
    ) -> Ingested:
        """Stores new events with their deliveries, all in one transaction or none of them.

        An event whose (tenant, message id) is stored already, or came earlier in `events`,
        is a duplicate and stores nothing; outcomes come in the order of `events`. Given
        `hand_off`, the deliveries it asks for are stored leased to its owner until its
        `lease_expires` and returned, ready to send; the others are due at once, and
        their subscriptions returned so that a claim looks for them."""

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
        """Leases up to `limit` of the longest due deliveries to `owner` until `now +
        lease`, in one transaction: none of the subscriptions in `excluded`; given
        `due_after`, only those due after it; given `only`, only those of that
        subscription. No two claims ever take the same delivery while its lease holds.

        A delivery whose lease had run out is taken with the attempt it cut short recorded
        as interrupted, in the same transaction; with `max_attempts` spent it is dead
        instead, and not leased."""

    def unclaim(self, *, ids: Sequence[str], owner: str) -> None:
        """Gives back the leases `owner` holds of `ids` untouched: no attempt is recorded,
        and they are due as they were."""

    def release(self, *, owner: str) -> None:
        """Gives back every lease of `owner` (on shutdown), so others need not wait them out."""

    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]:
        """Records attempts, the deliveries' new states and their endpoints' runs of
        failures, in one transaction; returns the run of every endpoint that failed.

        Only deliveries `owner` still holds at the attempt they were claimed for are
        recorded: one claimed again since (its lease ran out) is left to that claim, which
        recorded this attempt as interrupted. Each recorded delivery's lease ends."""

    def forget_endpoint(self, *, subscription_id: str) -> None:
        """Ends the current run of failures of a subscription's endpoint."""
