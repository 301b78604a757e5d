"""SQLModel tables of the subscription service. Alembic migrations create them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

__all__ = ["SubscriptionChangeRow", "SubscriptionMessageTypeRow", "SubscriptionRow", "metadata"]


class SubscriptionTable(SQLModel, registry=registry()):
    """Base of this service's tables: a registry of its own keeps its schema apart from
    the other service's when both are imported in one process (tests, tools)."""


metadata = SubscriptionTable.metadata


class SubscriptionRow(SubscriptionTable, table=True):
    __tablename__ = "subscriptions"
    # Keyset pagination walks (tenant, create_time, id).
    __table_args__ = (sa.Index("ix_subscriptions_tenant_created", "tenant", "create_time", "id"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(max_length=64)
    url: str = Field(max_length=2048)
    description: str = Field(default="", max_length=1024)
    enabled: bool
    disabled_reason: str = Field(default="", max_length=1024)
    signature_algorithm: str = Field(max_length=32)
    secret: str | None = Field(default=None, max_length=200)
    version: int
    create_time: datetime = Field(sa_type=sa.DateTime(timezone=True))
    update_time: datetime = Field(sa_type=sa.DateTime(timezone=True))


class SubscriptionMessageTypeRow(SubscriptionTable, table=True):
    """One entry of a subscription's `message_types`, kept as rows so lists can filter by type."""

    __tablename__ = "subscription_message_types"

    subscription_id: str = Field(
        foreign_key="subscriptions.id", primary_key=True, max_length=40, ondelete="CASCADE"
    )
    position: int = Field(primary_key=True)
    pattern: str = Field(max_length=200, index=True)
    # For a prefix pattern `event.claim.*`, the prefix `event.claim.`; NULL for an exact type.
    prefix: str | None = Field(default=None, max_length=200)


class SubscriptionChangeRow(SubscriptionTable, table=True):
    """One committed change of a subscription, in the order of `position`.

    Written in the transaction of the change itself, so every replica can read every
    change in one order (its change feed) and a watch can resume after a position.
    """

    __tablename__ = "subscription_changes"
    # AUTOINCREMENT on SQLite: a position is never handed out twice, even after the
    # newest row is deleted.
    __table_args__ = {"sqlite_autoincrement": True}

    # BIGSERIAL on PostgreSQL; an alias of the rowid on SQLite, which only does
    # AUTOINCREMENT for INTEGER.
    position: int | None = Field(
        default=None,
        primary_key=True,
        sa_type=sa.BigInteger().with_variant(sa.Integer, "sqlite"),
    )
    subscription_id: str = Field(max_length=40)
    tenant: str = Field(max_length=64)
    # created, updated or deleted.
    change_type: str = Field(max_length=16)
    version: int
    # The subscription after the change as JSON; for a deletion its last state, secret removed.
    state: str
    # Pruning deletes by age.
    change_time: datetime = Field(sa_type=sa.DateTime(timezone=True), index=True)
