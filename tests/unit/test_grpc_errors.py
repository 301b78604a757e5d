"""Domain errors become the right gRPC status, over a real server on a loopback port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StaleEtag,
    StoreUnavailable,
    Unauthenticated,
    WebhooksError,
)
from service_common.grpc_errors import status_code_of, translate_errors, translate_stream_errors
from subscription_service.validation import MAX_MESSAGE_TYPES, check_message_types

Code = grpc.StatusCode
Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = "test.v1.Errors"


class Unmapped(WebhooksError):
    """A WebhooksError subclass nobody gave a status code."""


class GoneForGood(NotFound):
    """A subclass inherits the code of its base."""


ERRORS: dict[str, tuple[Callable[[], WebhooksError], Code]] = {
    "invalid_argument": (lambda: InvalidArgument.of("id", "required"), Code.INVALID_ARGUMENT),
    "unauthenticated": (lambda: Unauthenticated("no token"), Code.UNAUTHENTICATED),
    "permission_denied": (lambda: PermissionDenied("no scope"), Code.PERMISSION_DENIED),
    "not_found": (lambda: NotFound("no such subscription"), Code.NOT_FOUND),
    "already_exists": (lambda: AlreadyExists("exists"), Code.ALREADY_EXISTS),
    "stale_etag": (lambda: StaleEtag("changed since"), Code.FAILED_PRECONDITION),
    "failed_precondition": (
        lambda: FailedPrecondition("the payload of event m1 was expunged"),
        Code.FAILED_PRECONDITION,
    ),
    "resource_exhausted": (lambda: ResourceExhausted("too far behind"), Code.RESOURCE_EXHAUSTED),
    "store_unavailable": (lambda: StoreUnavailable("database down"), Code.UNAVAILABLE),
    "subclass": (lambda: GoneForGood("gone"), Code.NOT_FOUND),
    "unmapped": (lambda: Unmapped("nobody mapped me"), Code.INTERNAL),
}
TOO_MANY_UNKNOWN_TYPES = [f"event.unknown{i}.v1" for i in range(MAX_MESSAGE_TYPES)]


def raised(name: str) -> Exception:
    if name == "bug":
        return RuntimeError("password=hunter2 in /etc/webhooks.conf")
    if name == "unicode":
        return NotFound("aucune abonnée « réclamations » — 日本語")
    if name == "many_violations":
        violations = check_message_types(
            TOO_MANY_UNKNOWN_TYPES, known=(), field="subscription.message_types"
        )
        return InvalidArgument(violations)
    if name == "two_violations":
        return InvalidArgument(
            [
                FieldViolation("subscription.url", "required"),
                FieldViolation("subscription.message_types[1]", "listed twice"),
            ]
        )
    return ERRORS[name][0]()


class ErrorsServicer:
    @translate_errors
    async def Raise(self, request: bytes, context: Context) -> bytes:
        if request == b"nothing":
            return b"fine"
        raise raised(request.decode())

    @translate_errors
    async def AbortItself(self, request: bytes, context: Context) -> bytes:
        await context.abort(Code.OUT_OF_RANGE, "the servicer's own abort")
        raise AssertionError("abort returned")

    @translate_stream_errors
    async def Stream(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        if request != b"nothing":
            raise raised(request.decode())


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    servicer = ErrorsServicer()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Raise": grpc.unary_unary_rpc_method_handler(servicer.Raise),
            "AbortItself": grpc.unary_unary_rpc_method_handler(servicer.AbortItself),
            "Stream": grpc.unary_stream_rpc_method_handler(servicer.Stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop(None)


def raw_unary(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A method of the test service, taking and returning bytes as they are."""
    return channel.unary_unary(f"/{SERVICE}/{method}", None, None)


def raw_stream(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(f"/{SERVICE}/{method}", None, None)


async def call_failing(channel: grpc.aio.Channel, name: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_unary(channel, "Raise")(name.encode(), timeout=5)
    return caught.value


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carries in its trailers, if any."""
    trailers: tuple[tuple[str, str | bytes], ...] = tuple(error.trailing_metadata() or ())  # type: ignore[arg-type]
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            status: status_pb2.Status = status_pb2.Status.FromString(value)
            return status
    return None


def bad_request_of(status: status_pb2.Status) -> list[tuple[str, str]]:
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request), detail.type_url
        violations += [(v.field, v.description) for v in bad_request.field_violations]
    return violations


@pytest.mark.parametrize(("name", "code"), [(n, c) for n, (_, c) in ERRORS.items()], ids=ERRORS)
def test_each_domain_error_has_its_status_code(name: str, code: Code) -> None:
    assert status_code_of(ERRORS[name][0]()) == code


@pytest.mark.parametrize(("name", "code"), [(n, c) for n, (_, c) in ERRORS.items()], ids=ERRORS)
async def test_a_domain_error_reaches_the_client_as_its_status_with_its_message(
    channel: grpc.aio.Channel, name: str, code: Code
) -> None:
    error = await call_failing(channel, name)
    expected = ERRORS[name][0]()
    assert error.code() == code
    assert error.details() == str(expected)
    status = rich_status(error)
    assert status is not None
    assert status.code == getattr(code_pb2, code.name)
    assert status.message == str(expected)


async def test_only_invalid_argument_carries_field_violations(channel: grpc.aio.Channel) -> None:
    for name in ERRORS:
        status = rich_status(await call_failing(channel, name))
        assert status is not None
        assert bool(status.details) == (name == "invalid_argument"), name


async def test_invalid_argument_packs_every_violation_as_bad_request_in_order(
    channel: grpc.aio.Channel,
) -> None:
    error = await call_failing(channel, "two_violations")
    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (
        "subscription.url: required; subscription.message_types[1]: listed twice"
    )
    status = rich_status(error)
    assert status is not None
    assert [detail.type_url for detail in status.details] == [
        "type.googleapis.com/google.rpc.BadRequest"
    ]
    assert bad_request_of(status) == [
        ("subscription.url", "required"),
        ("subscription.message_types[1]", "listed twice"),
    ]


async def test_messages_outside_ascii_arrive_intact(channel: grpc.aio.Channel) -> None:
    error = await call_failing(channel, "unicode")
    assert error.code() == Code.NOT_FOUND
    assert error.details() == "aucune abonnée « réclamations » — 日本語"


async def test_an_unexpected_exception_is_internal_logged_and_never_shown_to_the_caller(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service_common.grpc_errors"):
        error = await call_failing(channel, "bug")
    assert error.code() == Code.INTERNAL
    assert error.details() == "internal error"
    assert "hunter2" not in repr(error.trailing_metadata())
    [record] = [r for r in caplog.records if r.name == "service_common.grpc_errors"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_a_successful_call_is_passed_through(channel: grpc.aio.Channel) -> None:
    assert await raw_unary(channel, "Raise")(b"nothing", timeout=5) == b"fine"


async def test_an_abort_by_the_servicer_itself_keeps_its_status(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_unary(channel, "AbortItself")(b"", timeout=5)
    assert caught.value.code() == Code.OUT_OF_RANGE
    assert caught.value.details() == "the servicer's own abort"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("invalid_argument", Code.INVALID_ARGUMENT),
        ("resource_exhausted", Code.RESOURCE_EXHAUSTED),
        ("store_unavailable", Code.UNAVAILABLE),
        ("bug", Code.INTERNAL),
    ],
)
async def test_a_stream_sends_what_it_yielded_then_the_status_of_its_error(
    channel: grpc.aio.Channel, name: str, code: Code
) -> None:
    call = raw_stream(channel, "Stream")(name.encode(), timeout=5)
    received = [await call.read(), await call.read()]
    assert received == [b"one", b"two"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == code
    if name == "invalid_argument":
        status = rich_status(caught.value)
        assert status is not None
        assert bad_request_of(status) == [("id", "required")]


async def test_a_stream_without_error_ends_normally(channel: grpc.aio.Channel) -> None:
    call = raw_stream(channel, "Stream")(b"nothing", timeout=5)
    assert [item async for item in call] == [b"one", b"two"]
    assert await call.code() == Code.OK


async def test_a_request_with_every_message_type_unknown_is_still_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    error = await call_failing(channel, "many_violations")
    assert error.code() == Code.INVALID_ARGUMENT
