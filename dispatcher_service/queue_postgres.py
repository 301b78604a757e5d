"""The delivery store's statements on PostgreSQL, where any number of dispatchers share
one server: a claim reads the due rows `FOR UPDATE SKIP LOCKED`, so that claims run side
by side, each taking rows the others have not locked."""

from __future__ import annotations

from contextlib import AbstractContextManager

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from dispatcher_service.claims import claim_statement
from dispatcher_service.queue_backend import LEASE_EXPIRES, NOW, health_upserts

__all__ = ["PostgresQueue"]

_UPSERT_HEALTH = health_upserts(insert)


class PostgresQueue:
    """A `QueueBackend` for PostgreSQL."""

    in_process = False
    insert_events = sa.text(
        "INSERT INTO events (id, tenant, message_id, message_type, payload, create_time) "
        "SELECT id, tenant, message_id, message_type, payload, :now "
        "FROM json_to_recordset(CAST(:rows AS json)) "
        "AS t (id text, tenant text, message_id text, message_type text, payload text) "
        "ON CONFLICT (tenant, message_id) DO NOTHING RETURNING tenant, message_id"
    ).bindparams(NOW)
    insert_deliveries = sa.text(
        "INSERT INTO deliveries (id, event_id, tenant, subscription_id, message_id, "
        "message_type, url, state, attempt_count, next_attempt_time, create_time, update_time, "
        "lease_owner, lease_expires, claim_time) "
        "SELECT id, event_id, tenant, subscription_id, message_id, message_type, url, "
        ":state, 0, :now, :now, :now, CASE WHEN leased THEN CAST(:owner AS text) END, "
        "CASE WHEN leased THEN :lease_expires END, CASE WHEN leased THEN :now END "
        "FROM json_to_recordset(CAST(:rows AS json)) AS t (id text, event_id text, "
        "tenant text, subscription_id text, message_id text, message_type text, url text, "
        "leased boolean)"
    ).bindparams(NOW, LEASE_EXPIRES)

    def upsert_health(self, *, restart: bool) -> sa.Insert:
        return _UPSERT_HEALTH[restart]

    def claim_statement(self, *, excluding: bool, after: bool, only: bool) -> sa.Update:
        return claim_statement(skip_locked=True, excluding=excluding, after=after, only=only)

    def writing(self, engine: Engine, *, durable: bool) -> AbstractContextManager[sa.Connection]:
        """Any pooled connection: the server makes every commit durable, and its row
        locks keep writers of every process apart."""
        return engine.connect()
