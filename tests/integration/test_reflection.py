"""Both services answer server reflection as `grpc.reflection.v1` (what grpcurl and current
clients ask for) and as the older `grpc.reflection.v1alpha`, with the same answers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as messages

from dispatcher_service.server import RunningDispatcher
from subscription_service.server import RunningServer

# The two versions share their messages field for field, so one set of classes speaks both.
PACKAGES = ["grpc.reflection.v1", "grpc.reflection.v1alpha"]


def _ask(
    port: int, package: str, requests: list[messages.ServerReflectionRequest]
) -> list[messages.ServerReflectionResponse]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        info = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=messages.ServerReflectionRequest.SerializeToString,
            response_deserializer=messages.ServerReflectionResponse.FromString,
        )
        return list(info(iter(requests), timeout=10))


def _files(
    answer: messages.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert answer.HasField("file_descriptor_response"), answer
    found = {}
    for serialized in answer.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        found[proto.name] = proto
    return found


async def _check_reflection(port: int, package: str, service: str, file_name: str) -> None:
    # The blocking client runs in a thread: the server shares this event loop.
    listed, by_symbol, by_name, own = await asyncio.to_thread(
        _ask,
        port,
        package,
        [
            messages.ServerReflectionRequest(list_services=""),
            messages.ServerReflectionRequest(file_containing_symbol=service),
            messages.ServerReflectionRequest(file_by_filename=file_name),
            messages.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            ),
        ],
    )
    names = {entry.name for entry in listed.list_services_response.service}
    assert {
        service,
        "webhooks.v1.CallerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    for answer in (by_symbol, by_name):
        files = _files(answer)
        assert service.rpartition(".")[2] in [s.name for s in files[file_name].service]
        # Its imports come along, so a client can build every type.
        assert "google/protobuf/timestamp.proto" in files
    reflection_file = _files(own)["grpc/reflection/v1/reflection.proto"]
    assert reflection_file.package == "grpc.reflection.v1"
    method = reflection_file.service[0].method[0]
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert {m.name for m in reflection_file.message_type} == {
        m.name for m in messages.DESCRIPTOR.message_types_by_name.values()
    }


@pytest.mark.parametrize("package", PACKAGES)
async def test_subscription_service_answers_reflection_v1_and_v1alpha(
    subscription_server: RunningServer, package: str
) -> None:
    await _check_reflection(
        subscription_server.port,
        package,
        "webhooks.v1.SubscriptionService",
        "webhooks/v1/subscription_service.proto",
    )


@pytest.mark.parametrize("package", PACKAGES)
async def test_dispatcher_answers_reflection_v1_and_v1alpha(
    dispatcher: RunningDispatcher, package: str
) -> None:
    await _check_reflection(
        dispatcher.port,
        package,
        "webhooks.v1.DispatcherService",
        "webhooks/v1/dispatcher_service.proto",
    )
