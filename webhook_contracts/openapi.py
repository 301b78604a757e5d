"""The OpenAPI 3.1 document: the webhooks receivers get, and the dispatcher's HTTP surface.

Generated from ``contracts/`` so that it can never disagree with them. ``webhooks`` has one
entry per messageType (receivers generate their handlers from it); ``paths`` describes what
the dispatcher serves over HTTP. Every contract document becomes a component, and each
top-level ``$defs`` entry a component of its own (``event.claim.created.v1.payload``), so that
code generators which do not follow pointers into ``$defs`` still work. A document that only
holds ``$defs`` (``types``) validates nothing itself and gets no component of its own.

``servers`` names what a reader of the document can call: the ``server_url`` a caller gives,
or else ``/`` (the dispatcher that served the document: a relative URL resolves against the
document's own) and the dispatcher's default local address (``make run``).
"""

from __future__ import annotations

import re
from typing import Any

from .contract import Contract
from .documents import ContractDocuments
from .ids import JSON_SCHEMA_DIALECT, name_of
from .openapi_http import http_components, http_paths
from .references import rewrite_refs
from .registry import Registry, load_registry

__all__ = ["build_openapi", "component_ref", "operation_id"]

OPENAPI_VERSION = "3.1.0"
KEY_ID_HEADER = "webhook-key-id"
COMPONENTS = "#/components/schemas/"
# Keywords that only annotate: a document with nothing else besides $defs validates nothing.
ANNOTATIONS = {"title", "description", "$comment"}


def build_openapi(
    registry: Registry | None = None,
    *,
    title: str = "webhooks",
    version: str = "1.0.0",
    server_url: str | None = None,
    key_id_header: str | None = KEY_ID_HEADER,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the contracts in ``registry`` (default: ``load_registry()``).

    ``key_id_header`` names the delivery header that carries the id of the signing key
    (None leaves it out).
    """
    registry = registry or load_registry()
    schemas = _schema_components(registry.documents)
    components = http_components(registry)
    components["schemas"] = schemas | components["schemas"]
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Signed webhooks, one per messageType, and the dispatcher's HTTP surface. "
                "Generated from the JSON Schema contracts."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": _servers(server_url),
        "paths": http_paths(registry),
        "webhooks": {
            contract.message_type: {"post": _webhook_operation(contract, key_id_header)}
            for contract in registry
        },
        "components": components,
    }
    return document


def component_ref(name: str, definition: str | None = None) -> dict[str, str]:
    """A ``$ref`` to the component of document ``name`` (or of one of its ``$defs``)."""
    return {"$ref": COMPONENTS + (f"{name}.{definition}" if definition else name)}


def operation_id(message_type: str) -> str:
    """``event.claim.created.v1`` -> ``onEventClaimCreatedV1``: an identifier in most languages."""
    words = re.split(r"[^A-Za-z0-9]+", message_type)
    return "on" + "".join(word[:1].upper() + word[1:] for word in words if word)


def _servers(server_url: str | None) -> list[dict[str, str]]:
    if server_url:
        return [{"url": server_url}]
    return [
        {"url": "/", "description": "The dispatcher that serves this document at /openapi.json."},
        {
            "url": "http://127.0.0.1:8080",
            "description": "A dispatcher run locally with the default DISPATCHER_HTTP_ADDR.",
        },
    ]


def _schema_components(documents: ContractDocuments) -> dict[str, Any]:
    components: dict[str, Any] = {}
    for name, document in documents:
        schema = _as_component(document)
        definitions = schema.pop("$defs", {})
        for definition, subschema in definitions.items():
            components[f"{name}.{definition}"] = subschema
        if not definitions or set(schema) - ANNOTATIONS:
            components[name] = schema
    return components


def _as_component(document: Any) -> Any:
    # Components must not keep their $id: it would become the base URI of the local
    # "#/components/..." references inside them.
    schema = rewrite_refs(document, _component_pointer)
    schema.pop("$id", None)
    schema.pop("$schema", None)
    return schema


def _component_pointer(ref: str) -> str:
    name = name_of(ref)
    _, _, pointer = ref.partition("#")
    if match := re.fullmatch(r"/\$defs/([^/]+)", pointer):
        return component_ref(name, match.group(1))["$ref"]
    return COMPONENTS + name + pointer


def _webhook_operation(contract: Contract, key_id_header: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": component_ref(contract.message_type)}
    if contract.examples:
        content["examples"] = {
            f"documented{index or ''}": {"summary": "Published example", "value": example}
            for index, example in enumerate(contract.examples)
        }
    return {
        "operationId": operation_id(contract.message_type),
        "summary": contract.message_type,
        "description": contract.description,
        "tags": [_tag(contract.message_type)],
        "parameters": _delivery_headers(key_id_header),
        # The platform sends no credentials: the receiver checks the body's signature
        # (and the optional Standard Webhooks header), which no security scheme describes.
        "security": [],
        "requestBody": {"required": True, "content": {"application/json": content}},
        "responses": {
            "2XX": {
                "description": (
                    "Delivered. Any other answer, a timeout or a connection error is a failed "
                    "attempt, retried with backoff."
                )
            }
        },
    }


def _tag(message_type: str) -> str:
    """The entity a type is about: ``event.claim.created.v1`` -> ``claim``."""
    parts = message_type.split(".")
    return parts[1] if len(parts) > 2 else parts[0]


def _delivery_headers(key_id_header: str | None) -> list[dict[str, Any]]:
    headers = [
        _header("webhook-id", "The event's messageId (Standard Webhooks).", required=True),
        _header(
            "webhook-timestamp",
            "Unix time in seconds of this attempt (Standard Webhooks).",
            required=True,
        ),
        _header(
            "webhook-signature",
            "Standard Webhooks signature (v1, HMAC-SHA256) when the subscription has a secret.",
            required=False,
        ),
    ]
    if key_id_header:
        description = (
            "Id (RFC 7638 thumbprint) of the key that made the signature: pick the public key "
            "with this id from /.well-known/jwks.json or /v1/signing-keys/{key_id}.pem."
        )
        headers.append(_header(key_id_header, description, required=True))
        headers.append(
            _header(
                "webhook-signature-algorithm",
                "ES256 (ECDSA P-256, SHA-256) or RS256 (RSA PKCS#1 v1.5, SHA-256).",
                required=True,
            )
        )
        headers.append(
            _header(
                "webhook-signature-p1363",
                "The body's signature as WebCrypto and JOSE take it, in base64: raw r||s for "
                "ES256 (the body's is DER), the same bytes for RS256.",
                required=True,
            )
        )
    return headers


def _header(name: str, description: str, *, required: bool) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }
