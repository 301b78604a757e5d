"""Fixtures shared by the whole suite: databases (SQLite and PostgreSQL) and tokens."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from service_common.auth import hash_token

# Every dispatcher serves HTTP too (DISPATCHER_HTTP_ADDR, 127.0.0.1:8080 by default), and
# both services serve metrics; tests run several at once, in this process and in child
# processes, so each picks a free port.
for _name in ("DISPATCHER_HTTP_ADDR", "DISPATCHER_METRICS_ADDR", "SUBSCRIPTIONS_METRICS_ADDR"):
    os.environ.setdefault(_name, "127.0.0.1:0")

# The PostgreSQL server the tests may use; each test gets a database of its own on it.
POSTGRES_URL = os.environ.get(
    "WEBHOOKS_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"
)


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(_libpq_dsn(POSTGRES_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc)


@dataclass(frozen=True)
class PostgresDatabase:
    url: str
    name: str

    def admin_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(_libpq_dsn(POSTGRES_URL), autocommit=True)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = _postgres_reachable()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required when CI is set: {problem}")
    pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {problem}")


@pytest.fixture
def new_postgres_database(postgres_available: None) -> Iterator[Callable[[], PostgresDatabase]]:
    """Makes new, empty PostgreSQL databases, dropped after the test."""
    made: list[PostgresDatabase] = []

    def make() -> PostgresDatabase:
        name = f"webhooks_test_{uuid.uuid4().hex[:12]}"
        database = PostgresDatabase(
            url=make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False),
            name=name,
        )
        with database.admin_connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        made.append(database)
        return database

    yield make
    for database in made:
        with database.admin_connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


@pytest.fixture
def postgres_database(new_postgres_database: Callable[[], PostgresDatabase]) -> PostgresDatabase:
    """A new, empty PostgreSQL database, dropped after the test."""
    return new_postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def new_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], str]:
    """Makes the URL of a new, empty database of the test's backend (one per service)."""

    def make(name: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / name}.db"
        factory: Callable[[], PostgresDatabase] = request.getfixturevalue("new_postgres_database")
        return factory().url

    return make


@pytest.fixture
def database_url(new_database_url: Callable[[str], str]) -> str:
    return new_database_url("test")


@dataclass(frozen=True)
class Tokens:
    """Tokens of the test tokens file, by who holds them."""

    file: Path
    acme: str = "acme-writer-token"
    acme_reader: str = "acme-reader-token"
    acme_publisher: str = "acme-publisher-token"
    globex: str = "globex-writer-token"
    globex_publisher: str = "globex-publisher-token"
    globex_deliveries: str = "globex-deliveries-token"
    acme_deliveries: str = "acme-deliveries-token"
    platform: str = "platform-admin-token"
    operator: str = "operator-token-all-tenants"


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    path = tmp_path / "tokens.json"
    held = Tokens(file=path)
    entries = [
        (held.acme, "acme", ["subscriptions:read", "subscriptions:write"]),
        (held.acme_reader, "acme", ["subscriptions:read"]),
        (held.acme_publisher, "acme", ["publish"]),
        (held.acme_deliveries, "acme", ["deliveries:read", "deliveries:write"]),
        (held.globex, "globex", ["subscriptions:read", "subscriptions:write"]),
        (held.globex_publisher, "globex", ["publish"]),
        (held.globex_deliveries, "globex", ["deliveries:read", "deliveries:write"]),
        (held.platform, "*", ["admin"]),
        (held.operator, "*", ["subscriptions:read", "subscriptions:write"]),
    ]
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {"sha256": hash_token(token), "tenant": tenant, "scopes": scopes}
                    for token, tenant, scopes in entries
                ]
            }
        )
    )
    return held


# How many cases the generated suites (fuzz, properties, schemathesis) ran, listed at the
# end of every run.
_CASE_COUNTS: list[str] = []


def report_cases(line: str) -> None:
    """Records a line saying how many cases a generated test ran."""
    _CASE_COUNTS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _CASE_COUNTS:
        terminalreporter.section("generated cases")
        for line in _CASE_COUNTS:
            terminalreporter.write_line(line)
