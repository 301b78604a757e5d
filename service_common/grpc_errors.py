"""The one place where domain errors become gRPC status codes.

An `InvalidArgument` carries its field violations as `google.rpc.BadRequest` in the
status details, so generated clients in any language can read which field is wrong; a
`ResourceExhausted` that knows when to retry carries `google.rpc.RetryInfo`.
Anything that is not a `WebhooksError` is a bug: it is logged with its traceback and
answered INTERNAL without details, so internals never leak to callers.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StaleEtag,
    StoreUnavailable,
    Unauthenticated,
    WebhooksError,
)

__all__ = ["abort_with", "status_code_of", "translate_errors", "translate_stream_errors"]

log = logging.getLogger(__name__)

_CODES: dict[type[WebhooksError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    StaleEtag: grpc.StatusCode.FAILED_PRECONDITION,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# Status details travel in trailers, which gRPC caps (8 KB soft, 16 KB hard): past that
# the client would see RESOURCE_EXHAUSTED instead of the real error. So a status names
# at most this many violations (the first ones), each bounded in length.
_MAX_VIOLATIONS = 10
_MAX_IN_MESSAGE = 3
_MAX_MESSAGE = 1000

Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")


def status_code_of(error: WebhooksError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        code = _CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _summary(error: WebhooksError) -> str:
    if not isinstance(error, InvalidArgument):
        return str(error)[:_MAX_MESSAGE]
    shown = "; ".join(f"{v.field}: {v.description}" for v in error.violations[:_MAX_IN_MESSAGE])
    hidden = len(error.violations) - _MAX_IN_MESSAGE
    return (shown + (f"; and {hidden} more" if hidden > 0 else ""))[:_MAX_MESSAGE]


def _rich_status(error: WebhooksError) -> grpc.Status:
    code = status_code_of(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=_summary(error))
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field[:200], description=v.description[:300]
                )
                for v in error.violations[:_MAX_VIOLATIONS]
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(0, math.ceil(error.retry_after * 1e9)))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status.details.append(detail)
    result: grpc.Status = rpc_status.to_status(status)
    return result


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: WebhooksError) -> NoReturn:
    status = _rich_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


async def _abort_internal(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    log.exception("unexpected error while handling a call")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("context.abort returned")  # pragma: no cover


def translate_errors(
    method: Callable[[Servicer, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]],
) -> Callable[[Servicer, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]:
    """Wraps a unary servicer method so domain errors become the right status."""

    @functools.wraps(method)
    async def wrapper(
        self: Servicer, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        try:
            return await method(self, request, context)
        except WebhooksError as error:
            await abort_with(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _abort_internal(context)

    return wrapper


def translate_stream_errors(
    method: Callable[
        [Servicer, Request, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Response]
    ],
) -> Callable[[Servicer, Request, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Response]]:
    """Wraps a server-streaming servicer method so domain errors become the right status."""

    @functools.wraps(method)
    async def wrapper(
        self: Servicer, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Response]:
        try:
            async for item in method(self, request, context):
                yield item
        except WebhooksError as error:
            await abort_with(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _abort_internal(context)

    return wrapper
