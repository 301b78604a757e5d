"""Clients that have only the .proto files, or only the running server, can use the API.

A Node.js client (tests/node) builds its stubs at run time from protos/; a Python client
discovers the service through server reflection without the generated modules; load
balancers see the service through gRPC health checking.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.integration.conftest import auth
from tests.node_tools import NODE_DIR, node_executable, run_node_script
from webhooks.v1 import subscription_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

SERVICE = "webhooks.v1.SubscriptionService"
CLAIM_CREATED = "event.claim.created.v1"
CLIENT = NODE_DIR / "subscription_client.mjs"
NODE_TIMEOUT_SECONDS = 30


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # What these tests check does not depend on the database; SQLite is enough.
    return f"sqlite:///{tmp_path / 'subscriptions.db'}"


@pytest.fixture
def node() -> str:
    return node_executable(purpose="the Node.js client test")


def _proto_include_dirs() -> list[Path]:
    """Where the standard imports live: protoc's google/protobuf and the googleapis google/rpc.

    Any protobuf toolchain has both; here they come with grpcio-tools and
    googleapis-common-protos, which the project already installs.
    """
    grpc_tools = importlib.util.find_spec("grpc_tools")
    assert grpc_tools is not None
    assert grpc_tools.origin is not None
    well_known = Path(grpc_tools.origin).parent / "_proto"
    googleapis = Path(error_details_pb2.__file__).parents[2]
    assert (well_known / "google/protobuf/timestamp.proto").is_file()
    assert (googleapis / "google/rpc/error_details.proto").is_file()
    return [well_known, googleapis]


@dataclass(frozen=True)
class ClientRun:
    returncode: int
    output: dict[str, Any]
    stderr: str


async def run_node_client(
    node: str, port: int, *args: str, env: dict[str, str] | None = None
) -> ClientRun:
    proto_paths = [arg for path in _proto_include_dirs() for arg in ("--proto-path", str(path))]
    run = await run_node_script(
        node,
        CLIENT,
        "--target",
        f"127.0.0.1:{port}",
        *proto_paths,
        *args,
        seconds=NODE_TIMEOUT_SECONDS,
        env=env,
    )
    assert run.stdout, f"the Node.js client printed nothing (exit {run.returncode}): {run.stderr}"
    return ClientRun(run.returncode, json.loads(run.stdout), run.stderr)


@pytest.mark.node
async def test_node_client_creates_reads_lists_and_updates_from_the_protos_alone(
    node: str, subscription_server: RunningServer, stub: Stub, tokens: Tokens
) -> None:
    from_python = await stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                url="https://receiver.example.com/from-python", message_types=["event.claim.*"]
            )
        ),
        metadata=auth(tokens.acme),
    )
    await stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                url="https://receiver.example.com/notes", message_types=["event.note.created.v1"]
            )
        ),
        metadata=auth(tokens.acme),
    )

    run = await run_node_client(
        node,
        subscription_server.port,
        "--message-type",
        CLAIM_CREATED,
        env={"WEBHOOKS_TOKEN": tokens.acme},
    )

    assert run.returncode == 0, run
    # An import missing from the include dirs makes proto-loader warn and use bundled copies.
    assert "not found in any of the include paths" not in run.stderr
    created = run.output["created"]
    assert created["id"].startswith("sub_")
    assert created["tenant"] == "acme"
    assert created["url"] == "https://receiver.example.com/from-node"
    assert created["message_types"] == [CLAIM_CREATED]
    assert created["enabled"] is True
    assert created["signature_algorithm"] == "SIGNATURE_ALGORITHM_ECDSA_P256_SHA256"
    assert created["has_secret"] is False
    assert created["etag"]
    assert run.output["fetched"] == created
    # Page by page (page size 1), filtered by a type that a pattern also matches.
    assert run.output["listed"] == [from_python.subscription.id, created["id"]]

    updated = run.output["updated"]
    assert updated["id"] == created["id"]
    assert (updated["enabled"], updated["disabled_reason"]) == (False, "paused from node")
    assert updated["description"] == "created from node"  # not in the update mask
    assert updated["etag"] != created["etag"]
    assert run.output["staleEtag"]["codeName"] == "FAILED_PRECONDITION"

    seen_by_python = (
        await stub.GetSubscription(
            pb.GetSubscriptionRequest(id=created["id"]), metadata=auth(tokens.acme)
        )
    ).subscription
    assert seen_by_python.url == created["url"]
    assert list(seen_by_python.message_types) == [CLAIM_CREATED]
    assert seen_by_python.description == "created from node"
    assert seen_by_python.enabled is False
    assert seen_by_python.disabled_reason == "paused from node"
    assert seen_by_python.etag == updated["etag"]
    assert seen_by_python.create_time.seconds == int(created["create_time"]["seconds"])
    assert seen_by_python.create_time.nanos == created["create_time"]["nanos"]


@pytest.mark.node
async def test_node_client_reads_invalid_argument_with_its_field_violations(
    node: str, subscription_server: RunningServer, tokens: Tokens
) -> None:
    run = await run_node_client(node, subscription_server.port, env={"WEBHOOKS_TOKEN": tokens.acme})

    assert run.returncode == 0, run
    bad_url = run.output["badUrl"]
    assert bad_url["codeName"] == "INVALID_ARGUMENT"
    assert bad_url["details"] == "subscription.url: must be an absolute http:// or https:// URL"
    assert bad_url["fieldViolations"] == [
        {
            "field": "subscription.url",
            "description": "must be an absolute http:// or https:// URL",
        }
    ]


@pytest.mark.node
async def test_node_client_with_a_token_nobody_issued_is_unauthenticated(
    node: str, subscription_server: RunningServer, stub: Stub, tokens: Tokens
) -> None:
    run = await run_node_client(node, subscription_server.port, "--token", "nobody-issued-this")

    assert run.returncode == 1
    error = run.output["error"]
    assert (error["step"], error["codeName"]) == ("CreateSubscription", "UNAUTHENTICATED")
    assert error["details"] == "the bearer token is not valid"
    listed = await stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(tenant="acme"), metadata=auth(tokens.operator)
    )
    assert list(listed.subscriptions) == []


@dataclass(frozen=True)
class Discovered:
    services: list[str]
    methods: dict[str, tuple[str, str, bool]]
    created: dict[str, Any]


def _discover_and_create(port: int, token: str) -> Discovered:
    """Uses the API knowing only its address and name: every type comes from reflection."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        methods = {
            method.name: (
                method.input_type.full_name,
                method.output_type.full_name,
                method.server_streaming,
            )
            for method in service.methods
        }
        create = service.methods_by_name["CreateSubscription"]
        request_class = message_factory.GetMessageClass(create.input_type)
        response_class = message_factory.GetMessageClass(create.output_type)
        request = request_class()
        request.subscription.url = "https://receiver.example.com/reflected"  # type: ignore[attr-defined]
        request.subscription.message_types.append(CLAIM_CREATED)  # type: ignore[attr-defined]
        call = channel.unary_unary(
            f"/{SERVICE}/{create.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        response = call(request, metadata=auth(token), timeout=10)
        subscription = response.subscription
        created = {
            "id": subscription.id,
            "tenant": subscription.tenant,
            "url": subscription.url,
            "message_types": list(subscription.message_types),
        }
        return Discovered(services, methods, created)


async def test_reflection_lets_a_client_without_generated_code_discover_and_call_the_service(
    subscription_server: RunningServer, stub: Stub, tokens: Tokens
) -> None:
    # The blocking reflection client runs in a thread: the server shares this event loop.
    discovered = await asyncio.to_thread(
        _discover_and_create, subscription_server.port, tokens.acme
    )

    assert SERVICE in discovered.services
    assert "grpc.health.v1.Health" in discovered.services
    request_response = {
        "CreateSubscription",
        "GetSubscription",
        "ListSubscriptions",
        "UpdateSubscription",
        "DeleteSubscription",
    }
    assert set(discovered.methods) == request_response | {"WatchSubscriptions"}
    for name in request_response:
        assert discovered.methods[name] == (
            f"webhooks.v1.{name}Request",
            f"webhooks.v1.{name}Response",
            False,
        )
    assert discovered.methods["WatchSubscriptions"] == (
        "webhooks.v1.WatchSubscriptionsRequest",
        "webhooks.v1.WatchSubscriptionsResponse",
        True,
    )
    assert discovered.created["tenant"] == "acme"
    fetched = (
        await stub.GetSubscription(
            pb.GetSubscriptionRequest(id=discovered.created["id"]), metadata=auth(tokens.acme)
        )
    ).subscription
    assert fetched.url == "https://receiver.example.com/reflected"
    assert list(fetched.message_types) == [CLAIM_CREATED]


async def test_health_check_answers_serving_for_the_subscription_service(
    subscription_server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscription_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in (SERVICE, ""):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(
                health_pb2.HealthCheckRequest(service="webhooks.v1.NoSuchService"), timeout=5
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
