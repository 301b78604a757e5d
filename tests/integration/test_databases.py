"""The databases: migrations match the models, and outages answer UNAVAILABLE."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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
