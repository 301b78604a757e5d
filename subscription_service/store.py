"""Persistence of subscriptions: with `change_log`, the only modules that speak SQL.

Every write also appends its change to the change log, in the same transaction. Every
method is synchronous (SQLAlchemy's blocking API); the manager runs them in a worker
thread. Database failures leave as `StoreUnavailable`, so callers see UNAVAILABLE instead
of a crash.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from service_common.database import as_utc, unavailable_on_database_errors
from service_common.errors import InvalidArgument, NotFound, StaleEtag
from subscription_service import change_log
from subscription_service.domain import (
    ChangeType,
    ListQuery,
    NewSubscription,
    SignatureAlgorithm,
    Subscription,
    SubscriptionPatch,
)
from subscription_service.models import SubscriptionMessageTypeRow, SubscriptionRow

__all__ = ["Cursor", "SubscriptionStore"]


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last subscription's creation time and id."""

    create_time: datetime
    id: str


class SubscriptionStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Updates and deletes read a row and write it back. One at a time in this process,
        # and with the row locked on PostgreSQL (for other processes), a writer never
        # finds the row changed under it: only a caller's stale etag fails an update.
        self._writes = threading.Lock()

    @unavailable_on_database_errors
    def create(self, new: NewSubscription, *, now: datetime) -> Subscription:
        row = SubscriptionRow(
            id=f"sub_{uuid.uuid4().hex}",
            tenant=new.tenant,
            url=new.url,
            description=new.description,
            enabled=new.enabled,
            disabled_reason="",
            signature_algorithm=new.signature_algorithm.value,
            secret=new.secret,
            version=1,
            create_time=now,
            update_time=now,
        )
        created = _to_domain(row, new.message_types)
        with Session(self._engine) as session:
            session.add(row)
            session.flush()
            session.add_all(_message_type_rows(row.id, new.message_types))
            change_log.append(session, ChangeType.CREATED, created, now=now)
            session.commit()
        return created

    @unavailable_on_database_errors
    def get(self, subscription_id: str, *, tenant: str | None) -> Subscription:
        with Session(self._engine) as session:
            row = _find(session, subscription_id, tenant=tenant)
            return _to_domain(row, _message_types_of(session, [row.id])[row.id])

    @unavailable_on_database_errors
    def page(
        self, query: ListQuery, *, after: Cursor | None
    ) -> tuple[list[Subscription], Cursor | None]:
        """One page of `query`, and the cursor of the next page (None on the last one)."""
        statement = _filtered(query).order_by(
            col(SubscriptionRow.create_time), col(SubscriptionRow.id)
        )
        if after is not None:
            statement = statement.where(
                sa.or_(
                    col(SubscriptionRow.create_time) > after.create_time,
                    sa.and_(
                        col(SubscriptionRow.create_time) == after.create_time,
                        col(SubscriptionRow.id) > after.id,
                    ),
                )
            )
        with Session(self._engine) as session:
            rows = list(session.exec(statement.limit(query.page_size + 1)))
            more = len(rows) > query.page_size
            rows = rows[: query.page_size]
            page = _with_message_types(session, rows)
        following = Cursor(page[-1].create_time, page[-1].id) if more else None
        return page, following

    @unavailable_on_database_errors
    def snapshot(self, *, tenant: str | None) -> tuple[list[Subscription], int]:
        """Every subscription (of `tenant`) and the change log position they reflect, both
        read as of one moment: the changes after that position are exactly those the
        subscriptions do not show yet."""
        statement = select(SubscriptionRow).order_by(
            col(SubscriptionRow.create_time), col(SubscriptionRow.id)
        )
        if tenant is not None:
            statement = statement.where(SubscriptionRow.tenant == tenant)
        with change_log.consistent_read(self._engine) as session:
            found = _with_message_types(session, list(session.exec(statement)))
            return found, change_log.newest_position(session)

    @unavailable_on_database_errors
    def count_by_enabled(self) -> dict[bool, int]:
        """How many subscriptions are enabled and disabled, over every tenant."""
        statement = sa.select(col(SubscriptionRow.enabled), sa.func.count()).group_by(
            col(SubscriptionRow.enabled)
        )
        with self._engine.connect() as connection:
            counts: dict[bool, int] = {
                bool(enabled): count for enabled, count in connection.execute(statement)
            }
        return {enabled: counts.get(enabled, 0) for enabled in (True, False)}

    @unavailable_on_database_errors
    def update(
        self,
        subscription_id: str,
        *,
        tenant: str | None,
        patch: SubscriptionPatch,
        expected_version: int | None,
        now: datetime,
    ) -> Subscription:
        with self._writes, Session(self._engine) as session:
            row = _find(session, subscription_id, tenant=tenant, for_update=True)
            if expected_version is not None and row.version != expected_version:
                raise StaleEtag("the subscription changed since that etag was read")
            values = _patched_columns(row, patch)
            values.update(version=row.version + 1, update_time=now)
            # Compare-and-set on the version read above: a concurrent writer makes this
            # update match no row instead of silently overwriting its change.
            result = session.execute(
                sa.update(SubscriptionRow)
                .where(
                    col(SubscriptionRow.id) == row.id,
                    col(SubscriptionRow.version) == row.version,
                )
                .values(**values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise StaleEtag("the subscription changed while it was being updated")
            if patch.message_types is not None:
                session.execute(
                    sa.delete(SubscriptionMessageTypeRow).where(
                        col(SubscriptionMessageTypeRow.subscription_id) == row.id
                    )
                )
                session.add_all(_message_type_rows(row.id, patch.message_types))
            session.refresh(row)
            updated = _to_domain(row, _message_types_of(session, [row.id])[row.id])
            change_log.append(session, ChangeType.UPDATED, updated, now=now)
            session.commit()
            return updated

    @unavailable_on_database_errors
    def delete(
        self,
        subscription_id: str,
        *,
        tenant: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> Subscription:
        """Deletes a subscription and returns its last state."""
        with self._writes, Session(self._engine) as session:
            row = _find(session, subscription_id, tenant=tenant, for_update=True)
            if expected_version is not None and row.version != expected_version:
                raise StaleEtag("the subscription changed since that etag was read")
            last = _to_domain(row, _message_types_of(session, [row.id])[row.id])
            result = session.execute(
                sa.delete(SubscriptionRow).where(
                    col(SubscriptionRow.id) == row.id,
                    col(SubscriptionRow.version) == row.version,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise StaleEtag("the subscription changed while it was being deleted")
            change_log.append(session, ChangeType.DELETED, last, now=now)
            session.commit()
            return last


def _find(
    session: Session, subscription_id: str, *, tenant: str | None, for_update: bool = False
) -> SubscriptionRow:
    row = session.get(SubscriptionRow, subscription_id, with_for_update=for_update)
    # Another tenant's subscription answers exactly like a missing one.
    if row is None or (tenant is not None and row.tenant != tenant):
        raise NotFound(f"no subscription '{subscription_id}'")
    return row


def _filtered(query: ListQuery) -> SelectOfScalar[SubscriptionRow]:
    statement = select(SubscriptionRow)
    if query.tenant is not None:
        statement = statement.where(SubscriptionRow.tenant == query.tenant)
    if query.enabled is not None:
        statement = statement.where(SubscriptionRow.enabled == query.enabled)
    if query.message_type is not None:
        statement = statement.where(_receives(query.message_type))
    return statement


def _receives(message_type: str) -> sa.ColumnElement[bool]:
    entry = SubscriptionMessageTypeRow
    if message_type.endswith("*"):
        matches: sa.ColumnElement[bool] = col(entry.pattern) == message_type
    else:
        prefix = col(entry.prefix)
        matches = sa.or_(
            col(entry.pattern) == message_type,
            sa.and_(
                prefix.is_not(None),
                sa.func.substr(sa.literal(message_type), 1, sa.func.length(prefix)) == prefix,
            ),
        )
    return sa.exists().where(col(entry.subscription_id) == SubscriptionRow.id, matches)


def _patched_columns(row: SubscriptionRow, patch: SubscriptionPatch) -> dict[str, object]:
    values: dict[str, object] = {}
    if patch.url is not None:
        values["url"] = patch.url
    if patch.description is not None:
        values["description"] = patch.description
    if patch.signature_algorithm is not None:
        values["signature_algorithm"] = patch.signature_algorithm.value
    if patch.secret is not None:
        values["secret"] = patch.secret or None
    if patch.enabled is not None:
        values["enabled"] = patch.enabled
        if patch.enabled:
            values["disabled_reason"] = ""
    if patch.disabled_reason is not None:
        if values.get("enabled", row.enabled):
            raise InvalidArgument.of(
                "subscription.disabled_reason", "can only be set on a disabled subscription"
            )
        values["disabled_reason"] = patch.disabled_reason
    return values


def _message_type_rows(
    subscription_id: str, message_types: Iterable[str]
) -> list[SubscriptionMessageTypeRow]:
    return [
        SubscriptionMessageTypeRow(
            subscription_id=subscription_id,
            position=position,
            pattern=pattern,
            prefix=pattern[:-1] if pattern.endswith("*") else None,
        )
        for position, pattern in enumerate(message_types)
    ]


def _message_types_of(session: Session, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {subscription_id: [] for subscription_id in ids}
    if not ids:
        return {}
    statement = (
        select(SubscriptionMessageTypeRow)
        .where(col(SubscriptionMessageTypeRow.subscription_id).in_(ids))
        .order_by(
            col(SubscriptionMessageTypeRow.subscription_id),
            col(SubscriptionMessageTypeRow.position),
        )
    )
    for entry in session.exec(statement):
        found[entry.subscription_id].append(entry.pattern)
    return {subscription_id: tuple(types) for subscription_id, types in found.items()}


def _with_message_types(session: Session, rows: Sequence[SubscriptionRow]) -> list[Subscription]:
    types = _message_types_of(session, [row.id for row in rows])
    return [_to_domain(row, types[row.id]) for row in rows]


def _to_domain(row: SubscriptionRow, message_types: tuple[str, ...]) -> Subscription:
    return Subscription(
        id=row.id,
        tenant=row.tenant,
        url=row.url,
        message_types=message_types,
        enabled=row.enabled,
        description=row.description,
        signature_algorithm=SignatureAlgorithm(row.signature_algorithm),
        secret=row.secret,
        disabled_reason=row.disabled_reason,
        version=row.version,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
    )
