"""The databases: migrations match the models, connections to PostgreSQL notice a vanished
server, outages (a server gone, a read-only server) answer UNAVAILABLE, and shutdown closes
every connection."""

from __future__ import annotations

import asyncio
import importlib
import re
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from dispatcher_service.database import migrate as migrate_deliveries
from dispatcher_service.domain import PreparedEvent, Target
from dispatcher_service.store import DeliveryStore
from service_common import database as common_database
from service_common.database import create_engine, dispose_when_returned
from service_common.errors import StoreUnavailable
from subscription_service.server import create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import PostgresDatabase, Tokens
from tests.integration.conftest import auth
from webhooks.v1 import subscription_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub


@pytest.mark.parametrize("service", ["subscription_service", "dispatcher_service"])
def test_migrations_create_exactly_the_models_schema(database_url: str, service: str) -> None:
    database = importlib.import_module(f"{service}.database")
    models = importlib.import_module(f"{service}.models")
    engine = database.create_engine(database_url)
    try:
        database.migrate(engine)
        database.migrate(engine)  # a second start finds nothing to do
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), models.metadata)
        assert differences == [], "models changed without a migration"
    finally:
        engine.dispose()


@pytest.mark.postgres
async def test_calls_answer_unavailable_while_the_database_is_gone(
    postgres_database: PostgresDatabase, tokens: Tokens
) -> None:
    settings = SubscriptionSettings(
        grpc_addr="127.0.0.1:0", database_url=postgres_database.url, auth_tokens_file=tokens.file
    )
    running = await create_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            request = pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    url="https://receiver.example.com/in", message_types=["event.claim.*"]
                )
            )
            await stub.CreateSubscription(request, metadata=auth(tokens.acme))
            with postgres_database.admin_connect() as admin:
                admin.execute(f'DROP DATABASE "{postgres_database.name}" WITH (FORCE)')
            for call in (
                stub.CreateSubscription(request, metadata=auth(tokens.acme)),
                stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=auth(tokens.acme)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)


@pytest.mark.postgres
def test_postgres_connections_keep_alive_unless_the_url_says_otherwise(
    postgres_database: PostgresDatabase,
) -> None:
    def parameters(url: str) -> dict[str, str]:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                driver = connection.connection.driver_connection
                return dict(driver.info.get_parameters())  # type: ignore[union-attr]
        finally:
            engine.dispose()

    defaults = parameters(postgres_database.url)
    assert {key: defaults.get(key) for key in ("keepalives", "keepalives_idle")} == {
        "keepalives": "1",
        "keepalives_idle": "10",
    }
    assert defaults.get("tcp_user_timeout") == "30000"
    assert defaults.get("connect_timeout") == "5"
    own = parameters(f"{postgres_database.url}?keepalives_idle=60&connect_timeout=2")
    assert (own.get("keepalives_idle"), own.get("connect_timeout")) == ("60", "2")
    assert own.get("keepalives_count") == "3"


@pytest.mark.postgres
async def test_a_read_only_server_answers_unavailable(
    new_postgres_database: Callable[[], PostgresDatabase], tokens: Tokens
) -> None:
    # A standby behind the database's address after a failover takes reads and refuses
    # writes until the new primary is there: writes answer UNAVAILABLE (retry), not UNKNOWN.
    subscriptions, deliveries = new_postgres_database(), new_postgres_database()
    settings = SubscriptionSettings(
        grpc_addr="127.0.0.1:0", database_url=subscriptions.url, auth_tokens_file=tokens.file
    )
    await (await create_server(settings)).stop(0)  # migrates
    engine = create_engine(deliveries.url)
    migrate_deliveries(engine)
    for database in (subscriptions, deliveries):
        with database.admin_connect() as admin:
            admin.execute(
                f'ALTER DATABASE "{database.name}" SET default_transaction_read_only = on'
            )
    engine.dispose()  # new connections are read-only

    running = await create_server(settings.model_copy(update={"migrate_on_start": False}))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            listed = await stub.ListSubscriptions(
                pb.ListSubscriptionsRequest(), metadata=auth(tokens.acme)
            )
            assert list(listed.subscriptions) == []
            request = pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    url="https://receiver.example.com/in", message_types=["event.claim.*"]
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateSubscription(request, metadata=auth(tokens.acme))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)

    event = PreparedEvent(
        tenant="acme",
        message_id="m1",
        message_type="event.claim.created.v1",
        payload='{"messageId":"m1"}',
        targets=(Target("sub_1", "https://receiver.example.com/in"),),
    )
    try:
        with pytest.raises(StoreUnavailable):
            DeliveryStore(engine).ingest([event], now=datetime.now(UTC))
    finally:
        engine.dispose()


# Each block of `CREATE INDEX CONCURRENTLY` in the README, and the revision its database is
# at when an operator runs it: just before the migration that adds those indexes.
README_INDEX_BLOCKS = [(0, "0002"), (1, "0004")]


@pytest.mark.postgres
@pytest.mark.parametrize(("block", "revision"), README_INDEX_BLOCKS)
def test_the_readme_builds_the_new_indexes_ahead_of_the_migration(
    postgres_database: PostgresDatabase, block: int, revision: str
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```sql\n([^`]*?CONCURRENTLY[^`]*?;)\n```", readme)
    assert len(blocks) == len(README_INDEX_BLOCKS), "the README's index blocks changed"
    statements = [part.strip() for part in blocks[block].split(";") if part.strip()]
    engine = create_engine(postgres_database.url)
    try:
        config = Config()
        config.set_main_option("script_location", "dispatcher_service:migrations")
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        # CONCURRENTLY runs outside a transaction, while the dispatcher goes on writing.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
        migrate_deliveries(engine)
        models = importlib.import_module("dispatcher_service.models")
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), models.metadata)
        assert differences == []
    finally:
        engine.dispose()


class HeldConnection:
    """A connection a thread holds until told, as a store call still running at shutdown."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._taken = threading.Event()
        self.release = threading.Event()
        self.driver_connection: object = None

    def hold(self) -> None:
        with self._engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            self.driver_connection = connection.connection.driver_connection
            self._taken.set()
            self.release.wait(10)

    async def taken(self) -> None:
        assert await asyncio.to_thread(self._taken.wait, 10)


async def test_shutdown_closes_a_connection_a_thread_still_held_once_it_is_back(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    held = HeldConnection(engine)
    holder = asyncio.create_task(asyncio.to_thread(held.hold))
    await held.taken()

    disposing = asyncio.create_task(dispose_when_returned(engine))
    await asyncio.sleep(0.3)
    assert not disposing.done()
    held.release.set()
    await asyncio.wait_for(disposing, 5)
    await holder

    # Closed, not left for the garbage collector.
    driver_connection = held.driver_connection
    assert isinstance(driver_connection, sqlite3.Connection | psycopg.Connection)
    with pytest.raises((sqlite3.ProgrammingError, psycopg.OperationalError)):
        driver_connection.cursor()


async def test_shutdown_waits_for_held_connections_only_so_long(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common_database, "RETURN_TIMEOUT_SECONDS", 0.2)
    engine = create_engine(database_url)
    held = HeldConnection(engine)
    holder = asyncio.create_task(asyncio.to_thread(held.hold))
    await held.taken()
    try:
        await asyncio.wait_for(dispose_when_returned(engine), 5)
    finally:
        held.release.set()
        await holder
        assert isinstance(held.driver_connection, sqlite3.Connection | psycopg.Connection)
        held.driver_connection.close()
