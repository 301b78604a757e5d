"""The subscription service's database: engine and migrations."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from service_common import database

__all__ = ["create_engine", "migrate"]

# Any fixed number works: it only keeps two replicas from migrating at the same time.
_MIGRATION_LOCK_ID = 0x5B5C_0001


def create_engine(url: str) -> Engine:
    # FULL: a change acknowledged to a caller survives a power cut, not just a crash.
    return database.create_engine(url, sqlite_synchronous="FULL")


def migrate(engine: Engine) -> None:
    database.migrate(
        engine, script_location="subscription_service:migrations", lock_id=_MIGRATION_LOCK_ID
    )
