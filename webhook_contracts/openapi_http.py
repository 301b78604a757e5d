"""The dispatcher's HTTP surface in the OpenAPI document (DESIGN section 9).

Errors are RFC 9457 problem details (``application/problem+json``); a contract violation
lists each failing field in ``errors`` with a JSON pointer into the request body, as in the
RFC's own example.
"""

from __future__ import annotations

from typing import Any

from .registry import Registry

__all__ = ["http_components", "http_paths"]

PROBLEM = {"$ref": "#/components/schemas/Problem"}
BEARER = "bearerAuth"


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
        {"$ref": f"#/components/schemas/{contract.message_type}.payload"} for contract in registry
    ]
    return {
        "operationId": "publishEvent",
        "summary": "Publish one event",
        "description": (
            "For publishers that cannot use the gRPC stream. The body is the event's payload, "
            "exactly as receivers will get it in the webhook's payload field; it must satisfy "
            "the contract of its details.messageType. A messageId the tenant already published "
            "is acknowledged as a duplicate and not delivered again."
        ),
        "tags": ["events"],
        "security": [{BEARER: ["publish"]}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": variants}}},
        },
        "responses": {
            "202": {
                "description": "Stored; deliveries to the matching subscriptions will follow.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/EventAccepted"}}
                },
            },
            "400": _problem("The body is not JSON."),
            "401": _problem("No valid bearer token."),
            "403": _problem("The token lacks the publish scope."),
            "413": _problem("The body is larger than the configured limit."),
            "415": _problem("The body is not application/json."),
            "422": _problem(
                "The event breaks its contract, or no contract has its messageType; "
                "errors lists each failing field."
            ),
            "503": _problem("The event store is unavailable; retry later."),
        },
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
            "404": _problem("No contract has this messageType."),
        },
    }


def _get_jwks() -> dict[str, Any]:
    return {
        "operationId": "getJsonWebKeySet",
        "summary": "The public signing keys (RFC 7517 JWK Set)",
        "description": "Old keys stay published until the deliveries they signed are done.",
        "tags": ["signing keys"],
        "responses": {
            "200": {
                "description": "The key set.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/JsonWebKeySet"}}
                },
            }
        },
    }


def _get_signing_key() -> dict[str, Any]:
    return {
        "operationId": "getSigningKeyPem",
        "summary": "One public signing key as PEM (SubjectPublicKeyInfo)",
        "description": "What receivers pass to their verify call.",
        "tags": ["signing keys"],
        "parameters": [
            {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "The PEM text.",
                "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
            },
            "404": _problem("No key has this id."),
        },
    }


def _get_openapi() -> dict[str, Any]:
    return {
        "operationId": "getOpenApi",
        "summary": "This document",
        "tags": ["contracts"],
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM}},
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
                "description": "One entry per failing field of the request body.",
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["detail", "pointer"],
                    "properties": {
                        "detail": {"type": "string"},
                        "pointer": {
                            "description": "RFC 6901 JSON pointer into the request body.",
                            "type": "string",
                            "examples": ["/details/amount"],
                        },
                    },
                },
            },
        },
    }


def _event_accepted_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["messageId", "duplicate"],
        "properties": {
            "messageId": {"type": "string"},
            "duplicate": {
                "description": "True when this messageId was already stored: nothing new is sent.",
                "type": "boolean",
            },
        },
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
