"""The SQL of retention: finished events deleted in short batches, payloads emptied, and
what a run would do counted beforehand. The rule itself is `retention.prunable`.

Each batch is one short transaction, so ingestion and delivery get the database between
batches. Deletes are explicit, children first: nothing relies on foreign key cascades.

A batch must never delete (or empty) an event that a redelivery is making due again at
the same moment: that redelivery would be lost. On PostgreSQL a batch locks the events
it picked `FOR UPDATE SKIP LOCKED`, then checks them again in a new statement, whose
snapshot is taken after the locks: a redelivery locks its events `FOR SHARE` before
touching their deliveries (see `delivery_queries`), so either it committed before the
locks (and the check sees its deliveries due, or changed too recently), or it holds its
lock (and the batch skips the event), or it waits for the batch (and finds the event gone,
or expunged). On SQLite a batch holds the database's single write lock from its first
read (`BEGIN IMMEDIATE`), so nothing changes under it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher_service.domain import DeliveryState
from dispatcher_service.models import (
    DUE_CONDITION,
    AttemptRow,
    DeliveryRow,
    EventRow,
)
from dispatcher_service.retention import FINISHED_STATES, PrunedRows, expunged_message
from service_common.database import as_utc, unavailable_on_database_errors

__all__ = ["EventPruner", "Preview", "RunLock"]

log = logging.getLogger(__name__)

_EVENTS = EventRow.__table__  # type: ignore[attr-defined]
_DELIVERIES = DeliveryRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]
# Held by the replica that prunes now (session-level: released if its process dies).
PRUNE_LOCK_ID = 0x5B5C_1001

_IDS: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
_DELETE_ATTEMPTS = sa.delete(_ATTEMPTS).where(
    _ATTEMPTS.c.delivery_id.in_(sa.select(_DELIVERIES.c.id).where(_DELIVERIES.c.event_id.in_(_IDS)))
)
_DELETE_DELIVERIES = sa.delete(_DELIVERIES).where(_DELIVERIES.c.event_id.in_(_IDS))
_DELETE_EVENTS = sa.delete(_EVENTS).where(_EVENTS.c.id.in_(_IDS))
_EXPUNGE = (
    sa.update(_EVENTS)
    .where(_EVENTS.c.id.in_(_IDS))
    .values(payload="", payload_expunge_time=sa.bindparam("now", type_=sa.DateTime(timezone=True)))
)
_LOCK = sa.select(_EVENTS.c.id).where(_EVENTS.c.id.in_(_IDS)).with_for_update(skip_locked=True)
_NOT_EXPUNGED: sa.ColumnElement[bool] = _EVENTS.c.payload_expunge_time.is_(None)


def _kept_back(cutoff: datetime) -> sa.Exists:
    """A delivery of the event is still due, or changed on or after `cutoff`."""
    blocking = _DELIVERIES.alias("blocking")
    return sa.exists().where(
        blocking.c.event_id == _EVENTS.c.id,
        sa.or_(
            blocking.c.state.not_in([state.value for state in FINISHED_STATES]),
            blocking.c.update_time >= cutoff,
        ),
    )


def _past(cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    """`retention.prunable` in SQL, of the event row."""
    return [_EVENTS.c.create_time < cutoff, ~_kept_back(cutoff)]


def _expungeable(cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    return [*_past(cutoff), _NOT_EXPUNGED]


@dataclass(frozen=True)
class Preview:
    """What a run would do now: rows deleted by table, the oldest event deleted, and the
    payloads emptied (of events it keeps)."""

    pruned: PrunedRows
    oldest: datetime | None
    expunged: int


class RunLock:
    """This replica's turn to prune, held until `release`; on SQLite a mere token."""

    def __init__(self, connection: sa.Connection | None = None) -> None:
        self._connection = connection

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(
                sa.text("SELECT pg_advisory_unlock(:id)"), {"id": PRUNE_LOCK_ID}
            )
        except sa.exc.DBAPIError:
            # A session that cannot unlock must not go back to the pool holding the lock.
            self._connection.invalidate()
        finally:
            self._connection.close()
            self._connection = None


class EventPruner:
    """Prunes and expunges the dispatcher's database in batches. Every method is
    synchronous (run it in a thread); database failures leave as `StoreUnavailable`."""

    def __init__(
        self,
        engine: Engine,
        *,
        write_turn: Callable[[], AbstractContextManager[sa.Connection]] | None = None,
    ) -> None:
        """`write_turn` gives a connection holding this process's turn to write (the
        store's `write_turn`); without it, any connection of `engine`."""
        self._engine = engine
        self._write_turn = write_turn or engine.connect
        self._postgres = engine.dialect.name == "postgresql"

    @unavailable_on_database_errors
    def try_lock(self) -> RunLock | None:
        """The turn to prune, or None while another replica has it (PostgreSQL)."""
        if not self._postgres:
            return RunLock()  # one writer at a time anyway: batches simply take turns
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:id)"), {"id": PRUNE_LOCK_ID}
            ).scalar()
        except BaseException:
            connection.close()
            raise
        if got:
            return RunLock(connection)
        connection.close()
        return None

    @unavailable_on_database_errors
    def prune_batch(self, cutoff: datetime, limit: int) -> PrunedRows:
        """Deletes up to `limit` prunable events, oldest first, with their deliveries and
        attempts; what it deleted."""
        with self._transaction() as connection:
            ids = self._take(connection, _past(cutoff), limit)
            if not ids:
                return PrunedRows()
            return PrunedRows(
                attempts=connection.execute(_DELETE_ATTEMPTS, {"ids": ids}).rowcount,
                deliveries=connection.execute(_DELETE_DELIVERIES, {"ids": ids}).rowcount,
                events=connection.execute(_DELETE_EVENTS, {"ids": ids}).rowcount,
            )

    @unavailable_on_database_errors
    def expunge_batch(self, cutoff: datetime, limit: int, *, now: datetime) -> int:
        """Empties the payloads of up to `limit` expungeable events, oldest first (their
        rows stay); how many it emptied."""
        with self._transaction() as connection:
            ids = self._take(connection, _expungeable(cutoff), limit)
            if not ids:
                return 0
            return int(connection.execute(_EXPUNGE, {"ids": ids, "now": now}).rowcount)

    @unavailable_on_database_errors
    def end_stranded(self, *, now: datetime, limit: int) -> int:
        """Ends, dead, up to `limit` due deliveries whose event has no payload any more,
        each with an attempt saying why; how many it ended.

        None should exist (an event is expunged only when all its deliveries are finished,
        and redeliveries refuse it): this is the safety net for what changed the database
        otherwise. Claims never take them (see `claims`), so nothing is sent empty.
        """
        with self._transaction() as connection:
            rows = connection.execute(_stranded(now, limit, lock=self._postgres)).all()
            if not rows:
                return 0
            connection.execute(
                sa.update(_DELIVERIES)
                .where(_DELIVERIES.c.id.in_([row.id for row in rows]))
                .values(
                    state=DeliveryState.DEAD.value,
                    attempt_count=_DELIVERIES.c.attempt_count + 1,
                    next_attempt_time=None,
                    lease_owner=None,
                    lease_expires=None,
                    update_time=now,
                )
            )
            connection.execute(sa.insert(_ATTEMPTS), [_stranded_attempt(row, now) for row in rows])
        log.warning("%d due deliveries of expunged events ended dead", len(rows))
        return len(rows)

    @unavailable_on_database_errors
    def preview(self, prune_cutoff: datetime | None, expunge_cutoff: datetime | None) -> Preview:
        """What a run would prune and expunge now, changing nothing."""
        with self._engine.connect() as connection:
            pruned, oldest = PrunedRows(), None
            if prune_cutoff is not None:
                pruned, oldest = _count_prunable(connection, prune_cutoff)
            expunged = 0
            if expunge_cutoff is not None:
                kept = [] if prune_cutoff is None else [~sa.and_(*_past(prune_cutoff))]
                expunged = connection.execute(
                    sa.select(sa.func.count()).where(*_expungeable(expunge_cutoff), *kept)
                ).scalar_one()
        return Preview(pruned=pruned, oldest=oldest, expunged=expunged)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One short write transaction, committed on leaving the block."""
        with self._write_turn() as connection:
            if not self._postgres:
                # Python's sqlite3 would begin only at the first write: the reads that
                # pick the rows would see the database before another writer's commit.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection
            connection.commit()

    def _take(
        self, connection: sa.Connection, conditions: list[sa.ColumnElement[bool]], limit: int
    ) -> list[str]:
        """The ids of up to `limit` events meeting `conditions`, oldest first, which this
        transaction may change: locked, and found meeting them still, on PostgreSQL."""
        picked = list(
            connection.execute(
                sa.select(_EVENTS.c.id)
                .where(*conditions)
                .order_by(_EVENTS.c.create_time)
                .limit(limit)
            ).scalars()
        )
        if not picked or not self._postgres:
            return picked
        locked = list(connection.execute(_LOCK, {"ids": picked}).scalars())
        if not locked:
            return []
        # A statement of its own: its snapshot is taken after the locks above.
        return list(
            connection.execute(
                sa.select(_EVENTS.c.id).where(_EVENTS.c.id.in_(locked), *conditions)
            ).scalars()
        )


def _count_prunable(
    connection: sa.Connection, cutoff: datetime
) -> tuple[PrunedRows, datetime | None]:
    events = sa.select(_EVENTS.c.id).where(*_past(cutoff)).subquery()
    deliveries = sa.select(_DELIVERIES.c.id).where(_DELIVERIES.c.event_id.in_(sa.select(events)))
    counted, oldest = connection.execute(
        sa.select(sa.func.count(), sa.func.min(_EVENTS.c.create_time)).where(*_past(cutoff))
    ).one()
    pruned = PrunedRows(
        events=counted,
        deliveries=connection.execute(
            sa.select(sa.func.count()).select_from(deliveries.subquery())
        ).scalar_one(),
        attempts=connection.execute(
            sa.select(sa.func.count()).where(_ATTEMPTS.c.delivery_id.in_(deliveries))
        ).scalar_one(),
    )
    return pruned, None if oldest is None else as_utc(oldest)


def _stranded(now: datetime, limit: int, *, lock: bool) -> sa.Select[Any]:
    """Due deliveries not in flight whose event was expunged, with what their attempt says."""
    statement = (
        sa.select(
            _DELIVERIES.c.id,
            _DELIVERIES.c.attempt_count,
            _EVENTS.c.message_id,
            _EVENTS.c.payload_expunge_time,
        )
        .join(_EVENTS, _EVENTS.c.id == _DELIVERIES.c.event_id)
        .where(
            sa.text(f"deliveries.{DUE_CONDITION}"),
            _EVENTS.c.payload_expunge_time.is_not(None),
            sa.or_(_DELIVERIES.c.lease_expires.is_(None), _DELIVERIES.c.lease_expires < now),
        )
        .limit(limit)
    )
    return statement.with_for_update(skip_locked=True, of=_DELIVERIES) if lock else statement


def _stranded_attempt(row: sa.Row[Any], now: datetime) -> dict[str, object]:
    return {
        "delivery_id": row.id,
        "number": row.attempt_count + 1,
        "start_time": now,
        "status_code": 0,
        "latency_ms": 0,
        "error": expunged_message(row.message_id, as_utc(row.payload_expunge_time)),
        "response_snippet": "",
    }
