"""A real subscription service on a loopback port, and a way to call it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from webhooks.v1 import subscription_service_pb2_grpc as pb_grpc

Metadata = tuple[tuple[str, str | bytes], ...]


def auth(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of a failed call, by field."""
    metadata: tuple[tuple[str, str | bytes], ...] = tuple(error.trailing_metadata() or ())  # type: ignore[arg-type]
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    return {v.field: v.description for v in bad_request.field_violations}
    return {}


@pytest.fixture
def subscription_settings(database_url: str, tokens: Tokens) -> SubscriptionSettings:
    return SubscriptionSettings(
        grpc_addr="127.0.0.1:0",
        database_url=database_url,
        auth_tokens_file=tokens.file,
        shutdown_grace_seconds=1.0,
    )


@pytest.fixture
async def subscription_server(
    subscription_settings: SubscriptionSettings,
) -> AsyncIterator[RunningServer]:
    running = await create_server(subscription_settings)
    yield running
    await running.stop(0)


@pytest.fixture
async def stub(
    subscription_server: RunningServer,
) -> AsyncIterator[pb_grpc.SubscriptionServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscription_server.port}") as channel:
        yield pb_grpc.SubscriptionServiceStub(channel)
