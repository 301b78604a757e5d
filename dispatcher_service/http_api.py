"""The HTTP/JSON face of the dispatcher: ingestion of one event, the contracts, the public keys.

    POST /v1/events                     one event (its payload as JSON), bearer token, 202
    GET  /v1/contracts/{messageType}    the contract of a type, self-contained
    GET  /openapi.json                  the OpenAPI 3.1 document of all this, from contracts/
    GET  /.well-known/jwks.json         the public signing keys (RFC 7517)
    GET  /v1/signing-keys/{key_id}.pem  one public key as PEM

Like the gRPC servicer it only translates: the body becomes an `IncomingEvent` for the same
`Ingestor`, authenticated by the same `TokenStore`, and the answer comes only once the event
is stored. Errors are problem details (`service_common.http_errors`) naming the fields by
their JSON names (`messageId`, `details.amount`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from dispatcher_service.domain import IngestOutcome
from dispatcher_service.ingest import EventUser, IncomingEvent, Ingestor, Rejected
from dispatcher_service.keyring import PUBLIC_KEYS_CACHE_CONTROL, PublicKey, to_jwks
from service_common.auth import Caller, Scope, TokenStore, validate_tenant
from service_common.errors import FieldViolation, InvalidArgument, NotFound, Unauthenticated
from service_common.http_errors import problem_middleware
from webhook_contracts import Registry, UnknownMessageType, build_openapi, dotted
from webhook_wire import strict_json

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_FIELD_BYTES",
    "MAX_REQUEST_LINE_BYTES",
    "create_app",
    "incoming_event",
]

# A whole event body: the details may be 64 KiB of JSON (ingest.MAX_DETAILS_BYTES), written
# with whitespace or escapes that make the body larger than the details it carries.
MAX_BODY_BYTES = 256 * 1024
# The request line (method, path and query), each header's value, and the number of headers.
# aiohttp refuses a request past any of them before a handler runs, with a plain-text 400
# (it sends neither 414 nor 431).
MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADER_FIELD_BYTES = 8 * 1024
MAX_HEADERS = 100
JSON = "application/json"
_BODY_FIELDS = ("details", "messageId", "timestamp", "user")
_USER_FIELDS = {"id": "id", "poolId": "pool_id", "originator": "originator"}
# The ingestor names the fields of the gRPC Event; an HTTP publisher sent the payload's names.
_HTTP_FIELD_NAMES = {
    "message_id": "messageId",
    "message_type": "details.messageType",
    "user.pool_id": "user.poolId",
}


class PublicKeys(Protocol):
    def public_keys(self) -> Sequence[PublicKey]: ...

    def public_key(self, key_id: str) -> PublicKey | None: ...


def create_app(
    *, ingestor: Ingestor, keys: PublicKeys, tokens: TokenStore, registry: Registry
) -> web.Application:
    routes = _Routes(ingestor=ingestor, keys=keys, tokens=tokens, registry=registry)
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[problem_middleware],
        handler_args={
            "max_line_size": MAX_REQUEST_LINE_BYTES,
            "max_field_size": MAX_HEADER_FIELD_BYTES,
            "max_headers": MAX_HEADERS,
            "logger": _ParserErrorLog(logging.getLogger("aiohttp.server"), {}),
        },
    )
    app.router.add_post("/v1/events", routes.publish_event)
    app.router.add_get("/v1/contracts/{message_type}", routes.get_contract, allow_head=False)
    app.router.add_get("/openapi.json", routes.get_openapi, allow_head=False)
    app.router.add_get("/.well-known/jwks.json", routes.get_jwks, allow_head=False)
    app.router.add_get("/v1/signing-keys/{key_id}.pem", routes.get_signing_key, allow_head=False)
    return app


class _ParserErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp logs a request it cannot parse with a traceback quoting the offending line,
    which may be an `Authorization` header: such refusals are logged by kind only."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, BadHttpMessage):
            what = str(msg) % args if args else str(msg)
            self.logger.info("%s: refused, %s (%d)", what, type(error).__name__, error.code)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


class _Routes:
    def __init__(
        self, *, ingestor: Ingestor, keys: PublicKeys, tokens: TokenStore, registry: Registry
    ) -> None:
        self._ingestor = ingestor
        self._keys = keys
        self._tokens = tokens
        self._registry = registry
        # The contracts do not change while the process runs: built and encoded once.
        self._openapi = orjson.dumps(build_openapi(registry))

    async def publish_event(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        # Refused before the body is read: it is not worth reading for a caller who may not publish.
        caller.require(Scope.PUBLISH)
        if request.content_type != JSON:
            raise web.HTTPUnsupportedMediaType(text=f"the body must be {JSON}")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            # Answered before reading: a body announced as too large is not waited for.
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
        event = incoming_event(_parse_json(await request.read()), tenant=_tenant(request))
        try:
            (outcome,) = await self._ingestor.publish(caller, [event])
        except InvalidArgument as invalid:
            raise _with_http_names(invalid) from None
        if isinstance(outcome, Rejected):
            refusal = outcome.error
            raise _with_http_names(refusal) if isinstance(refusal, InvalidArgument) else refusal
        return web.json_response(_accepted(outcome), status=202, dumps=_dumps)

    async def get_contract(self, request: web.Request) -> web.Response:
        message_type = request.match_info["message_type"]
        try:
            contract = self._registry.bundle(message_type)
        except UnknownMessageType:
            raise NotFound(f"no contract has the messageType '{message_type[:200]}'") from None
        return web.json_response(contract, content_type="application/schema+json", dumps=_dumps)

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type=JSON)

    async def get_jwks(self, request: web.Request) -> web.Response:
        return web.json_response(
            to_jwks(self._keys.public_keys()),
            dumps=_dumps,
            headers={"Cache-Control": PUBLIC_KEYS_CACHE_CONTROL},
        )

    async def get_signing_key(self, request: web.Request) -> web.Response:
        key_id = request.match_info["key_id"]
        key = self._keys.public_key(key_id)
        if key is None:
            raise NotFound(f"no published signing key has the id '{key_id[:200]}'")
        return web.Response(
            text=key.public_key_pem,
            content_type="application/x-pem-file",
            headers={"Cache-Control": PUBLIC_KEYS_CACHE_CONTROL},
        )

    def _caller(self, request: web.Request) -> Caller:
        values = request.headers.getall("Authorization", [])
        if not values:  # the token store's own words are about gRPC metadata
            raise Unauthenticated("missing 'Authorization: Bearer <token>' header")
        return self._tokens.authenticate([("authorization", value) for value in values])


def incoming_event(body: object, *, tenant: str) -> IncomingEvent:
    """The event of a `POST /v1/events` body: its payload, exactly as receivers will get it.

    What the ingestor cannot see in an `IncomingEvent` is checked here: unknown or null
    members, a timestamp it would re-format, and a user that does not name all its fields.
    """
    if not isinstance(body, dict):
        raise InvalidArgument.of("body", "must be a JSON object (the event's payload)")
    violations = [
        FieldViolation(dotted((name,)), f"unknown field; an event has {', '.join(_BODY_FIELDS)}")
        for name in body
        if name not in _BODY_FIELDS
    ]
    message_id = _string(body, "messageId", violations)
    details = body.get("details")
    message_type = ""
    if not isinstance(details, dict):
        violations.append(FieldViolation("details", "required: a JSON object"))
    else:
        message_type = _string(details, "messageType", violations, path="details.messageType")
    timestamp = _timestamp(body, violations)
    user = _user(body, violations)
    details_text = _details_text(details, violations) if isinstance(details, dict) else ""
    if violations:
        raise InvalidArgument(violations)
    return IncomingEvent(
        tenant=tenant,
        message_id=message_id,
        message_type=message_type,
        timestamp=timestamp,
        details=details_text,
        user=user,
    )


def _parse_json(raw: bytes) -> object:
    """The body, read by the same rule as a gRPC event's details (`strict_json`)."""
    try:
        return strict_json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgument.of("body", "is not UTF-8 text") from None
    except strict_json.JsonRefused as refused:
        raise InvalidArgument.of(dotted(refused.path) or "body", refused.reason) from None


def _tenant(request: web.Request) -> str:
    given = request.query.getall("tenant", [])
    if len(given) > 1:
        raise InvalidArgument.of("tenant", "given more than once")
    # Present means named, even empty: `?tenant=` is not a way to leave it out.
    return validate_tenant(given[0], field="tenant") if given else ""


def _string(
    container: Mapping[str, object],
    name: str,
    violations: list[FieldViolation],
    *,
    path: str | None = None,
) -> str:
    value = container.get(name)
    if isinstance(value, str):
        return value
    problem = "required" if name not in container else "must be a string"
    violations.append(FieldViolation(path or name, problem))
    return ""


def _timestamp(body: Mapping[str, object], violations: list[FieldViolation]) -> datetime | None:
    if not isinstance(text := body.get("timestamp"), str):
        _string(body, "timestamp", violations)
        return None
    example = "ISO 8601 in UTC with milliseconds, e.g. 2021-10-14T15:33:16.848Z"
    try:
        moment = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):  # an offset can carry a time past year 1 or 9999
        moment = None
    # Only the canonical form: it is what the ingestor writes back, so receivers get the text
    # that was sent.
    if moment is None or _canonical_time(moment) != text:
        violations.append(FieldViolation("timestamp", f"must be {example}"))
        return None
    return moment


def _canonical_time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user(body: Mapping[str, object], violations: list[FieldViolation]) -> EventUser | None:
    if "user" not in body:
        return None
    user = body["user"]
    if not isinstance(user, dict):
        violations.append(FieldViolation("user", "must be an object"))
        return None
    found = {name: _string(user, name, violations, path=f"user.{name}") for name in _USER_FIELDS}
    for name in user:
        if name not in _USER_FIELDS:
            violations.append(
                FieldViolation(
                    dotted(("user", name)), "unknown field; a user has id, poolId, originator"
                )
            )
    return EventUser(**{_USER_FIELDS[name]: value for name, value in found.items()})


def _details_text(details: Mapping[str, object], violations: list[FieldViolation]) -> str:
    try:
        return orjson.dumps(details).decode()
    except TypeError as error:  # only for a body strict_json did not read
        violations.append(FieldViolation("details", f"is not portable JSON: {error}"))
        return ""


def _with_http_names(error: InvalidArgument) -> InvalidArgument:
    return InvalidArgument(
        FieldViolation(_HTTP_FIELD_NAMES.get(v.field, v.field), v.description)
        for v in error.violations
    )


def _accepted(outcome: IngestOutcome) -> dict[str, object]:
    return {
        "messageId": outcome.message_id,
        "outcome": "duplicate" if outcome.duplicate else "accepted",
        "deliveries": outcome.deliveries,
    }


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
