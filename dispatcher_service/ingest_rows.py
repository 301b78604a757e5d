"""The rows a batch of new events and their deliveries is stored as: the backends take
them as one JSON document each (see `queue_backend`), so they are built here, in Python,
with the ids they are stored under and what the ingesting worker takes at once; and what
each event of the batch came to."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dispatcher_service.domain import ClaimedDelivery, HandOff, IngestOutcome, PreparedEvent

# Ids this process has made (`new_ids`), and the span of the count in an id.
_made = itertools.count()
_SEQUENCE_SPAN = 16**6

__all__ = ["NewDeliveries", "delivery_rows", "event_rows", "new_ids", "outcomes"]


@dataclass
class NewDeliveries:
    """The rows of new deliveries; those leased to a hand-off's owner, ready to send;
    and the subscriptions of the others, due for claims."""

    rows: list[dict[str, object]] = field(default_factory=list)
    handed_off: list[ClaimedDelivery] = field(default_factory=list)
    due: set[str] = field(default_factory=set)


def first_of(events: Sequence[PreparedEvent]) -> dict[tuple[str, str], PreparedEvent]:
    """The first of `events` with each (tenant, message id), in their order: the one
    that is stored; any later one is a duplicate."""
    first: dict[tuple[str, str], PreparedEvent] = {}
    for event in events:
        first.setdefault((event.tenant, event.message_id), event)
    return first


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` unique ids that sort by creation time, as UUIDv7s do: 48 bits of unix
    milliseconds, a 24-bit count of the ids this process made (so that ids made in the
    same millisecond still sort in the order they were made), then 56 random bits. New
    rows then land at the end of the primary key's index instead of on a random page
    each, which keeps commits small."""
    stamp = f"{prefix}_{time.time_ns() // 1_000_000:012x}"
    random = os.urandom(7 * count).hex()  # one system call for the whole batch
    return [
        f"{stamp}{next(_made) % _SEQUENCE_SPAN:06x}{random[14 * i : 14 * (i + 1)]}"
        for i in range(count)
    ]


def event_rows(
    events: Mapping[tuple[str, str], PreparedEvent], ids: Mapping[tuple[str, str], str]
) -> list[dict[str, object]]:
    """The rows of `events`, each under its id in `ids` (both by tenant and message id)."""
    return [
        {
            "id": ids[key],
            "tenant": event.tenant,
            "message_id": event.message_id,
            "message_type": event.message_type,
            "payload": event.payload,
        }
        for key, event in events.items()
    ]


def delivery_rows(
    events: Sequence[tuple[str, PreparedEvent]], *, now: datetime, hand_off: HandOff | None
) -> NewDeliveries:
    """The deliveries of `events` (event id, event), one per target, leasing those
    `hand_off` asks for (first come first)."""
    left = dict(hand_off.counts) if hand_off is not None else {}
    new = NewDeliveries()
    targets = [(event_id, event, target) for event_id, event in events for target in event.targets]
    for (event_id, event, target), delivery_id in zip(
        targets, new_ids("dlv", len(targets)), strict=True
    ):
        leased = left.get(target.subscription_id, 0) > 0
        new.rows.append(
            {
                "id": delivery_id,
                "event_id": event_id,
                "tenant": event.tenant,
                "subscription_id": target.subscription_id,
                "message_id": event.message_id,
                "message_type": event.message_type,
                "url": target.url,
                "leased": leased,
            }
        )
        if not leased:
            new.due.add(target.subscription_id)
            continue
        left[target.subscription_id] -= 1
        new.handed_off.append(
            ClaimedDelivery(
                id=delivery_id,
                tenant=event.tenant,
                subscription_id=target.subscription_id,
                message_id=event.message_id,
                message_type=event.message_type,
                url=target.url,
                attempt_count=0,
                payload=event.payload,
                due_time=now,
            )
        )
    return new


def outcomes(
    events: Sequence[PreparedEvent],
    first_of: Mapping[tuple[str, str], PreparedEvent],
    inserted: Collection[tuple[str, str]],
) -> list[IngestOutcome]:
    """The outcome of each of `events`, in their order: stored is the first event of each
    (tenant, message id) in `first_of` whose key was `inserted`; any other is a duplicate,
    of an event stored before or earlier in the batch."""
    results = []
    for event in events:
        key = (event.tenant, event.message_id)
        stored = key in inserted and first_of[key] is event
        results.append(
            IngestOutcome(
                message_id=event.message_id,
                duplicate=not stored,
                deliveries=len(event.targets) if stored else 0,
            )
        )
    return results
