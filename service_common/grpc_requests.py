"""Registers a servicer so that requests are parsed and checked before it sees them.

grpc's generated `add_*Servicer_to_server` parses requests before any of our code runs,
so bytes that are no valid message end the call with UNKNOWN and a parser's traceback
text. Registered here, such a call ends with INVALID_ARGUMENT naming the message type;
and strings with a NUL character, which PostgreSQL cannot store, are refused naming the
field, before they reach a database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from service_common.errors import InvalidArgument
from service_common.grpc_errors import abort_with

__all__ = ["add_servicer", "nul_field"]

Context = grpc.aio.ServicerContext[Any, Any]


def add_servicer(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Serves every method of `service` with the same-named method of `servicer`."""
    handlers = {}
    for method in service.methods:
        # Streamed requests carry batches of events, which ingestion checks field by
        # field anyway; walking each for NUL characters would only slow publishing down.
        parse = _parser(
            message_factory.GetMessageClass(method.input_type),
            check_nul=not method.client_streaming,
        )
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(
                _stream_stream(behavior, parse), response_serializer=serialize
            )
        elif method.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler(
                _unary_stream(behavior, parse), response_serializer=serialize
            )
        elif method.client_streaming:
            raise NotImplementedError(f"client streaming ({method.full_name})")
        else:
            handler = grpc.unary_unary_rpc_method_handler(
                _unary_unary(behavior, parse), response_serializer=serialize
            )
        handlers[method.name] = handler
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


Parse = Callable[[bytes, Context], Any]


def _parser(message_class: type[Message], *, check_nul: bool) -> Parse:
    name = message_class.DESCRIPTOR.full_name

    async def parse(data: bytes, context: Context) -> Message:
        try:
            request = message_class.FromString(data)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is no valid {name}")
            raise
        field = nul_field(request) if check_nul else None
        if field is not None:
            await abort_with(context, InvalidArgument.of(field, "must not contain NUL characters"))
        return request

    return parse


def _unary_unary(behavior: Any, parse: Parse) -> Any:
    async def handle(data: bytes, context: Context) -> Any:
        return await behavior(await parse(data, context), context)

    return handle


def _unary_stream(behavior: Any, parse: Parse) -> Any:
    async def handle(data: bytes, context: Context) -> AsyncIterator[Any]:
        async for response in behavior(await parse(data, context), context):
            yield response

    return handle


def _stream_stream(behavior: Any, parse: Parse) -> Any:
    async def handle(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async def parsed() -> AsyncIterator[Any]:
            async for data in requests:
                yield await parse(data, context)

        async for response in behavior(parsed(), context):
            yield response

    return handle


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string field of `message` holding a NUL character, if any."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if field.is_repeated else (value,)
            if any("\x00" in text for text in values):
                return path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is None or field.message_type.GetOptions().map_entry:
                continue
            children = value if field.is_repeated else (value,)
            for child in children:
                found = nul_field(child, f"{path}.")
                if found is not None:
                    return found
    return None
