"""What the delivery store asks of its database: the statements and behaviours in which
SQLite (`queue_sqlite`) and PostgreSQL (`queue_postgres`) differ, so the store itself
has one code path for both.

A batch of new events or deliveries goes in as one JSON document of rows: one short
statement for any number of rows, with no per-row work in Python (a multi-row VALUES is
parsed anew for each batch size, an executemany converts every value on its own). Each
backend reads the document with its own JSON functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from dispatcher_service.domain import DeliveryState
from dispatcher_service.models import EndpointHealthRow

__all__ = ["LEASE_EXPIRES", "NOW", "QueueBackend", "as_document", "health_upserts"]

NOW = sa.bindparam("now", type_=sa.DateTime(timezone=True))
LEASE_EXPIRES = sa.bindparam("lease_expires", type_=sa.DateTime(timezone=True))
_HEALTH = EndpointHealthRow.__table__  # type: ignore[attr-defined]


class QueueBackend(Protocol):
    """One database as the delivery store writes to it; each store holds its own."""

    @property
    def in_process(self) -> bool:
        """Whether calls run inside this process (SQLite) rather than wait on a server."""

    @property
    def insert_events(self) -> sa.TextClause:
        """Inserts the events of the document `:rows` (id, tenant, message_id,
        message_type, payload), created at `:now`, skipping any whose (tenant, message_id)
        is stored already; returns the (tenant, message_id) of each inserted."""

    @property
    def insert_deliveries(self) -> sa.TextClause:
        """Inserts the deliveries of the document `:rows` (id, event_id, tenant,
        subscription_id, message_id, message_type, url, leased) in `:state`, due and
        created at `:now`; those `leased` are held by `:owner` until `:lease_expires`,
        claimed at `:now`."""

    def upsert_health(self, *, restart: bool) -> sa.Insert:
        """Adds `:failures` to the run of failures of subscription `:subscription`'s
        endpoint (a new run starts at `:now`), or, given `restart`, starts its run again
        with them at `:now` (the batch had a success first); returns the run's
        consecutive_failures and first_failure_time."""

    def claim_statement(self, *, excluding: bool, after: bool, only: bool) -> sa.Update:
        """`claims.claim_statement` as this database runs it."""

    def writing(self, engine: Engine, *, durable: bool) -> AbstractContextManager[sa.Connection]:
        """A connection of `engine` to write through, before its transaction begins.

        `durable=False` is for bookkeeping whose loss in a power cut costs a repeated
        delivery, never a lost one: the database may commit it without waiting for the disk.
        """


def as_document(rows: Sequence[Mapping[str, object]], *, now: datetime) -> dict[str, object]:
    """The parameters of `insert_events` and `insert_deliveries` for `rows` (all created
    at `now`); the rows hold the text columns, the statements set the rest."""
    return {"rows": orjson.dumps(rows).decode(), "now": now, "state": DeliveryState.PENDING.value}


def health_upserts(
    insert: Callable[[sa.Table], postgresql.Insert | sqlite.Insert],
) -> dict[bool, sa.Insert]:
    """The statements of `upsert_health`, by `restart`, built once with the INSERT of a
    dialect (each has its own ON CONFLICT)."""
    failures = sa.bindparam("failures", type_=sa.Integer)
    runs: dict[bool, dict[str, object]] = {
        True: {"consecutive_failures": failures, "first_failure_time": NOW},
        False: {"consecutive_failures": _HEALTH.c.consecutive_failures + failures},
    }
    return {
        restart: insert(_HEALTH)
        .values(
            subscription_id=sa.bindparam("subscription"),
            consecutive_failures=failures,
            first_failure_time=NOW,
        )
        .on_conflict_do_update(index_elements=["subscription_id"], set_=run)
        .returning(_HEALTH.c.consecutive_failures, _HEALTH.c.first_failure_time)
        for restart, run in runs.items()
    }
