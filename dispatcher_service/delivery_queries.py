"""What operators ask of the delivery store: deliveries looked up, paged and replayed,
and the queue counted. Plain functions over a connection the store opens (a transaction
for the replays), so the store stays the one place that connects and reports outages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dispatcher_service.domain import (
    DUE_STATES,
    Attempt,
    Delivery,
    DeliveryQuery,
    DeliveryState,
    QueueStats,
)
from dispatcher_service.models import (
    DUE_CONDITION,
    AttemptRow,
    DeliveryRow,
    EventRow,
    payload_kept,
)
from dispatcher_service.retention import expunged_events_message, expunged_message
from service_common.database import as_utc
from service_common.errors import FailedPrecondition, NotFound

__all__ = [
    "DeliveryCursor",
    "counts_by_state",
    "get",
    "page",
    "queue_stats",
    "redeliver_event",
    "redeliver_failed",
]

_DELIVERIES = DeliveryRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]
_EVENTS = EventRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeliveryCursor:
    """Where a page of deliveries (newest first) ends."""

    create_time: datetime
    id: str


def get(connection: sa.Connection, delivery_id: str, *, tenant: str | None) -> Delivery:
    """The delivery `delivery_id` with its attempts; another tenant's is not found."""
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


def page(
    connection: sa.Connection, query: DeliveryQuery, *, after: DeliveryCursor | None
) -> tuple[list[Delivery], DeliveryCursor | None]:
    """The deliveries `query` asks for, newest first, from `after`; and where the next
    page starts, if there is one."""
    statement = _page_statement(query, after=after).limit(query.page_size + 1)
    rows = list(connection.execute(statement).mappings())
    found = [_delivery(row) for row in rows[: query.page_size]]
    more = len(rows) > query.page_size
    return found, (DeliveryCursor(found[-1].create_time, found[-1].id) if more else None)


def _page_statement(query: DeliveryQuery, *, after: DeliveryCursor | None) -> sa.Select[Any]:
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
    if after is None:
        return statement
    return statement.where(
        sa.or_(
            _DELIVERIES.c.create_time < after.create_time,
            sa.and_(_DELIVERIES.c.create_time == after.create_time, _DELIVERIES.c.id < after.id),
        )
    )


def redeliver_event(
    connection: sa.Connection,
    *,
    tenant: str | None,
    message_id: str,
    subscription_id: str | None,
    now: datetime,
) -> list[str]:
    """Schedules every delivery of one event (or of one subscription) for now: NOT_FOUND
    without any, FAILED_PRECONDITION once its payload was expunged."""
    where = [_DELIVERIES.c.message_id == message_id]
    if tenant is not None:
        where.append(_DELIVERIES.c.tenant == tenant)
    if subscription_id is not None:
        where.append(_DELIVERIES.c.subscription_id == subscription_id)
    ids = _reschedule(connection, where, now=now)
    if not ids:
        raise NotFound(f"no deliveries of event '{message_id}'")
    return ids


def redeliver_failed(
    connection: sa.Connection,
    *,
    tenant: str | None,
    subscription_id: str,
    since: datetime,
    now: datetime,
) -> list[str]:
    """Schedules every failed or dead delivery of a subscription created since `since`.

    Those of events whose payload was expunged are skipped (the answer has no room to
    count them); FAILED_PRECONDITION when they are all there is, so that a replay that
    does nothing says why."""
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
    return _reschedule(connection, where, now=now)


def _reschedule(
    connection: sa.Connection, where: list[sa.ColumnElement[bool]], *, now: datetime
) -> list[str]:
    """Makes the deliveries `where` due now, but those in flight and those of events
    whose payload was expunged; FAILED_PRECONDITION when the latter were all there was."""
    # Serializes this with pruning and expunging on PostgreSQL (see `pruning`): an event
    # locked here is skipped by a batch; one a batch holds is waited for, then found gone
    # (no deliveries left: NOT_FOUND) or expunged. SQLite ignores the lock: this
    # transaction writes, and one writer at a time is all SQLite lets in.
    connection.execute(
        sa.select(_EVENTS.c.id)
        .where(_EVENTS.c.id.in_(_event_ids(where)))
        .with_for_update(read=True)
    ).all()
    # Deliveries a worker holds right now are left to it: they are being sent already.
    # A lease that ran out stays, so the next claim records the attempt it cut short.
    not_in_flight = sa.or_(_DELIVERIES.c.lease_expires.is_(None), _DELIVERIES.c.lease_expires < now)
    rows = connection.execute(
        sa.update(_DELIVERIES)
        .where(*where, not_in_flight, payload_kept(_DELIVERIES.c.event_id))
        .values(state=DeliveryState.PENDING.value, next_attempt_time=now, update_time=now)
        .returning(_DELIVERIES.c.id)
    )
    ids = [row[0] for row in rows]
    if not ids:
        _refuse_expunged(connection, where)
    return ids


def _event_ids(where: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
    return sa.select(_DELIVERIES.c.event_id).where(*where)


def _refuse_expunged(connection: sa.Connection, where: list[sa.ColumnElement[bool]]) -> None:
    """FAILED_PRECONDITION, naming why, when events of the deliveries `where` have had
    their payload expunged."""
    expunged = connection.execute(
        sa.select(_EVENTS.c.message_id, _EVENTS.c.payload_expunge_time)
        .where(_EVENTS.c.id.in_(_event_ids(where)), _EVENTS.c.payload_expunge_time.is_not(None))
        .order_by(_EVENTS.c.payload_expunge_time.desc())
    ).all()
    if len(expunged) == 1:
        raise FailedPrecondition(expunged_message(expunged[0][0], as_utc(expunged[0][1])))
    if expunged:
        raise FailedPrecondition(expunged_events_message(len(expunged), as_utc(expunged[0][1])))


def queue_stats(
    connection: sa.Connection, *, now: datetime, tenant: str | None = None
) -> QueueStats:
    """What waits to be sent (of `tenant`'s deliveries, or everyone's when None), read
    through the partial index of due deliveries."""
    due: list[sa.ColumnElement[bool] | sa.TextClause] = [sa.text(DUE_CONDITION)]
    if tenant is not None:
        due.append(_DELIVERIES.c.tenant == tenant)
    rows = connection.execute(
        sa.select(_DELIVERIES.c.state, sa.func.count()).where(*due).group_by(_DELIVERIES.c.state)
    )
    depth: dict[str, int] = dict(rows.all())
    oldest = connection.execute(
        sa.select(sa.func.min(_DELIVERIES.c.next_attempt_time)).where(
            *due, _DELIVERIES.c.next_attempt_time <= now
        )
    ).scalar()
    return QueueStats(
        depth={state: depth.get(state.value, 0) for state in DUE_STATES},
        oldest_due_time=None if oldest is None else as_utc(oldest),
    )


def counts_by_state(connection: sa.Connection) -> dict[DeliveryState, int]:
    rows = connection.execute(
        sa.select(_DELIVERIES.c.state, sa.func.count()).group_by(_DELIVERIES.c.state)
    )
    return {DeliveryState(state): count for state, count in rows}


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


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)
