"""What the dispatcher keeps, and for how long: the rules of pruning and payload expunge.

An event is prunable (deleted with its deliveries and attempts) once it is older than the
retention window, every delivery of it is finished (succeeded or dead), and none was
touched within the window either: a delivery redelivered last week is kept as long as
one created last week. Work still due is never pruned. The payload expunge follows the
same rule with its own, shorter window, and keeps the rows. `pruning` says the same in
SQL; these functions are the rule itself, and what a run reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher_service.domain import DeliveryState
from dispatcher_service.settings import DispatcherSettings

__all__ = [
    "FINISHED_STATES",
    "Pace",
    "PrunedRows",
    "RetentionPolicy",
    "expunged_events_message",
    "expunged_message",
    "prunable",
    "run_summary",
]

FINISHED_STATES = (DeliveryState.SUCCEEDED, DeliveryState.DEAD)


@dataclass(frozen=True)
class Pace:
    """How hard a run presses on the database: batches sized to take about
    `batch_seconds` each, and after each a pause that leaves the database to ingestion and
    delivery for the rest of the time: pruning holds it for at most `share` of a run.

    A writer that needs the database waits for the batch in progress (on SQLite, for the
    one write turn): short batches bound that wait, and the pauses bound how often it
    happens. Measured by `bench/backlog.py`: a fixed batch of 1,000 events with 5 ms
    pauses doubled ingestion's p99.
    """

    batch_seconds: float = 0.005
    share: float = 0.5
    # A batch grows at most this much at a time: one fast batch (a warm cache) must not
    # make the next one hold the database for long.
    max_growth: float = 2.0
    # Nor does it shrink below this many events: a batch has a cost of its own (round
    # trips to a server), and a run of tiny batches would never catch up.
    min_size: int = 100

    def next_size(self, size: int, seconds: float, *, largest: int) -> int:
        """The size of the batch after one of `size` events that took `seconds`."""
        if seconds <= 0:
            aimed = size * self.max_growth
        else:
            aimed = min(size * self.batch_seconds / seconds, size * self.max_growth)
        return min(largest, max(self.min_size, int(aimed)))

    def pause(self, seconds: float) -> float:
        """The pause after a batch that took `seconds`."""
        return seconds * (1 - self.share) / self.share


@dataclass(frozen=True)
class RetentionPolicy:
    """How long finished events (`days`) and their payloads (`payload_days`) are kept;
    0 days keeps events forever, None keeps payloads as long as their events."""

    days: float
    payload_days: float | None = None

    @classmethod
    def of(cls, settings: DispatcherSettings) -> RetentionPolicy:
        return cls(days=settings.retention_days, payload_days=settings.payload_retention_days)

    @property
    def active(self) -> bool:
        """Whether anything is ever removed."""
        return self.days > 0 or self.payload_days is not None

    def prune_cutoff(self, now: datetime) -> datetime | None:
        """Events finished and created before this are deleted; None: none are."""
        return now - timedelta(days=self.days) if self.days > 0 else None

    def expunge_cutoff(self, now: datetime) -> datetime | None:
        """Events finished and created before this lose their payload; None: none do."""
        if self.payload_days is None:
            return None
        return now - timedelta(days=self.payload_days)


def prunable(
    create_time: datetime,
    deliveries: Iterable[tuple[DeliveryState, datetime]],
    *,
    cutoff: datetime,
) -> bool:
    """Whether an event created at `create_time` with `deliveries` (state, update time)
    is past `cutoff`: created before it, every delivery finished and last changed before
    it. An event without deliveries (nobody subscribed) needs only to be old enough."""
    return create_time < cutoff and all(
        state in FINISHED_STATES and update_time < cutoff for state, update_time in deliveries
    )


@dataclass(frozen=True)
class PrunedRows:
    """Rows deleted, by table."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0

    def __add__(self, other: PrunedRows) -> PrunedRows:
        return PrunedRows(
            self.events + other.events,
            self.deliveries + other.deliveries,
            self.attempts + other.attempts,
        )

    def by_table(self) -> dict[str, int]:
        return {"events": self.events, "deliveries": self.deliveries, "attempts": self.attempts}


def expunged_message(message_id: str, expunge_time: datetime) -> str:
    """Why an event cannot be delivered again once its payload is gone."""
    return (
        f"the payload of event {message_id} was expunged on {expunge_time.date().isoformat()} "
        "(DISPATCHER_PAYLOAD_RETENTION_DAYS); it cannot be delivered again"
    )


def expunged_events_message(count: int, last: datetime) -> str:
    """Why `count` events (expunged, the last on `last`) cannot be delivered again."""
    return (
        f"the payloads of the {count} events asked for were expunged, the last on "
        f"{last.date().isoformat()} (DISPATCHER_PAYLOAD_RETENTION_DAYS); they cannot be "
        "delivered again"
    )


def run_summary(
    pruned: PrunedRows, expunged: int, *, policy: RetentionPolicy, seconds: float
) -> str:
    """The log line of a pruning run."""
    parts = [
        f"pruned {pruned.events} events, {pruned.deliveries} deliveries, "
        f"{pruned.attempts} attempts older than {policy.days:g} days"
        if policy.days > 0
        else "pruning off"
    ]
    if policy.payload_days is not None:
        parts.append(f"expunged {expunged} payloads older than {policy.payload_days:g} days")
    return f"{'; '.join(parts)} in {seconds:.1f} s"
