"""The statement that claims due deliveries, for either database; how it locks the rows
it takes is theirs to say (see `queue_postgres` and `queue_sqlite`).

A due row that still has a lease had it run out (its worker was killed or stalled
before recording an answer). The claim leaves such a row's `claim_time` as it was, and
says so, so that the store can record the attempt cut short in the same transaction;
rows never claimed, or given back, cost nothing more than a CASE and a comparison.

A delivery whose event's payload was expunged is never claimed: there is nothing left to
send. None should be due (see `retention`); `pruning.EventPruner.end_stranded` ends any
that are, dead with an attempt saying why.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from dispatcher_service.models import DUE_CONDITION, DeliveryRow, EventRow, payload_kept

__all__ = ["claim_statement"]


def _due() -> sa.Select[Any]:
    now = sa.bindparam("now", type_=sa.DateTime(timezone=True))
    return (
        sa.select(col(DeliveryRow.id))
        .where(
            sa.text(DUE_CONDITION),
            col(DeliveryRow.next_attempt_time) <= now,
            sa.or_(col(DeliveryRow.lease_expires).is_(None), col(DeliveryRow.lease_expires) < now),
            payload_kept(col(DeliveryRow.event_id)),
        )
        .order_by(col(DeliveryRow.next_attempt_time))
    )


@functools.cache
def claim_statement(
    *, skip_locked: bool, excluding: bool = False, after: bool = False, only: bool = False
) -> sa.Update:
    """UPDATE ... RETURNING that leases up to `:limit` deliveries due at `:now` to
    `:owner` until `:lease_until`, oldest due first. `skip_locked`: the due rows are read
    FOR UPDATE SKIP LOCKED, for a database where claims run side by side. Variants:

    `excluding`: none of the subscriptions `:excluded`;
    `after`: only those due after `:after`, a range of the due index rather than all of
        it (the excluded subscriptions' backlog is not read again);
    `only`: only those of subscription `:only`, through its own due index.

    Returns what sending needs, payload included, in one statement: the id, tenant,
    subscription_id, message_id, message_type, url, attempt_count, payload and due time
    (next_attempt_time) of each; then whether its lease had run out (its claim_time is
    then left as the lost lease's, not set to `:now`). Built once per locking and
    variant, parameters bound."""
    now = sa.bindparam("now", type_=sa.DateTime(timezone=True))
    claim_time = col(DeliveryRow.claim_time)
    due = _due()
    if only:
        due = due.where(col(DeliveryRow.subscription_id) == sa.bindparam("only"))
    if excluding:
        due = due.where(
            col(DeliveryRow.subscription_id).not_in(sa.bindparam("excluded", expanding=True))
        )
    if after:
        due = due.where(
            col(DeliveryRow.next_attempt_time)
            > sa.bindparam("after", type_=sa.DateTime(timezone=True))
        )
    due = due.limit(sa.bindparam("limit", type_=sa.Integer))
    if skip_locked:
        due = due.with_for_update(skip_locked=True)
    return (
        sa.update(DeliveryRow)
        .where(col(DeliveryRow.id).in_(due.scalar_subquery()))
        .values(
            lease_owner=sa.bindparam("owner"),
            lease_expires=sa.bindparam("lease_until", type_=sa.DateTime(timezone=True)),
            # SET sees the row as it was; RETURNING sees it as it is now.
            claim_time=sa.case((col(DeliveryRow.lease_expires).is_(None), now), else_=claim_time),
        )
        .returning(
            col(DeliveryRow.id),
            col(DeliveryRow.tenant),
            col(DeliveryRow.subscription_id),
            col(DeliveryRow.message_id),
            col(DeliveryRow.message_type),
            col(DeliveryRow.url),
            col(DeliveryRow.attempt_count),
            sa.select(col(EventRow.payload))
            .where(col(EventRow.id) == col(DeliveryRow.event_id))
            .scalar_subquery(),
            col(DeliveryRow.next_attempt_time),
            claim_time.is_distinct_from(now),
        )
    )
