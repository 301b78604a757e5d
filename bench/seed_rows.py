"""Rows written straight into a migrated dispatcher database, for benches that need far
more of them than publishing could make in reasonable time.

Each kind of row is one INSERT ... SELECT over a series of numbers, run by the database
itself (PostgreSQL: `generate_series`; SQLite: a recursive common table expression), in
transactions of CHUNK rows: no per-row work in Python. Ids have the product's shape
(`evt_`/`dlv_`, 12 hex digits of unix milliseconds, 20 more hex digits: here the row's
number), so they sort by time as the product's do. Payloads are the canonical JSON text
of a real message type, checked against its contract, with each row's message id.

- `seed_due`: pending deliveries, due at `now`, for one subscription (nothing sent yet);
- `seed_finished`: deliveries that succeeded at `at`, with their one attempt each.

Afterwards SQLite's write-ahead log is checkpointed, and PostgreSQL's tables are vacuumed
and analyzed, as autovacuum would have done to tables that old.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher_rates import DETAILS

from dispatcher_service.database import create_engine, migrate
from webhook_contracts import load_registry
from webhook_wire.canonical import payload_as_string

__all__ = ["MESSAGE_TYPE", "Seeded", "Subscriber", "seed_due", "seed_finished"]

MESSAGE_TYPE = "event.claim.created.v1"
CHUNK = 100_000
_MARK = "@@message-id@@"
_TIME = sa.DateTime(timezone=True)
_TIMES = ("created", "updated", "due")
_SERIES = {
    "postgresql": "SELECT generate_series(:start, :stop - 1) AS i",
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT :start UNION ALL "
    "SELECT i + 1 FROM n WHERE i + 1 < :stop) SELECT i FROM n",
}
_HEX = {"postgresql": "lpad(to_hex(i), 20, '0')", "sqlite": "printf('%020x', i)"}
# Text parameters are cast so PostgreSQL knows their type in `||`.
_EVENTS = """
INSERT INTO events (id, tenant, message_id, message_type, payload, create_time)
SELECT CAST(:evt AS TEXT) || {hex}, :tenant, CAST(:mid AS TEXT) || i, :type,
       CAST(:head AS TEXT) || CAST(:mid AS TEXT) || i || CAST(:tail AS TEXT), :created
FROM ({series}) AS s"""
_DELIVERIES = """
INSERT INTO deliveries (id, event_id, tenant, subscription_id, message_id, message_type, url,
                        state, attempt_count, next_attempt_time, create_time, update_time)
SELECT CAST(:dlv AS TEXT) || {hex}, CAST(:evt AS TEXT) || {hex}, :tenant, :subscription,
       CAST(:mid AS TEXT) || i, :type, :url, :state, :attempts, :due, :created, :updated
FROM ({series}) AS s"""
_ATTEMPTS = """
INSERT INTO attempts (delivery_id, number, start_time, status_code, latency_ms, error,
                      response_snippet)
SELECT CAST(:dlv AS TEXT) || {hex}, 1, :updated, 200, 3, '', 'ok'
FROM ({series}) AS s"""


@dataclass(frozen=True)
class Seeded:
    rows: int  # events (each with one delivery, and one attempt if finished)
    seconds: float


def payload_parts(moment: datetime) -> tuple[str, str]:
    """The canonical payload text of a MESSAGE_TYPE event published at `moment`, split
    where its message id goes."""
    payload = {
        "details": {**json.loads(DETAILS), "messageType": MESSAGE_TYPE},
        "messageId": "m-1",
        "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    load_registry().get(MESSAGE_TYPE).validate_payload(payload)
    head, tail = payload_as_string({**payload, "messageId": _MARK}).split(_MARK)
    return head, tail


def _statement(template: str, dialect: str) -> sa.TextClause:
    """`template` for `dialect`, its times bound as the product binds them."""
    text = template.format(hex=_HEX[dialect], series=_SERIES[dialect])
    times = [sa.bindparam(name, type_=_TIME) for name in _TIMES if f":{name}" in text]
    return sa.text(text).bindparams(*times)


def _seed(url: str, count: int, parameters: dict[str, object], *, attempts: bool) -> Seeded:
    """Migrates the database at `url`, then writes `count` events, their deliveries and
    (given `attempts`) one attempt each."""
    started = time.perf_counter()
    engine = create_engine(url)
    try:
        migrate(engine)
        dialect = engine.dialect.name
        templates = [_EVENTS, _DELIVERIES, *([_ATTEMPTS] if attempts else [])]
        statements = [_statement(template, dialect) for template in templates]
        for start in range(0, count, CHUNK):
            bounds = {"start": start, "stop": min(count, start + CHUNK)}
            with engine.begin() as connection:
                for statement in statements:
                    connection.execute(statement, {**parameters, **bounds})
        _settle(engine)
    finally:
        engine.dispose()
    return Seeded(count, time.perf_counter() - started)


def _settle(engine: Engine) -> None:
    autocommit = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    with autocommit as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            connection.exec_driver_sql("VACUUM (ANALYZE) events, deliveries, attempts")


@dataclass(frozen=True)
class Subscriber:
    """Whose deliveries the seeded rows are: a tenant's subscription to a URL."""

    tenant: str
    subscription_id: str
    url: str


def _common(prefix: str, moment: datetime, to: Subscriber) -> dict[str, object]:
    stamp = f"{int(moment.timestamp() * 1000):012x}"
    head, tail = payload_parts(moment)
    return {
        "evt": f"evt_{stamp}",
        "dlv": f"dlv_{stamp}",
        "mid": f"{prefix}-",
        "head": head,
        "tail": tail,
        "tenant": to.tenant,
        "subscription": to.subscription_id,
        "url": to.url,
        "type": MESSAGE_TYPE,
        "created": moment,
    }


def seed_due(database_url: str, count: int, to: Subscriber, *, now: datetime) -> Seeded:
    """`count` events, each with a pending delivery `to` a subscriber, created and due at
    `now`; message ids `due-0`, `due-1`, ..."""
    parameters = {"state": "pending", "attempts": 0, "due": now, "updated": now}
    return _seed(database_url, count, {**_common("due", now, to), **parameters}, attempts=False)


def seed_finished(database_url: str, count: int, to: Subscriber, *, at: datetime) -> Seeded:
    """`count` events created at `at`, each with a delivery `to` a subscriber that
    succeeded at its first attempt at `at`; message ids `old-0`, `old-1`, ..."""
    parameters = {"state": "succeeded", "attempts": 1, "due": None, "updated": at}
    return _seed(database_url, count, {**_common("old", at, to), **parameters}, attempts=True)
