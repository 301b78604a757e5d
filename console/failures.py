"""What a page shows when a call fails: the gRPC status becomes the HTTP answer.

UNAUTHENTICATED (a token revoked since sign-in) ends the session and asks to sign in
again; PERMISSION_DENIED is 403, NOT_FOUND 404 (another tenant's ids included: the
services answer those as not found), a service that does not answer 503. The page says
what the service said, never the token.
"""

from __future__ import annotations

import logging

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler

from console.rendering import flash, render
from console.session import sign_out

__all__ = ["HTTP_STATUS", "failure_middleware"]

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_TITLES = {
    400: "The request was refused",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Conflict",
    429: "Too many requests",
    503: "A service is not answering",
    504: "A service did not answer in time",
}


@web.middleware
async def failure_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as error:
        return await _call_failed(request, error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return await _error_page(request, error.status, error.reason)


async def _call_failed(request: web.Request, error: grpc.aio.AioRpcError) -> web.StreamResponse:
    code = error.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        await sign_out(request)
        await flash(request, "The token is no longer accepted: sign in again.", kind="error")
        raise web.HTTPSeeOther("/sign-in")
    status = HTTP_STATUS.get(code, 502)
    if status >= 500:
        log.warning("%s %s: %s %s", request.method, request.path, code.name, error.details())
    return await _error_page(request, status, error.details() or code.name)


async def _error_page(request: web.Request, status: int, detail: str) -> web.Response:
    title = _TITLES.get(status, "Something went wrong")
    context = {"title": title, "status": status, "detail": detail}
    return await render(request, "error.html", context, status=status)
