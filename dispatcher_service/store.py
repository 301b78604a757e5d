"""Persistence of events, deliveries and attempts: the only dispatcher module that speaks SQL.

Every method is synchronous and runs in a worker thread; database failures leave as
`StoreUnavailable`, so callers answer UNAVAILABLE and never acknowledge what was not stored.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from dispatcher_service.claims import claim_statement
from dispatcher_service.domain import (
    DUE_STATES,
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
    IngestOutcome,
    PreparedEvent,
    QueueStats,
)
from dispatcher_service.models import (
    DUE_CONDITION,
    AttemptRow,
    DeliveryRow,
    EndpointHealthRow,
    EventRow,
)
from dispatcher_service.retry import after_interruption
from service_common.database import as_utc, unavailable_on_database_errors
from service_common.errors import NotFound

__all__ = ["DeliveryCursor", "DeliveryStore"]

_EVENTS = EventRow.__table__  # type: ignore[attr-defined]
_DELIVERIES = DeliveryRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]
_HEALTH = EndpointHealthRow.__table__  # type: ignore[attr-defined]


# Built once: a cached statement costs a fraction of building one per call.
_NOW = sa.bindparam("now", type_=sa.DateTime(timezone=True))
_LEASE_EXPIRES = sa.bindparam("lease_expires", type_=sa.DateTime(timezone=True))
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


# A batch goes in as one JSON document of rows: one short statement for any number of
# rows, with no per-row work in Python (a multi-row VALUES is parsed anew for each batch
# size, an executemany converts every value on its own).
_INSERT_EVENTS = {
    "postgresql": sa.text(
        "INSERT INTO events (id, tenant, message_id, message_type, payload, create_time) "
        "SELECT id, tenant, message_id, message_type, payload, :now "
        "FROM json_to_recordset(CAST(:rows AS json)) "
        "AS t (id text, tenant text, message_id text, message_type text, payload text) "
        "ON CONFLICT (tenant, message_id) DO NOTHING RETURNING tenant, message_id"
    ).bindparams(_NOW),
    # SQLite needs the WHERE to tell the upsert's ON from a join's.
    "sqlite": sa.text(
        "INSERT INTO events (id, tenant, message_id, message_type, payload, create_time) "
        "SELECT json_extract(value, '$.id'), json_extract(value, '$.tenant'), "
        "json_extract(value, '$.message_id'), json_extract(value, '$.message_type'), "
        "json_extract(value, '$.payload'), :now FROM json_each(:rows) WHERE true "
        "ON CONFLICT (tenant, message_id) DO NOTHING RETURNING tenant, message_id"
    ).bindparams(_NOW),
}
_INSERT_DELIVERIES = {
    "postgresql": sa.text(
        "INSERT INTO deliveries (id, event_id, tenant, subscription_id, message_id, "
        "message_type, url, state, attempt_count, next_attempt_time, create_time, update_time, "
        "lease_owner, lease_expires, claim_time) "
        "SELECT id, event_id, tenant, subscription_id, message_id, message_type, url, "
        ":state, 0, :now, :now, :now, CASE WHEN leased THEN CAST(:owner AS text) END, "
        "CASE WHEN leased THEN :lease_expires END, CASE WHEN leased THEN :now END "
        "FROM json_to_recordset(CAST(:rows AS json)) AS t (id text, event_id text, "
        "tenant text, subscription_id text, message_id text, message_type text, url text, "
        "leased boolean)"
    ).bindparams(_NOW, _LEASE_EXPIRES),
    "sqlite": sa.text(
        "INSERT INTO deliveries (id, event_id, tenant, subscription_id, message_id, "
        "message_type, url, state, attempt_count, next_attempt_time, create_time, update_time, "
        "lease_owner, lease_expires, claim_time) "
        "SELECT json_extract(value, '$.id'), json_extract(value, '$.event_id'), "
        "json_extract(value, '$.tenant'), json_extract(value, '$.subscription_id'), "
        "json_extract(value, '$.message_id'), json_extract(value, '$.message_type'), "
        "json_extract(value, '$.url'), :state, 0, :now, :now, :now, "
        "CASE WHEN json_extract(value, '$.leased') THEN :owner END, "
        "CASE WHEN json_extract(value, '$.leased') THEN :lease_expires END, "
        "CASE WHEN json_extract(value, '$.leased') THEN :now END FROM json_each(:rows)"
    ).bindparams(_NOW, _LEASE_EXPIRES),
}


def _as_document(rows: Sequence[Mapping[str, object]], *, now: datetime) -> dict[str, object]:
    """The parameters of the statements above for `rows` (all created at `now`); the
    rows hold the text columns, the statements set the rest."""
    return {"rows": orjson.dumps(rows).decode(), "now": now, "state": DeliveryState.PENDING.value}


@dataclass
class _Run:
    """What one batch did to an endpoint's run of failures."""

    failures: int = 0
    reset: bool = False


@dataclass(frozen=True)
class DeliveryCursor:
    """Where a page of deliveries (newest first) ends."""

    create_time: datetime
    id: str


def _new_ids(prefix: str, count: int) -> list[str]:
    """`count` unique ids that sort by creation time, as UUIDv7s do: 48 bits of unix
    milliseconds, then 80 random bits. New rows then land at the end of the primary
    key's index instead of on a random page each, which keeps commits small."""
    stamp = f"{prefix}_{time.time_ns() // 1_000_000:012x}"
    random = os.urandom(10 * count).hex()  # one system call for the whole batch
    return [stamp + random[20 * i : 20 * (i + 1)] for i in range(count)]


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


class DeliveryStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        # SQLite has one writer at a time. Threads of this process queue on a lock of
        # their own rather than in SQLite's busy handler, which polls with sleeps of up
        # to 100 ms; other processes still wait in the busy handler.
        self._write_lock = threading.Lock() if self._dialect == "sqlite" else None

    @property
    def in_process(self) -> bool:
        """Whether calls run inside this process (SQLite) rather than wait on a server."""
        return self._write_lock is not None

    @contextlib.contextmanager
    def _writing(self, *, durable: bool = True) -> Iterator[sa.Connection]:
        """A write transaction, committed on leaving the block.

        `durable=False` is for the worker's bookkeeping (leases, attempts): on SQLite its
        commit skips the fsync, so a power cut may take back the last of them, which
        costs a repeated delivery, never a lost one. The next durable commit (an
        ingestion) makes them durable too, as SQLite's log is written in order.
        """
        with contextlib.ExitStack() as stack:
            if self._write_lock is not None:
                stack.enter_context(self._write_lock)
            connection = stack.enter_context(self._engine.connect())
            if self._dialect == "sqlite":
                # A setting of the connection, made before its transaction begins.
                connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL"
                )
            with connection.begin():
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
        first_of: dict[tuple[str, str], PreparedEvent] = {}
        for event in events:
            first_of.setdefault((event.tenant, event.message_id), event)
        ids = dict(zip(first_of, _new_ids("evt", len(first_of)), strict=True))
        with self._writing() as connection:
            inserted = self._insert_events(connection, first_of, ids, now=now)
            fresh = [(ids[key], event) for key, event in first_of.items() if key in inserted]
            handed_off, due = self._insert_deliveries(connection, fresh, now=now, hand_off=hand_off)
        outcomes: list[IngestOutcome] = []
        for event in events:
            key = (event.tenant, event.message_id)
            stored = key in inserted and first_of[key] is event
            outcomes.append(
                IngestOutcome(
                    message_id=event.message_id,
                    duplicate=not stored,
                    deliveries=len(event.targets) if stored else 0,
                )
            )
        return Ingested(outcomes=outcomes, handed_off=handed_off, due=due)

    def _insert_deliveries(
        self,
        connection: sa.Connection,
        events: Sequence[tuple[str, PreparedEvent]],
        *,
        now: datetime,
        hand_off: HandOff | None,
    ) -> tuple[list[ClaimedDelivery], set[str]]:
        """Inserts the deliveries of `events` (event id, event), leasing those `hand_off`
        asks for; returns those leased and the subscriptions of the others."""
        left = dict(hand_off.counts) if hand_off is not None else {}
        rows: list[dict[str, object]] = []
        handed_off: list[ClaimedDelivery] = []
        due: set[str] = set()
        targets = [
            (event_id, event, target) for event_id, event in events for target in event.targets
        ]
        for (event_id, event, target), delivery_id in zip(
            targets, _new_ids("dlv", len(targets)), strict=True
        ):
            leased = left.get(target.subscription_id, 0) > 0
            rows.append(
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
                due.add(target.subscription_id)
                continue
            left[target.subscription_id] -= 1
            handed_off.append(
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
        if rows:
            connection.execute(
                _INSERT_DELIVERIES[self._dialect],
                {
                    **_as_document(rows, now=now),
                    "owner": None if hand_off is None else hand_off.owner,
                    "lease_expires": None if hand_off is None else hand_off.lease_expires,
                },
            )
        return handed_off, due

    def _insert_events(
        self,
        connection: sa.Connection,
        events: dict[tuple[str, str], PreparedEvent],
        ids: dict[tuple[str, str], str],
        *,
        now: datetime,
    ) -> set[tuple[str, str]]:
        if not events:
            return set()
        rows = [
            {
                "id": ids[key],
                "tenant": event.tenant,
                "message_id": event.message_id,
                "message_type": event.message_type,
                "payload": event.payload,
            }
            for key, event in events.items()
        ]
        return {
            (tenant, message_id)
            for tenant, message_id in connection.execute(
                _INSERT_EVENTS[self._dialect], _as_document(rows, now=now)
            )
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
        statement = claim_statement(
            self._dialect,
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
        runs: dict[str, _Run] = {}
        for completion in completions:
            if completion.endpoint_failed is None:
                continue
            run = runs.setdefault(completion.subscription_id, _Run())
            if completion.endpoint_failed:
                run.failures += 1
            else:
                run.failures, run.reset = 0, True
        healthy = [sid for sid, run in runs.items() if not run.failures]
        if healthy:
            connection.execute(_FORGET_HEALTH, {"subscription_ids": healthy})
        failing = []
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        for subscription_id, run in runs.items():
            if not run.failures:
                continue
            statement = insert(_HEALTH).values(
                subscription_id=subscription_id,
                consecutive_failures=run.failures,
                first_failure_time=now,
            )
            # After a success in this batch the run starts again; otherwise it goes on.
            new_run = (
                {"consecutive_failures": run.failures, "first_failure_time": now}
                if run.reset
                else {"consecutive_failures": _HEALTH.c.consecutive_failures + run.failures}
            )
            row = connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["subscription_id"], set_=new_run
                ).returning(_HEALTH.c.consecutive_failures, _HEALTH.c.first_failure_time)
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
            row = (
                connection.execute(sa.select(_DELIVERIES).where(_DELIVERIES.c.id == delivery_id))
                .mappings()
                .first()
            )
            if row is None or (tenant is not None and row["tenant"] != tenant):
                raise NotFound(f"no delivery '{delivery_id}'")
            attempts = connection.execute(
                sa.select(_ATTEMPTS)
                .where(_ATTEMPTS.c.delivery_id == delivery_id)
                .order_by(_ATTEMPTS.c.number)
            ).mappings()
            return _delivery(row, attempts=tuple(_attempt(a) for a in attempts))

    @unavailable_on_database_errors
    def page(
        self, query: DeliveryQuery, *, after: DeliveryCursor | None
    ) -> tuple[list[Delivery], DeliveryCursor | None]:
        statement = sa.select(_DELIVERIES).order_by(
            _DELIVERIES.c.create_time.desc(), _DELIVERIES.c.id.desc()
        )
        if query.tenant is not None:
            statement = statement.where(_DELIVERIES.c.tenant == query.tenant)
        if query.subscription_id is not None:
            statement = statement.where(_DELIVERIES.c.subscription_id == query.subscription_id)
        if query.message_id is not None:
            statement = statement.where(_DELIVERIES.c.message_id == query.message_id)
        if query.state is not None:
            statement = statement.where(_DELIVERIES.c.state == query.state.value)
        if after is not None:
            statement = statement.where(
                sa.or_(
                    _DELIVERIES.c.create_time < after.create_time,
                    sa.and_(
                        _DELIVERIES.c.create_time == after.create_time,
                        _DELIVERIES.c.id < after.id,
                    ),
                )
            )
        with self._engine.connect() as connection:
            rows = list(connection.execute(statement.limit(query.page_size + 1)).mappings())
        found = [_delivery(row) for row in rows[: query.page_size]]
        more = len(rows) > query.page_size
        return found, (DeliveryCursor(found[-1].create_time, found[-1].id) if more else None)

    @unavailable_on_database_errors
    def redeliver_event(
        self, *, tenant: str | None, message_id: str, subscription_id: str | None, now: datetime
    ) -> list[str]:
        """Schedules every delivery of one event (or of one subscription) for now."""
        where = [_DELIVERIES.c.message_id == message_id]
        if tenant is not None:
            where.append(_DELIVERIES.c.tenant == tenant)
        if subscription_id is not None:
            where.append(_DELIVERIES.c.subscription_id == subscription_id)
        ids = self._reschedule(where, now=now)
        if not ids:
            raise NotFound(f"no deliveries of event '{message_id}'")
        return ids

    @unavailable_on_database_errors
    def redeliver_failed(
        self, *, tenant: str | None, subscription_id: str, since: datetime, now: datetime
    ) -> list[str]:
        """Schedules every failed or dead delivery of a subscription created since `since`."""
        where = [
            _DELIVERIES.c.subscription_id == subscription_id,
            _DELIVERIES.c.create_time >= since,
            sa.or_(
                _DELIVERIES.c.state == DeliveryState.DEAD.value,
                sa.and_(
                    _DELIVERIES.c.state == DeliveryState.RETRYING.value,
                    _DELIVERIES.c.attempt_count > 0,
                ),
            ),
        ]
        if tenant is not None:
            where.append(_DELIVERIES.c.tenant == tenant)
        return self._reschedule(where, now=now)

    def _reschedule(self, where: list[sa.ColumnElement[bool]], *, now: datetime) -> list[str]:
        # Deliveries a worker holds right now are left to it: they are being sent already.
        # A lease that ran out stays, so the next claim records the attempt it cut short.
        not_in_flight = sa.or_(
            _DELIVERIES.c.lease_expires.is_(None), _DELIVERIES.c.lease_expires < now
        )
        with self._writing() as connection:
            rows = connection.execute(
                sa.update(_DELIVERIES)
                .where(*where, not_in_flight)
                .values(state=DeliveryState.PENDING.value, next_attempt_time=now, update_time=now)
                .returning(_DELIVERIES.c.id)
            )
            return [row[0] for row in rows]

    @unavailable_on_database_errors
    def queue_stats(self, *, now: datetime) -> QueueStats:
        """What waits to be sent, read through the partial index of due deliveries."""
        due = sa.text(DUE_CONDITION)
        with self._engine.connect() as connection:
            rows = connection.execute(
                sa.select(_DELIVERIES.c.state, sa.func.count())
                .where(due)
                .group_by(_DELIVERIES.c.state)
            )
            depth: dict[str, int] = dict(rows.all())
            oldest = connection.execute(
                sa.select(sa.func.min(_DELIVERIES.c.next_attempt_time)).where(
                    due, _DELIVERIES.c.next_attempt_time <= now
                )
            ).scalar()
        return QueueStats(
            depth={state: depth.get(state.value, 0) for state in DUE_STATES},
            oldest_due_time=None if oldest is None else as_utc(oldest),
        )

    @unavailable_on_database_errors
    def counts_by_state(self) -> dict[DeliveryState, int]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                sa.select(_DELIVERIES.c.state, sa.func.count()).group_by(_DELIVERIES.c.state)
            )
            return {DeliveryState(state): count for state, count in rows}


def _attempt_row(delivery_id: str, attempt: Attempt) -> dict[str, object]:
    """The columns of an attempts row, cut to their lengths."""
    return {
        "delivery_id": delivery_id,
        "number": attempt.number,
        "start_time": attempt.start_time,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error[:1024],
        "response_snippet": attempt.response_snippet[:2048],
    }


def _attempt(row: sa.RowMapping) -> Attempt:
    return Attempt(
        number=row["number"],
        start_time=as_utc(row["start_time"]),
        status_code=row["status_code"],
        latency_ms=row["latency_ms"],
        error=row["error"],
        response_snippet=row["response_snippet"],
    )


def _delivery(row: sa.RowMapping, *, attempts: tuple[Attempt, ...] = ()) -> Delivery:
    return Delivery(
        id=row["id"],
        tenant=row["tenant"],
        subscription_id=row["subscription_id"],
        message_id=row["message_id"],
        message_type=row["message_type"],
        url=row["url"],
        state=DeliveryState(row["state"]),
        attempt_count=row["attempt_count"],
        next_attempt_time=_utc_or_none(row["next_attempt_time"]),
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
        attempts=attempts,
    )
