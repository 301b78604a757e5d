"""CallerService on both servers over loopback: each tells a token's tenant and scopes from
its own tokens file, refuses a missing or unknown token, and is listed as serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatcher_service.server import RunningDispatcher
from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.integration.conftest import Metadata, auth
from webhooks.v1 import caller_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.caller_service_pb2_grpc import CallerServiceAsyncStub as CallerStub
else:
    from webhooks.v1.caller_service_pb2_grpc import CallerServiceStub as CallerStub

CALLER_SERVICE = "webhooks.v1.CallerService"


@pytest.fixture
def backend() -> str:
    """SQLite only: the answers come from the tokens file, not the database."""
    return "sqlite"


@pytest.fixture(params=["subscriptions", "dispatcher"])
async def channel(
    request: pytest.FixtureRequest,
    subscription_server: RunningServer,
    dispatcher: RunningDispatcher,
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to each service in turn."""
    port = subscription_server.port if request.param == "subscriptions" else dispatcher.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened


async def get_caller(channel: grpc.aio.Channel, metadata: Metadata) -> pb.GetCallerResponse:
    return await CallerStub(channel).GetCaller(pb.GetCallerRequest(), metadata=metadata, timeout=5)


async def test_get_caller_tells_the_tokens_tenant_and_sorted_scopes(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    answers = {
        token: await get_caller(channel, auth(token))
        for token in (tokens.acme, tokens.acme_deliveries, tokens.platform, tokens.operator)
    }
    assert {token: (a.tenant, list(a.scopes)) for token, a in answers.items()} == {
        tokens.acme: ("acme", ["subscriptions:read", "subscriptions:write"]),
        tokens.acme_deliveries: ("acme", ["deliveries:read", "deliveries:write"]),
        tokens.platform: ("*", ["admin"]),
        tokens.operator: ("*", ["subscriptions:read", "subscriptions:write"]),
    }


async def test_a_token_with_a_single_scope_needs_no_other_to_ask(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    answer = await get_caller(channel, auth(tokens.globex_publisher))
    assert (answer.tenant, list(answer.scopes)) == ("globex", ["publish"])


@pytest.mark.parametrize(
    "metadata",
    [(), auth("no-such-token"), (("authorization", "Basic dXNlcjpwYXNz"),)],
    ids=["no token", "unknown token", "another scheme"],
)
async def test_get_caller_without_a_valid_token_is_unauthenticated(
    channel: grpc.aio.Channel, metadata: Metadata
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await get_caller(channel, metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no-such-token" not in str(refused.value.details())


async def test_caller_service_is_healthy_on_both_servers(channel: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=CALLER_SERVICE), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
