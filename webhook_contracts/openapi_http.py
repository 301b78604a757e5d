"""The dispatcher's HTTP surface in the OpenAPI document (DESIGN section 9).

Errors are RFC 9457 problem details (``application/problem+json``); an invalid event lists
each failing field in ``errors``, named by its dotted path in the request body
(``details.amount``), as the gRPC API names fields in its ``BadRequest``.

The request body of ``POST /v1/events`` is the event's payload, one variant per messageType.
It also states the few limits of the dispatcher that are stricter than the contracts (which
describe what receivers get), so that every body the document allows is accepted.

Every operation states its security: the bearer scheme for publishing, ``security: []`` for
the public routes (an explicit "no credentials", not an omission). Every operation also
lists the plain-text 400 that the HTTP server itself answers to a request head past its
limits, before any route runs: for the read-only routes it is the only 4xx a GET can get.
"""

from __future__ import annotations

from typing import Any

from .registry import Registry

__all__ = ["http_components", "http_paths"]

PROBLEM = {"$ref": "#/components/schemas/Problem"}
PORTABLE = {"$ref": "#/components/schemas/PortableJson"}
BEARER = "bearerAuth"
PUBLIC: list[dict[str, list[str]]] = []  # no credentials needed
# What the dispatcher accepts beyond the contracts (dispatcher_service.ingest checks the same).
MAX_MESSAGE_ID_LENGTH = 200
MESSAGE_ID_PATTERN = "^[!-~]+$"  # printable ASCII, no spaces
TENANT_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
USER_FIELDS = ["id", "poolId", "originator"]
HEAD_REFUSED = (
    "The request line, a header or the number of headers is past the HTTP server's limits: "
    "refused in plain text before any route runs."
)
HEAD_REFUSED_TOO = "Or the request head is past the HTTP server's limits (plain text)."
# aiohttp's own answer (dispatcher_service.http_api sets the limits it checks).
HEAD_REFUSED_CONTENT = {"text/plain": {"schema": {"type": "string"}}}


def http_paths(registry: Registry) -> dict[str, Any]:
    return {
        "/v1/events": {"post": _publish_event(registry)},
        "/v1/contracts/{messageType}": {"get": _get_contract()},
        "/.well-known/jwks.json": {"get": _get_jwks()},
        "/v1/signing-keys/{key_id}.pem": {"get": _get_signing_key()},
        "/openapi.json": {"get": _get_openapi()},
    }


def http_components(registry: Registry) -> dict[str, Any]:
    del registry  # the HTTP components do not depend on the contracts (yet)
    return {
        "schemas": {
            "Problem": _problem_schema(),
            "EventAccepted": _event_accepted_schema(),
            "JsonWebKeySet": _jwks_schema(),
            "PortableJson": _portable_json_schema(),
        },
        "securitySchemes": {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from the tokens file; publishing needs the publish scope.",
            }
        },
    }


def _publish_event(registry: Registry) -> dict[str, Any]:
    variants = [
        {
            "$ref": f"#/components/schemas/{contract.message_type}.payload",
            "properties": {"details": PORTABLE},
        }
        for contract in registry
    ]
    return {
        "operationId": "publishEvent",
        "summary": "Publish one event",
        "description": (
            "For publishers that cannot use the gRPC stream. The body is the event's payload, "
            "exactly as receivers will get it in the webhook's payload field; it must satisfy "
            "the contract of its details.messageType. The answer comes once the event and its "
            "deliveries are stored. A messageId the tenant already published is acknowledged "
            "as a duplicate and not delivered again."
        ),
        "tags": ["events"],
        "security": [{BEARER: ["publish"]}],
        "parameters": [
            {
                "name": "tenant",
                "in": "query",
                "required": False,
                "description": (
                    "The tenant the event belongs to: required with a token of every tenant "
                    "(`*`); with a tenant's token it may only name that tenant."
                ),
                "schema": {"type": "string", "pattern": TENANT_PATTERN},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _publish_body(variants),
                    "examples": _published_examples(registry),
                }
            },
        },
        "responses": {
            "202": {
                "description": "Stored; deliveries to the matching subscriptions will follow.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/EventAccepted"}}
                },
                "links": {
                    "GetContractOfEvent": {
                        "operationId": "getContract",
                        "parameters": {"messageType": "$request.body#/details/messageType"},
                        "description": "The contract the event was checked against.",
                    },
                    "PublishEventAgain": {
                        "operationId": "publishEvent",
                        "requestBody": "$request.body",
                        "description": "The same event again: a duplicate, not delivered twice.",
                    },
                },
            },
            "400": _or_head_refused(
                _problem(
                    "The body is not JSON, or the event is invalid: it breaks its contract, no "
                    "contract has its messageType, or the tenant is malformed. errors lists "
                    "each failing field."
                )
            ),
            "401": _problem("No valid bearer token.", headers=_www_authenticate()),
            "403": _problem("The token lacks the publish scope, or names another tenant."),
            "413": _problem("The body is larger than the dispatcher accepts."),
            "415": _problem("The body is not application/json."),
            "503": _problem(
                "The event store or the routing table is unavailable; nothing was stored, retry.",
                headers=_retry_after(),
            ),
        },
    }


def _publish_body(variants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "oneOf": variants,
        # Limits of the dispatcher, on top of whichever variant applies; the members are
        # those of the payload (each variant says so too, deeper down).
        "additionalProperties": False,
        "properties": {
            "details": {"type": "object"},
            "timestamp": {"type": "string"},
            "messageId": {
                "type": "string",
                "maxLength": MAX_MESSAGE_ID_LENGTH,
                "pattern": MESSAGE_ID_PATTERN,
            },
            "user": {
                "description": "Over HTTP a user names all three fields (empty strings allowed).",
                "type": "object",
                "required": USER_FIELDS,
                "properties": {name: {"type": "string"} for name in USER_FIELDS},
            },
        },
    }


def _published_examples(registry: Registry) -> dict[str, Any]:
    """The payloads of the contracts' published examples, as a publisher would send them."""
    return {
        f"{contract.message_type}{index or ''}": {
            "summary": contract.message_type,
            "value": example["payload"],
        }
        for contract in registry
        for index, example in enumerate(contract.examples)
    }


def _get_contract() -> dict[str, Any]:
    return {
        "operationId": "getContract",
        "summary": "The JSON Schema contract of one messageType",
        "description": (
            "Self-contained (the shared schemas are embedded under $defs, JSON Schema 2020-12 "
            "bundling), so a receiver validates with it without fetching anything else."
        ),
        "tags": ["contracts"],
        "security": PUBLIC,
        "parameters": [
            {
                "name": "messageType",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "examples": ["event.claim.created.v1"]},
            }
        ],
        "responses": {
            "200": {
                "description": "The contract.",
                "content": {"application/schema+json": {"schema": {"type": "object"}}},
            },
            "400": _head_refused(),
            "404": _problem("No contract has this messageType."),
        },
    }


def _get_jwks() -> dict[str, Any]:
    return {
        "operationId": "getJsonWebKeySet",
        "summary": "The public signing keys (RFC 7517 JWK Set)",
        "description": "Old keys stay published until the deliveries they signed are done.",
        "tags": ["signing keys"],
        "security": PUBLIC,
        "responses": {
            "200": {
                "description": "The key set, newest key first.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/JsonWebKeySet"}}
                },
            },
            "400": _head_refused(),
        },
    }


def _get_signing_key() -> dict[str, Any]:
    return {
        "operationId": "getSigningKeyPem",
        "summary": "One public signing key as PEM (SubjectPublicKeyInfo)",
        "description": "What receivers pass to their verify call.",
        "tags": ["signing keys"],
        "security": PUBLIC,
        "parameters": [
            {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "The PEM text.",
                "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
            },
            "400": _head_refused(),
            "404": _problem("No key has this id."),
        },
    }


def _get_openapi() -> dict[str, Any]:
    return {
        "operationId": "getOpenApi",
        "summary": "This document",
        "tags": ["contracts"],
        "security": PUBLIC,
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "400": _head_refused(),
        },
    }


def _problem(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM}},
    }
    if headers:
        response["headers"] = headers
    return response


def _head_refused() -> dict[str, Any]:
    return {"description": HEAD_REFUSED, "content": HEAD_REFUSED_CONTENT}


def _or_head_refused(response: dict[str, Any]) -> dict[str, Any]:
    """A route's own 400, or the HTTP server's (their media types tell them apart)."""
    return {
        **response,
        "description": f"{response['description']} {HEAD_REFUSED_TOO}",
        "content": response["content"] | HEAD_REFUSED_CONTENT,
    }


def _www_authenticate() -> dict[str, Any]:
    return {
        "WWW-Authenticate": {
            "description": "The scheme to authenticate with (RFC 6750): Bearer.",
            "required": True,
            "schema": {"type": "string", "pattern": "^Bearer"},
        }
    }


def _retry_after() -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    }


def _problem_schema() -> dict[str, Any]:
    return {
        "description": "RFC 9457 problem details.",
        "type": "object",
        "properties": {
            "type": {"type": "string", "format": "uri-reference", "default": "about:blank"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 100, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri-reference"},
            "errors": {
                "description": "One entry per failing field of the request.",
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {
                            "description": (
                                "Dotted path of the field in the request body (array items "
                                "as [index]), or the query parameter or body as a whole."
                            ),
                            "type": "string",
                            "examples": ["details.amount", "messageId", "tenant", "body"],
                        },
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }


def _event_accepted_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["messageId", "outcome", "deliveries"],
        "properties": {
            "messageId": {"type": "string"},
            "outcome": {
                "description": (
                    "accepted: stored now; duplicate: this messageId was already stored, "
                    "nothing new is sent."
                ),
                "enum": ["accepted", "duplicate"],
            },
            "deliveries": {
                "description": "One per matching subscription; 0 for a duplicate.",
                "type": "integer",
                "minimum": 0,
            },
        },
    }


def _portable_json_schema() -> dict[str, Any]:
    return {
        "description": (
            "A JSON value the platform carries unchanged: its integers fit in 64 bits "
            "(-2^63 to 2^63-1). Values nested more than about 250 levels deep are refused too."
        ),
        "anyOf": [
            {"not": {"type": "integer"}},
            {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        ],
        "items": PORTABLE,
        "patternProperties": {"": PORTABLE},
    }


def _jwks_schema() -> dict[str, Any]:
    key = {
        "type": "object",
        "required": ["kty", "kid"],
        "properties": {
            "kty": {"enum": ["EC", "RSA"]},
            "kid": {"type": "string"},
            "use": {"const": "sig"},
            "alg": {"enum": ["ES256", "RS256"]},
            "crv": {"const": "P-256"},
            "x": {"type": "string"},
            "y": {"type": "string"},
            "n": {"type": "string"},
            "e": {"type": "string"},
        },
    }
    return {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": key}},
    }
