"""Server reflection as `grpc.reflection.v1`, beside the `grpc.reflection.v1alpha` of
grpcio-reflection.

grpcio-reflection (1.85.1, its newest release) serves only v1alpha, while current clients
(grpcurl, Postman, the Go and Java reflection clients) ask for v1 and get "Method not found".
v1 is v1alpha promoted unchanged: the same messages with the same field numbers, in package
`grpc.reflection.v1`. So the v1 service is the v1alpha servicer of grpcio-reflection mounted
under the v1 name (each request and answer is the same bytes in either package), and the v1
file descriptor, which clients may ask for like any other, is the v1alpha one renamed, with
the options of the official `grpc/reflection/v1/reflection.proto`. When grpcio-reflection
ships v1, this module gives way to its `grpc_reflection.v1`.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

__all__ = ["FILE_NAME", "SERVICE_NAME", "enable_server_reflection"]

PACKAGE = "grpc.reflection.v1"
FILE_NAME = "grpc/reflection/v1/reflection.proto"
SERVICE_NAME = f"{PACKAGE}.ServerReflection"
_ALPHA_PACKAGE = v1alpha_pb2.DESCRIPTOR.package


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of `grpc/reflection/v1/reflection.proto`, made from the v1alpha one."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = FILE_NAME
    proto.package = PACKAGE
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    old, new = f".{_ALPHA_PACKAGE}.", f".{PACKAGE}."
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.type_name:
                message_field.type_name = message_field.type_name.replace(old, new, 1)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new, 1)
        method.output_type = method.output_type.replace(old, new, 1)
    return proto


def _register_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor().SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves `grpc.reflection.v1` on `server`, listing `service_names`."""
    _register_descriptor(descriptor_pool.Default())
    # The published stubs omit the asyncio servicer, as for health checking.
    servicer = reflection.aio.ReflectionServicer(tuple(service_names))  # type: ignore[attr-defined]
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
