"""Persistence of events, deliveries and attempts: all the dispatcher stores goes through here.

What differs between SQLite and PostgreSQL is the backend's (see `queue_backend`); what
operators read and replay is in `delivery_queries`. Every method is synchronous and runs
in a worker thread; database failures leave as `StoreUnavailable`, so callers answer
UNAVAILABLE and never acknowledge what was not stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher_service import delivery_queries, ingest_rows
from dispatcher_service.delivery_queries import DeliveryCursor
from dispatcher_service.domain import (
    Attempt,
    ClaimedBatch,
    ClaimedDelivery,
    Completion,
    Delivery,
    DeliveryQuery,
    DeliveryState,
    EndpointHealth,
    HandOff,
    Ingested,
    PreparedEvent,
    QueueStats,
)
from dispatcher_service.models import AttemptRow, DeliveryRow, EndpointHealthRow
from dispatcher_service.queue_backend import QueueBackend, as_document
from dispatcher_service.queue_postgres import PostgresQueue
from dispatcher_service.queue_sqlite import SQLiteQueue
from dispatcher_service.retry import after_interruption, endpoint_runs
from service_common.database import as_utc, unavailable_on_database_errors

__all__ = ["DeliveryCursor", "DeliveryStore"]

_DELIVERIES = DeliveryRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]
_HEALTH = EndpointHealthRow.__table__  # type: ignore[attr-defined]


# Built once: a cached statement costs a fraction of building one per call.
_NOW = sa.bindparam("now", type_=sa.DateTime(timezone=True))
_COMPLETE = (
    sa.update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id.in_(sa.bindparam("b_ids", expanding=True)),
        _DELIVERIES.c.lease_owner == sa.bindparam("b_owner"),
        # Its attempt follows those recorded when it was claimed. A claim after its lease
        # ran out recorded one more (interrupted), which fences off a late answer even
        # when the same worker claimed it again.
        _DELIVERIES.c.attempt_count == sa.bindparam("b_attempts", type_=sa.Integer) - 1,
    )
    .values(
        state=sa.bindparam("b_state"),
        attempt_count=sa.bindparam("b_attempts"),
        next_attempt_time=sa.bindparam("b_next", type_=sa.DateTime(timezone=True)),
        lease_owner=None,
        lease_expires=None,
        update_time=sa.bindparam("b_now", type_=sa.DateTime(timezone=True)),
    )
    .returning(_DELIVERIES.c.id)
)
# The deliveries `ids` while `owner` still holds them.
_HELD_BY_OWNER = (
    _DELIVERIES.c.id.in_(sa.bindparam("ids", expanding=True)),
    _DELIVERIES.c.lease_owner == sa.bindparam("owner"),
)
# A claimed delivery whose lease had run out: the attempt it cut short is counted, and it
# is sent again at once (see `retry.after_interruption`), or it is dead.
_RETRY_INTERRUPTED = (
    sa.update(_DELIVERIES)
    .where(*_HELD_BY_OWNER)
    .values(
        state=DeliveryState.RETRYING.value,
        attempt_count=_DELIVERIES.c.attempt_count + 1,
        claim_time=_NOW,
        update_time=_NOW,
    )
)
_END_INTERRUPTED = (
    sa.update(_DELIVERIES)
    .where(*_HELD_BY_OWNER)
    .values(
        state=DeliveryState.DEAD.value,
        attempt_count=_DELIVERIES.c.attempt_count + 1,
        next_attempt_time=None,
        lease_owner=None,
        lease_expires=None,
        update_time=_NOW,
    )
)
_LOST_CLAIM_TIMES = sa.select(_DELIVERIES.c.id, _DELIVERIES.c.claim_time).where(
    _DELIVERIES.c.id.in_(sa.bindparam("ids", expanding=True))
)
_UNCLAIM = (
    sa.update(_DELIVERIES).where(*_HELD_BY_OWNER).values(lease_owner=None, lease_expires=None)
)
_FORGET_HEALTH = sa.delete(_HEALTH).where(
    _HEALTH.c.subscription_id.in_(sa.bindparam("subscription_ids", expanding=True))
)
_INSERT_ATTEMPTS = sa.insert(_ATTEMPTS)


# The backend of each database the store runs on.
_BACKENDS: dict[str, Callable[[], QueueBackend]] = {
    "postgresql": PostgresQueue,
    "sqlite": SQLiteQueue,
}


class DeliveryStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._backend = _BACKENDS[engine.dialect.name]()

    @property
    def in_process(self) -> bool:
        """Whether calls run inside this process (SQLite) rather than wait on a server."""
        return self._backend.in_process

    def write_turn(self) -> AbstractContextManager[sa.Connection]:
        """A connection holding this process's turn to write, before its transaction
        begins: for another writer of the same database (pruning), so that on SQLite the
        store's writers wait for it on a lock, woken at once, instead of sleeping in
        SQLite's busy handler (on the event loop, for claims and records).

        Its commits are not made durable on their own (see `_writing`): what a power cut
        takes back is pruned again by the next run, and the turn is held shorter.
        """
        return self._backend.writing(self._engine, durable=False)

    @contextlib.contextmanager
    def _writing(self, *, durable: bool = True) -> Iterator[sa.Connection]:
        """A write transaction, committed on leaving the block.

        `durable=False` is for the worker's bookkeeping (leases, attempts): a power cut
        may take back the last of them, which costs a repeated delivery, never a lost one.
        """
        with (
            self._backend.writing(self._engine, durable=durable) as connection,
            connection.begin(),
        ):
            yield connection

    @unavailable_on_database_errors
    def ingest(
        self, events: Sequence[PreparedEvent], *, now: datetime, hand_off: HandOff | None = None
    ) -> Ingested:
        """Stores new events with their deliveries in one transaction; skips duplicates.

        Outcomes come in the order of `events`. A message id seen twice in `events` is
        stored once; the later ones are duplicates. Given `hand_off`, the deliveries it
        asks for are stored leased to its owner (see `HandOff`) and returned, ready to send.
        """
        first_of = ingest_rows.first_of(events)
        ids = dict(zip(first_of, ingest_rows.new_ids("evt", len(first_of)), strict=True))
        with self._writing() as connection:
            inserted = self._insert_events(connection, first_of, ids, now=now)
            fresh = [(ids[key], event) for key, event in first_of.items() if key in inserted]
            new = self._insert_deliveries(connection, fresh, now=now, hand_off=hand_off)
        return Ingested(
            outcomes=ingest_rows.outcomes(events, first_of, inserted),
            handed_off=new.handed_off,
            due=new.due,
        )

    def _insert_deliveries(
        self,
        connection: sa.Connection,
        events: Sequence[tuple[str, PreparedEvent]],
        *,
        now: datetime,
        hand_off: HandOff | None,
    ) -> ingest_rows.NewDeliveries:
        """Inserts the deliveries of `events` (event id, event), leasing those `hand_off`
        asks for."""
        new = ingest_rows.delivery_rows(events, now=now, hand_off=hand_off)
        if new.rows:
            connection.execute(
                self._backend.insert_deliveries,
                {
                    **as_document(new.rows, now=now),
                    "owner": None if hand_off is None else hand_off.owner,
                    "lease_expires": None if hand_off is None else hand_off.lease_expires,
                },
            )
        return new

    def _insert_events(
        self,
        connection: sa.Connection,
        events: dict[tuple[str, str], PreparedEvent],
        ids: dict[tuple[str, str], str],
        *,
        now: datetime,
    ) -> set[tuple[str, str]]:
        """Inserts `events` under `ids`; returns the keys of those not stored already."""
        if not events:
            return set()
        document = as_document(ingest_rows.event_rows(events, ids), now=now)
        return {
            (tenant, message_id)
            for tenant, message_id in connection.execute(self._backend.insert_events, document)
        }

    @unavailable_on_database_errors
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
        """Leases the (up to `limit`) longest due deliveries to `owner`: none of the
        subscriptions in `excluded`; given `due_after`, only those due after it; given
        `only`, only those of that subscription. Returns them in the order they were
        created.

        A delivery whose lease ran out before its answer was recorded gets, in the same
        transaction, an attempt row marked interrupted (numbered after those recorded,
        timed when the lost lease was taken); `after_interruption` with the schedule's
        `max_attempts` decides whether it is sent again or is dead.
        """
        parameters: dict[str, object] = {
            "owner": owner,
            "now": now,
            "lease_until": now + lease,
            "limit": limit,
        }
        if excluded:
            parameters["excluded"] = list(excluded)
        if due_after is not None:
            parameters["after"] = due_after
        if only is not None:
            parameters["only"] = only
        statement = self._backend.claim_statement(
            excluding=bool(excluded),
            after=due_after is not None,
            only=only is not None,
        )
        dead: set[str] = set()
        with self._writing(durable=False) as connection:
            rows = connection.execute(statement, parameters).all()
            # Rare: only where a dispatcher died or stalled with deliveries leased.
            if cut_short := [row for row in rows if row[9]]:
                dead = self._record_interrupted(
                    connection,
                    cut_short,
                    owner=owner,
                    now=now,
                    lease=lease,
                    max_attempts=max_attempts,
                )
        claimed = [
            ClaimedDelivery(
                id=row[0],
                tenant=row[1],
                subscription_id=row[2],
                message_id=row[3],
                message_type=row[4],
                url=row[5],
                attempt_count=row[6],
                payload=row[7],
                due_time=as_utc(row[8]),
            )
            for row in rows
        ]
        # Ids sort by creation time; RETURNING keeps no order.
        claimed.sort(key=lambda delivery: delivery.id)
        if not cut_short:
            return ClaimedBatch(deliveries=claimed, interrupted=[], dead=[])
        counted = {row[0] for row in cut_short}
        # With the attempt cut short counted.
        claimed = [
            replace(d, attempt_count=d.attempt_count + 1) if d.id in counted else d for d in claimed
        ]
        return ClaimedBatch(
            deliveries=[d for d in claimed if d.id not in dead],
            interrupted=[d for d in claimed if d.id in counted and d.id not in dead],
            dead=[d for d in claimed if d.id in dead],
        )

    def _record_interrupted(
        self,
        connection: sa.Connection,
        rows: Sequence[Sequence[Any]],
        *,
        owner: str,
        now: datetime,
        lease: timedelta,
        max_attempts: int,
    ) -> set[str]:
        """Records the attempts that the claimed `rows` had cut short when their leases
        ran out, and what that makes of them; returns the ids of those now dead."""
        # Read here rather than returned by every claim: parsing a time per row would
        # cost each claim of new deliveries more than all of this.
        claimed_at: dict[str, datetime | None] = dict(
            connection.execute(_LOST_CLAIM_TIMES, {"ids": [row[0] for row in rows]}).all()
        )
        attempts: list[dict[str, object]] = []
        ends: dict[DeliveryState, list[str]] = {DeliveryState.RETRYING: [], DeliveryState.DEAD: []}
        for row in rows:
            number = row[6] + 1
            lost = claimed_at[row[0]]
            # A lease taken before the claim_time column existed: at least a lease ago.
            claim_time = now - lease if lost is None else as_utc(lost)
            attempts.append(
                _attempt_row(row[0], Attempt.interrupted_at(number=number, claim_time=claim_time))
            )
            ends[after_interruption(number=number, max_attempts=max_attempts)].append(row[0])
        for state, statement in (
            (DeliveryState.RETRYING, _RETRY_INTERRUPTED),
            (DeliveryState.DEAD, _END_INTERRUPTED),
        ):
            if ends[state]:
                connection.execute(statement, {"ids": ends[state], "owner": owner, "now": now})
        connection.execute(_INSERT_ATTEMPTS, attempts)
        return set(ends[DeliveryState.DEAD])

    @unavailable_on_database_errors
    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]:
        """Records attempts, new states and endpoint health in one transaction.

        Returns the health of every endpoint that failed in this batch. A delivery claimed
        again since its attempt (this worker was too slow, and its lease ran out) is left
        alone, even when this worker claimed it again: that claim recorded the attempt as
        interrupted, and its state is the new claim's.
        """
        if not completions:
            return []
        # A delivery this worker sent twice (its lease ran out while the database was away
        # and it claimed it again before recording the first send) has two completions
        # here, under two numbers: the claim recorded the first as interrupted, and
        # `_COMPLETE` holds only the later one, so the attempts' key never clashes.
        # The UPDATEs come first (so SQLite takes its write lock, and PostgreSQL locks
        # the rows, before anything is read) and name the deliveries this worker still
        # held. Deliveries that end alike (most succeed at their first attempt) share one.
        alike: dict[tuple[DeliveryState, int, datetime | None], list[str]] = {}
        for completion in completions:
            key = (completion.state, completion.attempt.number, completion.next_attempt_time)
            alike.setdefault(key, []).append(completion.delivery_id)
        with self._writing(durable=False) as connection:
            held: set[tuple[str, int]] = set()
            for (state, attempts, next_time), ids in alike.items():
                held.update(
                    (row[0], attempts)
                    for row in connection.execute(
                        _COMPLETE,
                        {
                            "b_ids": ids,
                            "b_owner": owner,
                            "b_state": state.value,
                            "b_attempts": attempts,
                            "b_next": next_time,
                            "b_now": now,
                        },
                    )
                )
            recorded = [c for c in completions if (c.delivery_id, c.attempt.number) in held]
            if recorded:
                connection.execute(
                    _INSERT_ATTEMPTS,
                    [_attempt_row(c.delivery_id, c.attempt) for c in recorded],
                )
            return self._record_endpoints(connection, recorded, now=now)

    def _record_endpoints(
        self, connection: sa.Connection, completions: Sequence[Completion], *, now: datetime
    ) -> list[EndpointHealth]:
        runs = endpoint_runs(completions)
        healthy = [sid for sid, run in runs.items() if not run.failures]
        if healthy:
            connection.execute(_FORGET_HEALTH, {"subscription_ids": healthy})
        failing = []
        for subscription_id, run in runs.items():
            if not run.failures:
                continue
            # After a success in this batch the run starts again; otherwise it goes on.
            row = connection.execute(
                self._backend.upsert_health(restart=run.restart),
                {"subscription": subscription_id, "failures": run.failures, "now": now},
            ).one()
            failing.append(
                EndpointHealth(
                    subscription_id=subscription_id,
                    consecutive_failures=row[0],
                    first_failure_time=as_utc(row[1]),
                )
            )
        return failing

    @unavailable_on_database_errors
    def forget_endpoint(self, *, subscription_id: str) -> None:
        """Ends the current run of failures of a subscription's endpoint."""
        with self._writing(durable=False) as connection:
            connection.execute(
                sa.delete(_HEALTH).where(_HEALTH.c.subscription_id == subscription_id)
            )

    @unavailable_on_database_errors
    def unclaim(self, *, ids: Sequence[str], owner: str) -> None:
        """Gives back the leases of `ids` untouched: no attempt, due as they were."""
        with self._writing(durable=False) as connection:
            connection.execute(_UNCLAIM, {"ids": list(ids), "owner": owner})

    @unavailable_on_database_errors
    def release(self, *, owner: str) -> None:
        """Gives back the leases of `owner` (on shutdown), so others need not wait them out."""
        with self._writing() as connection:
            connection.execute(
                sa.update(_DELIVERIES)
                .where(_DELIVERIES.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None)
            )

    @unavailable_on_database_errors
    def get(self, delivery_id: str, *, tenant: str | None) -> Delivery:
        with self._engine.connect() as connection:
            return delivery_queries.get(connection, delivery_id, tenant=tenant)

    @unavailable_on_database_errors
    def page(
        self, query: DeliveryQuery, *, after: DeliveryCursor | None
    ) -> tuple[list[Delivery], DeliveryCursor | None]:
        with self._engine.connect() as connection:
            return delivery_queries.page(connection, query, after=after)

    @unavailable_on_database_errors
    def redeliver_event(
        self, *, tenant: str | None, message_id: str, subscription_id: str | None, now: datetime
    ) -> list[str]:
        """Schedules every delivery of one event (or of one subscription) for now."""
        with self._writing() as connection:
            return delivery_queries.redeliver_event(
                connection,
                tenant=tenant,
                message_id=message_id,
                subscription_id=subscription_id,
                now=now,
            )

    @unavailable_on_database_errors
    def redeliver_failed(
        self, *, tenant: str | None, subscription_id: str, since: datetime, now: datetime
    ) -> list[str]:
        """Schedules every failed or dead delivery of a subscription created since `since`."""
        with self._writing() as connection:
            return delivery_queries.redeliver_failed(
                connection, tenant=tenant, subscription_id=subscription_id, since=since, now=now
            )

    @unavailable_on_database_errors
    def queue_stats(self, *, now: datetime, tenant: str | None = None) -> QueueStats:
        """What waits to be sent (of `tenant`'s deliveries, or everyone's when None), read
        through the partial index of due deliveries."""
        with self._engine.connect() as connection:
            return delivery_queries.queue_stats(connection, now=now, tenant=tenant)

    @unavailable_on_database_errors
    def counts_by_state(self) -> dict[DeliveryState, int]:
        with self._engine.connect() as connection:
            return delivery_queries.counts_by_state(connection)


def _attempt_row(delivery_id: str, attempt: Attempt) -> dict[str, object]:
    """The columns of an attempts row, cut to their lengths."""
    attempt = attempt.as_kept()
    return {
        "delivery_id": delivery_id,
        "number": attempt.number,
        "start_time": attempt.start_time,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "response_snippet": attempt.response_snippet,
    }
