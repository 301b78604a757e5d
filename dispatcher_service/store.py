"""Persistence of events, deliveries and attempts: the only dispatcher module that speaks SQL.

Every method is synchronous and runs in a worker thread; database failures leave as
`StoreUnavailable`, so callers answer UNAVAILABLE and never acknowledge what was not stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from dispatcher_service.claims import claim_statement
from dispatcher_service.domain import (
    Attempt,
    ClaimedDelivery,
    Completion,
    Delivery,
    DeliveryQuery,
    DeliveryState,
    EndpointHealth,
    IngestOutcome,
    PreparedEvent,
)
from dispatcher_service.models import AttemptRow, DeliveryRow, EndpointHealthRow, EventRow
from service_common.database import as_utc, unavailable_on_database_errors
from service_common.errors import NotFound

__all__ = ["DeliveryCursor", "DeliveryStore"]

_EVENTS = EventRow.__table__  # type: ignore[attr-defined]
_DELIVERIES = DeliveryRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]
_HEALTH = EndpointHealthRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeliveryCursor:
    """Where a page of deliveries (newest first) ends."""

    create_time: datetime
    id: str


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


class DeliveryStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    @unavailable_on_database_errors
    def ingest(self, events: Sequence[PreparedEvent], *, now: datetime) -> list[IngestOutcome]:
        """Stores new events with their deliveries in one transaction; skips duplicates.

        Outcomes come in the order of `events`. A message id seen twice in `events` is
        stored once; the later ones are duplicates.
        """
        first_of: dict[tuple[str, str], PreparedEvent] = {}
        for event in events:
            first_of.setdefault((event.tenant, event.message_id), event)
        ids = {key: _new_id("evt") for key in first_of}
        with self._engine.begin() as connection:
            inserted = self._insert_events(connection, first_of, ids, now=now)
            deliveries = [
                {
                    "id": _new_id("dlv"),
                    "event_id": ids[key],
                    "tenant": event.tenant,
                    "subscription_id": target.subscription_id,
                    "message_id": event.message_id,
                    "message_type": event.message_type,
                    "url": target.url,
                    "state": DeliveryState.PENDING.value,
                    "attempt_count": 0,
                    "next_attempt_time": now,
                    "create_time": now,
                    "update_time": now,
                }
                for key, event in first_of.items()
                if key in inserted
                for target in event.targets
            ]
            if deliveries:
                connection.execute(sa.insert(_DELIVERIES), deliveries)
        outcomes: list[IngestOutcome] = []
        for event in events:
            key = (event.tenant, event.message_id)
            fresh = key in inserted and first_of[key] is event
            outcomes.append(
                IngestOutcome(
                    message_id=event.message_id,
                    duplicate=not fresh,
                    deliveries=len(event.targets) if fresh else 0,
                )
            )
        return outcomes

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
                "create_time": now,
            }
            for key, event in events.items()
        ]
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = (
            insert(_EVENTS)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["tenant", "message_id"])
            .returning(_EVENTS.c.tenant, _EVENTS.c.message_id)
        )
        return {(tenant, message_id) for tenant, message_id in connection.execute(statement)}

    @unavailable_on_database_errors
    def claim(
        self, *, owner: str, limit: int, now: datetime, lease: timedelta
    ) -> list[ClaimedDelivery]:
        """Leases up to `limit` due deliveries to `owner` and returns them, oldest due first."""
        statement = claim_statement(
            self._dialect, owner=owner, now=now, lease_until=now + lease, limit=limit
        )
        with self._engine.begin() as connection:
            ids = [row[0] for row in connection.execute(statement)]
            if not ids:
                return []
            rows = connection.execute(
                sa.select(_DELIVERIES, _EVENTS.c.payload, _EVENTS.c.create_time.label("event_time"))
                .join(_EVENTS, _EVENTS.c.id == _DELIVERIES.c.event_id)
                .where(_DELIVERIES.c.id.in_(ids))
                .order_by(_DELIVERIES.c.next_attempt_time)
            ).mappings()
            return [
                ClaimedDelivery(
                    id=row["id"],
                    tenant=row["tenant"],
                    subscription_id=row["subscription_id"],
                    message_id=row["message_id"],
                    message_type=row["message_type"],
                    url=row["url"],
                    attempt_count=row["attempt_count"],
                    payload=row["payload"],
                    event_time=as_utc(row["event_time"]),
                )
                for row in rows
            ]

    @unavailable_on_database_errors
    def complete(
        self, completions: Sequence[Completion], *, owner: str, now: datetime
    ) -> list[EndpointHealth]:
        """Records attempts, new states and endpoint health in one transaction.

        Returns the health of every endpoint that failed in this batch. A delivery whose
        lease another worker took over (this one was too slow) is left alone: its attempt
        is not recorded twice and its state is the new owner's.
        """
        failing: dict[str, EndpointHealth] = {}
        with self._engine.begin() as connection:
            for completion in completions:
                result = connection.execute(
                    sa.update(_DELIVERIES)
                    .where(
                        _DELIVERIES.c.id == completion.delivery_id,
                        _DELIVERIES.c.lease_owner == owner,
                    )
                    .values(
                        state=completion.state.value,
                        attempt_count=completion.attempt.number,
                        next_attempt_time=completion.next_attempt_time,
                        lease_owner=None,
                        lease_expires=None,
                        update_time=now,
                    )
                )
                if result.rowcount != 1:
                    continue
                health = self._record_endpoint(connection, completion, now=now)
                if health is not None:
                    failing[health.subscription_id] = health
                attempt = completion.attempt
                connection.execute(
                    sa.insert(_ATTEMPTS).values(
                        delivery_id=completion.delivery_id,
                        number=attempt.number,
                        start_time=attempt.start_time,
                        status_code=attempt.status_code,
                        latency_ms=attempt.latency_ms,
                        error=attempt.error[:1024],
                        response_snippet=attempt.response_snippet[:2048],
                    )
                )
        return list(failing.values())

    def _record_endpoint(
        self, connection: sa.Connection, completion: Completion, *, now: datetime
    ) -> EndpointHealth | None:
        if completion.endpoint_failed is None:
            return None
        if not completion.endpoint_failed:
            connection.execute(
                sa.delete(_HEALTH).where(_HEALTH.c.subscription_id == completion.subscription_id)
            )
            return None
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(_HEALTH).values(
            subscription_id=completion.subscription_id,
            consecutive_failures=1,
            first_failure_time=now,
        )
        row = connection.execute(
            statement.on_conflict_do_update(
                index_elements=["subscription_id"],
                set_={"consecutive_failures": _HEALTH.c.consecutive_failures + 1},
            ).returning(_HEALTH.c.consecutive_failures, _HEALTH.c.first_failure_time)
        ).one()
        return EndpointHealth(
            subscription_id=completion.subscription_id,
            consecutive_failures=row[0],
            first_failure_time=as_utc(row[1]),
        )

    @unavailable_on_database_errors
    def release(self, *, owner: str) -> None:
        """Gives back the leases of `owner` (on shutdown), so others need not wait them out."""
        with self._engine.begin() as connection:
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
        not_in_flight = sa.or_(
            _DELIVERIES.c.lease_expires.is_(None), _DELIVERIES.c.lease_expires < now
        )
        with self._engine.begin() as connection:
            rows = connection.execute(
                sa.update(_DELIVERIES)
                .where(*where, not_in_flight)
                .values(
                    state=DeliveryState.PENDING.value,
                    next_attempt_time=now,
                    lease_owner=None,
                    lease_expires=None,
                    update_time=now,
                )
                .returning(_DELIVERIES.c.id)
            )
            return [row[0] for row in rows]

    @unavailable_on_database_errors
    def counts_by_state(self) -> dict[DeliveryState, int]:
        with self._engine.connect() as connection:
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
