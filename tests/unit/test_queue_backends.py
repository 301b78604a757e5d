"""The delivery store's two backends without a server: PostgreSQL's statements as they
compile, SQLite's run on a file, and the store picking the one of its engine."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine

from dispatcher_service.models import metadata
from dispatcher_service.queue_backend import QueueBackend
from dispatcher_service.queue_postgres import PostgresQueue
from dispatcher_service.queue_sqlite import SQLiteQueue
from dispatcher_service.store import DeliveryStore
from service_common.database import as_utc

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POSTGRES: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
SQLITE: Dialect = sqlite.dialect()
BACKENDS = [
    pytest.param(PostgresQueue(), POSTGRES, id="postgresql"),
    pytest.param(SQLiteQueue(), SQLITE, id="sqlite"),
]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def compiled(statement: sa.ClauseElement, dialect: Dialect) -> str:
    return " ".join(str(statement.compile(dialect=dialect)).split())


@pytest.mark.parametrize(("backend", "dialect"), BACKENDS)
def test_events_stored_already_are_skipped_and_the_others_returned(
    backend: QueueBackend, dialect: Dialect
) -> None:
    assert compiled(backend.insert_events, dialect).endswith(
        "ON CONFLICT (tenant, message_id) DO NOTHING RETURNING tenant, message_id"
    )


@pytest.mark.parametrize(("backend", "dialect"), BACKENDS)
def test_a_run_of_failures_is_upserted_by_subscription(
    backend: QueueBackend, dialect: Dialect
) -> None:
    goes_on = compiled(backend.upsert_health(restart=False), dialect)
    restarts = compiled(backend.upsert_health(restart=True), dialect)
    for sql in (goes_on, restarts):
        assert "ON CONFLICT (subscription_id) DO UPDATE SET consecutive_failures = " in sql
    assert "consecutive_failures = (endpoint_health.consecutive_failures + " in goes_on
    assert "first_failure_time =" not in goes_on
    assert "first_failure_time =" in restarts


@pytest.mark.parametrize(
    ("backend", "dialect", "locks"),
    [
        pytest.param(PostgresQueue(), POSTGRES, True, id="postgresql"),
        pytest.param(SQLiteQueue(), SQLITE, False, id="sqlite"),
    ],
)
def test_only_postgres_claims_skip_the_rows_other_claims_locked(
    backend: QueueBackend, dialect: Dialect, locks: bool
) -> None:
    for excluding, after, only in itertools.product((False, True), repeat=3):
        claim = backend.claim_statement(excluding=excluding, after=after, only=only)
        assert ("FOR UPDATE SKIP LOCKED" in compiled(claim, dialect)) is locks


def test_a_run_of_failures_goes_on_until_a_batch_with_a_success_restarts_it(
    engine: Engine,
) -> None:
    backend = SQLiteQueue()
    later = NOW + timedelta(minutes=1)

    def upsert(failures: int, now: datetime, *, restart: bool = False) -> tuple[int, datetime]:
        with backend.writing(engine, durable=False) as connection, connection.begin():
            row = connection.execute(
                backend.upsert_health(restart=restart),
                {"subscription": "sub_1", "failures": failures, "now": now},
            ).one()
        return row[0], as_utc(row[1])

    assert upsert(2, NOW) == (2, NOW)
    assert upsert(3, later) == (5, NOW)
    assert upsert(1, later, restart=True) == (1, later)


@pytest.mark.parametrize(("durable", "synchronous"), [(True, 2), (False, 1)])
def test_sqlite_waits_for_the_disk_only_on_durable_writes(
    engine: Engine, durable: bool, synchronous: int
) -> None:
    with SQLiteQueue().writing(engine, durable=durable) as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous


def test_sqlite_writers_of_one_process_take_turns(engine: Engine) -> None:
    backend = SQLiteQueue()
    entered = threading.Event()

    def write() -> None:
        with backend.writing(engine, durable=False):
            entered.set()

    second = threading.Thread(target=write)
    with backend.writing(engine, durable=True):
        second.start()
        assert not entered.wait(0.1)
    assert entered.wait(5)
    second.join()


@pytest.mark.parametrize(
    ("url", "in_process"),
    [("sqlite://", True), ("postgresql+psycopg://127.0.0.1:1/none", False)],
)
def test_the_store_takes_the_backend_of_its_engine(url: str, in_process: bool) -> None:
    engine = sa.create_engine(url)
    assert DeliveryStore(engine).in_process is in_process
    engine.dispose()
