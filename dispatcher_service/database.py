"""The dispatcher's database: engine and migrations."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from service_common import database

__all__ = ["create_engine", "migrate"]

_MIGRATION_LOCK_ID = 0x5B5C_0002


def create_engine(url: str, *, pool_size: int = 10) -> Engine:
    # NORMAL in WAL mode: a committed (acknowledged) event survives the process being
    # killed at any instant; only a power cut can take the last transactions.
    return database.create_engine(url, sqlite_synchronous="NORMAL", pool_size=pool_size)


def migrate(engine: Engine) -> None:
    database.migrate(
        engine, script_location="dispatcher_service:migrations", lock_id=_MIGRATION_LOCK_ID
    )
