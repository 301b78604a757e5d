"""The one place where domain errors become HTTP answers: RFC 9457 problem details.

    {"type": "about:blank", "title": "Bad Request", "status": 400,
     "detail": "details.amount: 'x' is not of type 'integer'",
     "errors": [{"field": "details.amount", "message": "'x' is not of type 'integer'"}]}

`problem_middleware` answers every error of an aiohttp application this way: a
`WebhooksError` by its kind, aiohttp's own refusals (404, 405, 413, ...) with their status,
and anything else as a bug (logged with its traceback, answered 500 without details).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import orjson
from aiohttp import web

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

__all__ = ["PROBLEM_JSON", "problem_middleware", "problem_response", "status_of"]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# What a refused caller is told to wait before trying again when the store is down.
RETRY_AFTER_SECONDS = 2
_MAX_VIOLATIONS = 100
_MAX_IN_DETAIL = 3
_MAX_TEXT = 1000

_STATUSES: dict[type[WebhooksError], HTTPStatus] = {
    InvalidArgument: HTTPStatus.BAD_REQUEST,
    Unauthenticated: HTTPStatus.UNAUTHORIZED,
    PermissionDenied: HTTPStatus.FORBIDDEN,
    NotFound: HTTPStatus.NOT_FOUND,
    AlreadyExists: HTTPStatus.CONFLICT,
    StaleEtag: HTTPStatus.PRECONDITION_FAILED,
    # 412 answers a request's own precondition (an etag); a state of the resource that
    # forbids the call conflicts with it (RFC 9110, 15.5.10).
    FailedPrecondition: HTTPStatus.CONFLICT,
    ResourceExhausted: HTTPStatus.TOO_MANY_REQUESTS,
    StoreUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
}
# Headers an answer must carry to be usable (RFC 6750, RFC 9110).
_HEADERS: dict[HTTPStatus, dict[str, str]] = {
    HTTPStatus.UNAUTHORIZED: {"WWW-Authenticate": 'Bearer realm="webhooks"'},
    HTTPStatus.SERVICE_UNAVAILABLE: {"Retry-After": str(RETRY_AFTER_SECONDS)},
    HTTPStatus.TOO_MANY_REQUESTS: {"Retry-After": str(RETRY_AFTER_SECONDS)},
}
# Headers of aiohttp's own refusals worth keeping (405 names the allowed methods).
_KEPT_HEADERS = ("Allow",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(error: WebhooksError) -> HTTPStatus:
    for kind in type(error).__mro__:
        status = _STATUSES.get(kind)
        if status is not None:
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def problem_response(
    status: HTTPStatus,
    detail: str,
    *,
    violations: Sequence[FieldViolation] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": status.phrase,
        "status": int(status),
        "detail": detail[:_MAX_TEXT],
    }
    if violations:
        body["errors"] = [
            {"field": v.field[:_MAX_TEXT], "message": v.description[:_MAX_TEXT]}
            for v in violations[:_MAX_VIOLATIONS]
        ]
    return web.Response(
        status=int(status),
        body=orjson.dumps(body),
        content_type=PROBLEM_JSON,
        headers={**_HEADERS.get(status, {}), **(headers or {})},
    )


def _from_error(error: WebhooksError) -> web.Response:
    status = status_of(error)
    if isinstance(error, InvalidArgument):
        return problem_response(status, _summary(error), violations=error.violations)
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        # Retry-After takes whole seconds (RFC 9110); rounding up never invites an early retry.
        wait = str(max(1, math.ceil(error.retry_after)))
        return problem_response(status, str(error), headers={"Retry-After": wait})
    return problem_response(status, str(error))


def _summary(error: InvalidArgument) -> str:
    shown = "; ".join(f"{v.field}: {v.description}" for v in error.violations[:_MAX_IN_DETAIL])
    hidden = len(error.violations) - _MAX_IN_DETAIL
    return shown + (f"; and {hidden} more" if hidden > 0 else "")


def _from_http_exception(error: web.HTTPException) -> web.Response:
    status = HTTPStatus(error.status)
    kept = {name: error.headers[name] for name in _KEPT_HEADERS if name in error.headers}
    # aiohttp's default text is the status line again; a reason given on purpose says more.
    detail = error.text if error.text and not error.text.startswith(f"{error.status}:") else ""
    return problem_response(status, detail or status.phrase, headers=kept)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except WebhooksError as error:
        return _from_error(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _from_http_exception(error)
    except Exception:
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return problem_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
