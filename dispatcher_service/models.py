"""SQLModel tables of the dispatcher. Alembic migrations create them.

Ingestion writes an event and its deliveries in one transaction; workers claim due
deliveries with a lease and write one attempt row per HTTP POST.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, registry
from sqlmodel import Field, SQLModel

from dispatcher_service.domain import DUE_STATES, MAX_ERROR_CHARS, MAX_SNIPPET_CHARS

__all__ = [
    "DUE_CONDITION",
    "NOT_EXPUNGED_CONDITION",
    "AttemptRow",
    "DeliveryRow",
    "EndpointHealthRow",
    "EventRow",
    "metadata",
    "payload_kept",
]


class DispatcherTable(SQLModel, registry=registry()):
    """Base of this service's tables: a registry of its own keeps its schema apart from
    the other service's when both are imported in one process (tests, tools)."""


metadata = DispatcherTable.metadata

# Events whose payload is still there: the payload expunge walks them oldest first.
NOT_EXPUNGED_CONDITION = "payload_expunge_time IS NULL"

# Rows a worker may claim, with the states written out: a query uses a partial index only
# when its condition matches the index's text, which a bound parameter would not.
DUE_CONDITION = "state IN ({})".format(", ".join(f"'{state.value}'" for state in DUE_STATES))


class EventRow(DispatcherTable, table=True):
    __tablename__ = "events"
    # A (tenant, message_id) is stored once: that is what makes a duplicate a no-op.
    __table_args__ = (
        sa.UniqueConstraint("tenant", "message_id", name="uq_events_tenant_message"),
        # Pruning walks events oldest first, and expunging those still holding a payload.
        sa.Index("ix_events_created", "create_time"),
        sa.Index(
            "ix_events_payload_created",
            "create_time",
            sqlite_where=sa.text(NOT_EXPUNGED_CONDITION),
            postgresql_where=sa.text(NOT_EXPUNGED_CONDITION),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(max_length=64)
    message_id: str = Field(max_length=200)
    message_type: str = Field(max_length=200)
    # The exact JSON text that is signed and sent as `payloadAsString`, fixed at ingestion
    # so every retry and redelivery carries the same bytes.
    payload: str = Field(sa_type=sa.Text)
    create_time: datetime = Field(sa_type=sa.DateTime(timezone=True))
    # When the payload was emptied ('') under DISPATCHER_PAYLOAD_RETENTION_DAYS; the event
    # is then never sent again.
    payload_expunge_time: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class DeliveryRow(DispatcherTable, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (
        # The claim query walks due deliveries in time order (see claims.py).
        sa.Index(
            "ix_deliveries_due",
            "next_attempt_time",
            sqlite_where=sa.text(DUE_CONDITION),
            postgresql_where=sa.text(DUE_CONDITION),
        ),
        # One subscription's due deliveries in time order: claimed once its endpoint has
        # room again, without walking everyone else's (see worker.py).
        sa.Index(
            "ix_deliveries_subscription_due",
            "subscription_id",
            "next_attempt_time",
            sqlite_where=sa.text(DUE_CONDITION),
            postgresql_where=sa.text(DUE_CONDITION),
        ),
        sa.Index("ix_deliveries_tenant_created", "tenant", "create_time", "id"),
        sa.Index("ix_deliveries_subscription", "subscription_id", "create_time"),
        sa.Index("ix_deliveries_message", "tenant", "message_id"),
        # An event's deliveries, found (and deleted) with it when it is pruned.
        sa.Index("ix_deliveries_event", "event_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(foreign_key="events.id", max_length=40, ondelete="CASCADE")
    tenant: str = Field(max_length=64)
    subscription_id: str = Field(max_length=64)
    message_id: str = Field(max_length=200)
    message_type: str = Field(max_length=200)
    url: str = Field(max_length=2048)
    state: str = Field(max_length=16)
    attempt_count: int = 0
    next_attempt_time: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    # When the lease was taken: the time of the attempt it cut short, should it run out.
    claim_time: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    create_time: datetime = Field(sa_type=sa.DateTime(timezone=True))
    update_time: datetime = Field(sa_type=sa.DateTime(timezone=True))


class AttemptRow(DispatcherTable, table=True):
    __tablename__ = "attempts"

    delivery_id: str = Field(
        foreign_key="deliveries.id", primary_key=True, max_length=40, ondelete="CASCADE"
    )
    number: int = Field(primary_key=True)
    start_time: datetime = Field(sa_type=sa.DateTime(timezone=True))
    status_code: int = 0
    latency_ms: int = 0
    error: str = Field(default="", max_length=MAX_ERROR_CHARS)
    response_snippet: str = Field(default="", max_length=MAX_SNIPPET_CHARS)


class EndpointHealthRow(DispatcherTable, table=True):
    """The current run of failed attempts of a subscription's endpoint (for auto-disable)."""

    __tablename__ = "endpoint_health"

    subscription_id: str = Field(primary_key=True, max_length=64)
    consecutive_failures: int = 0
    first_failure_time: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


def payload_kept(event_id: sa.ColumnElement[str] | Mapped[str]) -> sa.ColumnElement[bool]:
    """Whether the event `event_id` names still has its payload (see `retention`).

    A correlated scalar subquery rather than NOT EXISTS: one probe of the event's primary
    key for each delivery row read, never a join the planner might run over every event.
    """
    events = EventRow.__table__  # type: ignore[attr-defined]
    return (
        sa.select(events.c.payload_expunge_time)
        .where(events.c.id == event_id)
        .scalar_subquery()
        .is_(None)
    )
