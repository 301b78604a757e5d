"""Database engines for SQLite and PostgreSQL, and migrations at start.

Each service has its own database and its own Alembic migrations; this is only the
plumbing they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine, make_url

from service_common.errors import StoreUnavailable

__all__ = [
    "as_utc",
    "create_engine",
    "dispose_when_returned",
    "migrate",
    "unavailable_on_database_errors",
]

# Seconds to wait for a connection to PostgreSQL, unless the URL says (`?connect_timeout=`).
CONNECT_TIMEOUT_SECONDS = 5
# Seconds a call waits for a free pooled connection before it answers UNAVAILABLE.
POOL_TIMEOUT_SECONDS = 10
# A server that vanishes without closing its connections (a host lost, a partition)
# answers nothing, not even a refusal: TCP keepalives notice an idle connection after
# about 10 + 3 x 5 seconds, and unacknowledged writes give up after 30 s, instead of a
# call hanging for as long as the operating system retransmits (minutes). libpq names;
# the URL's own query parameters win.
POSTGRES_TCP_SETTINGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
# SQLSTATE of a write refused by a read-only server: a standby that was, or still is,
# behind the address after a failover. Waiting for the new primary is the answer.
_READ_ONLY_SQL_TRANSACTION = "25006"

P = ParamSpec("P")
R = TypeVar("R")


def unavailable_on_database_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turns a lost or unreachable database into `StoreUnavailable` (UNAVAILABLE to callers)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable("the database is unavailable") from exc
        except sa.exc.DBAPIError as exc:
            read_only = getattr(exc.orig, "sqlstate", None) == _READ_ONLY_SQL_TRANSACTION
            if exc.connection_invalidated or read_only:
                raise StoreUnavailable("the database is unavailable") from exc
            raise

    return wrapper


# What a lost, restarting or overloaded database raises. psycopg's server-side shutdown
# errors (AdminShutdown, CrashShutdown, CannotConnectNow) are OperationalErrors; a pool
# whose every connection hangs on a dead server ends in TimeoutError; PendingRollbackError
# is the aftermath of a connection lost inside a transaction that was not rolled back yet.
_UNAVAILABLE = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
    sa.exc.PendingRollbackError,
)


def as_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime: SQLite hands them back naive, and every
    time the services store is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def create_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5) -> Engine:
    """An engine for `url`; SQLite files get WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, synchronous=sqlite_synchronous)
    # A server that does not answer at all (not even a refusal) must not hold a call for
    # minutes: libpq would wait as long as the operating system does.
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        defaults = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **POSTGRES_TCP_SETTINGS}
        connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
    # pre_ping replaces connections the server closed (a restart) instead of failing a call.
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=connect_args,
    )


def _sqlite_engine(url: str, database: str | None, *, synchronous: str) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


# How long shutdown waits for store calls still running in threads to return their
# connections (see `dispose_when_returned`).
RETURN_TIMEOUT_SECONDS = 5.0


async def dispose_when_returned(engine: Engine) -> None:
    """Closes the engine's connections once every one is back in its pool, or after
    `RETURN_TIMEOUT_SECONDS`.

    At shutdown a store call whose RPC was cancelled still runs in its thread. A
    connection it returned after the pool was disposed would be closed only by the
    garbage collector, at some arbitrary later time.
    """
    checked_out = getattr(engine.pool, "checkedout", None)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RETURN_TIMEOUT_SECONDS):
            # The pool tells of each connection returned, in the returning thread, but
            # not of the last one: a short poll is simpler than counting across threads.
            while checked_out is not None and checked_out() > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    engine.dispose()


def migrate(engine: Engine, *, script_location: str, lock_id: int) -> None:
    """Brings the schema to the newest migration of `script_location`.

    On PostgreSQL an advisory lock makes replicas that start together take turns.
    """
    config = Config()
    config.set_main_option("script_location", script_location)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
