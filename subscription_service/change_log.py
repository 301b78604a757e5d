"""The change log: every committed change of a subscription, in one order for all replicas.

The store appends a row in the transaction of each create, update and delete, so a change
is in the log exactly when it is committed. Each replica's change feed reads the rows
after the last position it saw; a watch resumes after a position by reading the rows after
it. Both rely on one property: a row never becomes visible after a row with a greater
position. Otherwise a reader that saw position 8 would never look back for a 7 that
committed late.

- SQLite has one writer at a time: a transaction takes the database's write lock at its
  first write and holds it through its commit, so positions are handed out and committed
  in one order.
- PostgreSQL hands out sequence values when rows are inserted, not when transactions
  commit: transaction A may take 7, B take 8 and commit, and A commit after. So every
  writing transaction first takes one transaction-level advisory lock, held until its
  commit, and only then inserts its row: the next writer gets its position only once the
  previous one has committed. Writers queue on that lock only for the insert and the
  commit, after their own row locks, so it orders them without deadlocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service_common.database import as_utc, unavailable_on_database_errors
from subscription_service.domain import Change, ChangeType, SignatureAlgorithm, Subscription
from subscription_service.models import SubscriptionChangeRow

__all__ = ["ChangeLog", "LogBounds", "append", "can_resume", "consistent_read", "newest_position"]

# Any fixed number works, as long as no other lock of this database uses it (migrations
# use 0x5B5C_0001).
_ORDER_LOCK_ID = 0x5B5C_0002
_ROW = SubscriptionChangeRow


@dataclass(frozen=True)
class LogBounds:
    """The oldest and newest positions the log still holds; None when it holds none."""

    oldest: int | None
    newest: int | None


def can_resume(resume_after: int, bounds: LogBounds, *, limit: int) -> bool:
    """Whether a watch can resume after `resume_after` with the rows of the log alone.

    Not when the rows right after it were pruned, nor when it is beyond the newest
    position (a position of another database, or of one restored from a backup), nor
    when more than `limit` changes followed: a watcher that far behind would have been
    cut off by now anyway, and a snapshot is the bounded way back.
    """
    if resume_after <= 0 or bounds.oldest is None or bounds.newest is None:
        return False
    if resume_after > bounds.newest or resume_after < bounds.oldest - 1:
        return False
    return bounds.newest - resume_after <= limit


def append(
    session: Session, change_type: ChangeType, subscription: Subscription, *, now: datetime
) -> None:
    """Adds the change to the transaction of `session`, which must commit right after."""
    if session.get_bind().dialect.name == "postgresql":
        # Held until commit: positions are assigned in commit order (see the docstring).
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ORDER_LOCK_ID})
    session.add(
        SubscriptionChangeRow(
            subscription_id=subscription.id,
            tenant=subscription.tenant,
            change_type=change_type.value,
            version=subscription.version,
            state=_state_of(subscription, change_type),
            change_time=now,
        )
    )
    session.flush()


@contextmanager
def consistent_read(engine: Engine) -> Iterator[Session]:
    """A session whose every read sees the database as of one moment."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        elif engine.dialect.name == "sqlite":
            # pysqlite begins a transaction only before a write: without this, each
            # SELECT would see the database as of its own moment.
            connection.exec_driver_sql("BEGIN")
        try:
            with Session(connection) as session:
                yield session
        finally:
            connection.rollback()


def newest_position(session: Session) -> int:
    """The newest position of the log; 0 while it is empty."""
    return int(session.exec(select(sa.func.max(col(_ROW.position)))).one() or 0)


class ChangeLog:
    """Reads and prunes the log; the store writes it (see `append`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @unavailable_on_database_errors
    def newest(self) -> int:
        with Session(self._engine) as session:
            return newest_position(session)

    @unavailable_on_database_errors
    def after(self, position: int, *, limit: int) -> list[Change]:
        """The first `limit` changes after `position`, in order."""
        statement = select(_ROW).where(col(_ROW.position) > position).order_by(col(_ROW.position))
        with Session(self._engine) as session:
            return [_change_of(row) for row in session.exec(statement.limit(limit))]

    @unavailable_on_database_errors
    def resume(self, after: int, *, tenant: str | None, limit: int) -> list[Change] | None:
        """The changes (of `tenant`) after `after`, in order; None if `can_resume` says no."""
        with consistent_read(self._engine) as session:
            oldest, newest = session.exec(
                select(sa.func.min(col(_ROW.position)), sa.func.max(col(_ROW.position)))
            ).one()
            if not can_resume(after, LogBounds(oldest, newest), limit=limit):
                return None
            statement = select(_ROW).where(col(_ROW.position) > after)
            if tenant is not None:
                statement = statement.where(_ROW.tenant == tenant)
            rows = session.exec(statement.order_by(col(_ROW.position)))
            return [_change_of(row) for row in rows]

    @unavailable_on_database_errors
    def prune(self, *, before: datetime, batch: int = 1000) -> int:
        """Deletes the changes made before `before`, oldest first, but never the newest one
        (it tells resuming watchers how far the log reaches). Deletes `batch` rows per
        transaction, so writers never wait long; returns how many."""
        pruned = 0
        while True:
            with self._engine.begin() as connection:
                deleted = connection.execute(_prune_statement(before, batch)).rowcount
            pruned += deleted
            if deleted < batch:
                return pruned


def _prune_statement(before: datetime, batch: int) -> sa.Delete:
    """Deletes a prefix of the log, up to the first change made at or after `before`.

    Only ever a prefix: `can_resume` tells what was pruned by the oldest position alone.
    Replicas' clocks differ a little, so times are not quite in the order of positions;
    a change that looks old behind a newer one waits for it.
    """
    position = col(_ROW.position)
    kept = sa.func.coalesce(
        sa.select(sa.func.min(position)).where(col(_ROW.change_time) >= before).scalar_subquery(),
        sa.select(sa.func.max(position)).scalar_subquery(),
    )
    doomed = sa.select(position).where(position < kept).order_by(position).limit(batch)
    return sa.delete(_ROW).where(position.in_(doomed.scalar_subquery()))


def _state_of(subscription: Subscription, change_type: ChangeType) -> str:
    # A deleted subscription's secret has no more use: the log does not keep it.
    secret = None if change_type is ChangeType.DELETED else subscription.secret
    return json.dumps(
        {
            "id": subscription.id,
            "tenant": subscription.tenant,
            "url": subscription.url,
            "message_types": list(subscription.message_types),
            "enabled": subscription.enabled,
            "description": subscription.description,
            "signature_algorithm": subscription.signature_algorithm.value,
            "secret": secret,
            "disabled_reason": subscription.disabled_reason,
            "version": subscription.version,
            "create_time": as_utc(subscription.create_time).isoformat(),
            "update_time": as_utc(subscription.update_time).isoformat(),
        }
    )


def _change_of(row: SubscriptionChangeRow) -> Change:
    state = json.loads(row.state)
    subscription = Subscription(
        id=state["id"],
        tenant=state["tenant"],
        url=state["url"],
        message_types=tuple(state["message_types"]),
        enabled=state["enabled"],
        description=state["description"],
        signature_algorithm=SignatureAlgorithm(state["signature_algorithm"]),
        secret=state["secret"],
        disabled_reason=state["disabled_reason"],
        version=state["version"],
        create_time=datetime.fromisoformat(state["create_time"]),
        update_time=datetime.fromisoformat(state["update_time"]),
    )
    assert row.position is not None  # a stored row always has one
    return Change(ChangeType(row.change_type), subscription, row.position)
