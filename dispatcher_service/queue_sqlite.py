"""The delivery store's statements on SQLite, a file that one writer at a time may change.

A claim needs no row locks (SQLAlchemy would silently drop `SKIP LOCKED` anyway): one
UPDATE statement holds the database's single write lock from the moment it reads the due
rows to the moment it sets their lease, so two processes can never claim the same row.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Engine

from dispatcher_service.claims import claim_statement
from dispatcher_service.queue_backend import LEASE_EXPIRES, NOW, health_upserts

__all__ = ["SQLiteQueue"]

_UPSERT_HEALTH = health_upserts(insert)


class SQLiteQueue:
    """A `QueueBackend` for SQLite."""

    in_process = True
    # SQLite needs the WHERE to tell the upsert's ON from a join's.
    insert_events = sa.text(
        "INSERT INTO events (id, tenant, message_id, message_type, payload, create_time) "
        "SELECT json_extract(value, '$.id'), json_extract(value, '$.tenant'), "
        "json_extract(value, '$.message_id'), json_extract(value, '$.message_type'), "
        "json_extract(value, '$.payload'), :now FROM json_each(:rows) WHERE true "
        "ON CONFLICT (tenant, message_id) DO NOTHING RETURNING tenant, message_id"
    ).bindparams(NOW)
    insert_deliveries = sa.text(
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
    ).bindparams(NOW, LEASE_EXPIRES)

    def __init__(self) -> None:
        # Threads of this process queue on a lock of their own rather than in SQLite's
        # busy handler, which polls with sleeps of up to 100 ms; other processes still
        # wait in the busy handler.
        self._write_lock = threading.Lock()

    def upsert_health(self, *, restart: bool) -> sa.Insert:
        return _UPSERT_HEALTH[restart]

    def claim_statement(self, *, excluding: bool, after: bool, only: bool) -> sa.Update:
        return claim_statement(skip_locked=False, excluding=excluding, after=after, only=only)

    @contextlib.contextmanager
    def writing(self, engine: Engine, *, durable: bool) -> Iterator[sa.Connection]:
        """A connection holding this process's turn to write.

        `durable=False` skips the fsync of its commit, so a power cut may take it back;
        the next durable commit (an ingestion) makes it durable too, as SQLite's log is
        written in order.
        """
        with self._write_lock, engine.connect() as connection:
            # A setting of the connection, made before its transaction begins.
            connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL"
            )
            yield connection
