"""The generated OpenAPI 3.1 document: valid, one webhook per messageType, the dispatcher's
HTTP surface, and schemas that mean what the contracts mean."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry as ReferenceRegistry
from referencing.jsonschema import DRAFT202012

from tests.contracts.contract_samples import EXAMPLE_TYPE, valid_payload
from webhook_contracts import Registry, build_openapi
from webhook_contracts.cli import main
from webhook_contracts.explain import format_checker
from webhook_contracts.openapi import operation_id

OPENAPI_URI = "urn:webhooks:openapi"


@pytest.fixture(scope="module")
def document(registry: Registry) -> dict[str, Any]:
    return build_openapi(
        registry, server_url="http://127.0.0.1:8080", key_id_header="webhook-key-id"
    )


def objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of the document, but for those inside examples and literal values."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in ("examples", "example", "const", "enum"):
                yield from objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from objects(item)


def refs(node: Any) -> Iterator[str]:
    return (found["$ref"] for found in objects(node) if isinstance(found.get("$ref"), str))


def schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the document that holds a `required` list: the schemas that may."""
    return (found for found in objects(node) if isinstance(found.get("required"), list))


def component_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    resources: ReferenceRegistry[Any] = ReferenceRegistry().with_resource(
        OPENAPI_URI, DRAFT202012.create_resource(document)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{OPENAPI_URI}#/components/schemas/{name}"},
        registry=resources,
        format_checker=format_checker(),
    )


def test_the_document_passes_a_standard_openapi_3_1_validator(document: dict[str, Any]) -> None:
    validate(document, cls=OpenAPIV31SpecValidator)


def test_the_validator_used_would_catch_a_broken_document(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    broken["webhooks"][EXAMPLE_TYPE]["post"]["parameters"][0]["in"] = "body"
    with pytest.raises(OpenAPIValidationError, match=r"[\"']body[\"'] is not one of"):
        validate(broken, cls=OpenAPIV31SpecValidator)


def test_there_is_one_webhook_per_message_type(
    registry: Registry, document: dict[str, Any]
) -> None:
    assert set(document["webhooks"]) == registry.message_types
    for name, webhook in document["webhooks"].items():
        body = webhook["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}
        assert webhook["post"]["operationId"] == operation_id(name)


def test_operation_ids_are_unique_identifiers(document: dict[str, Any]) -> None:
    operations = [
        operation
        for item in [*document["paths"].values(), *document["webhooks"].values()]
        for operation in item.values()
    ]
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids))
    assert all(identifier.isidentifier() for identifier in ids)


def test_the_http_surface_of_the_dispatcher_is_described(
    registry: Registry, document: dict[str, Any]
) -> None:
    assert set(document["paths"]) == {
        "/v1/events",
        "/v1/contracts/{messageType}",
        "/.well-known/jwks.json",
        "/v1/signing-keys/{key_id}.pem",
        "/openapi.json",
    }
    publish = document["paths"]["/v1/events"]["post"]
    variants = publish["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert sorted(variant["$ref"] for variant in variants) == sorted(
        f"#/components/schemas/{name}.payload" for name in registry.message_types
    )
    assert publish["security"] == [{"bearerAuth": ["publish"]}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_errors_are_rfc_9457_problem_details(document: dict[str, Any]) -> None:
    # Besides the plain-text 400 of the HTTP server, which refuses a request head past its
    # limits before any route runs (test_limits checks it answers so on every route).
    for item in document["paths"].values():
        for operation in item.values():
            assert operation["responses"]["400"]["content"]["text/plain"] == {
                "schema": {"type": "string"}
            }
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                routed = {**response["content"]}
                if status == "400":
                    del routed["text/plain"]
                if routed:
                    assert list(routed) == ["application/problem+json"]
                    assert routed["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }
                else:
                    assert status == "400", status


def test_every_operation_states_its_security(document: dict[str, Any]) -> None:
    publish = document["paths"]["/v1/events"]["post"]
    assert publish["security"] == [{"bearerAuth": ["publish"]}]
    public = [
        operation
        for item in document["paths"].values()
        for operation in item.values()
        if operation is not publish
    ]
    assert len(public) == 4
    # An empty list says "no credentials"; a missing one would say nothing.
    assert all(operation["security"] == [] for operation in public)
    # The platform sends none either: receivers check the signature in the body.
    assert all(webhook["post"]["security"] == [] for webhook in document["webhooks"].values())
    assert "security" not in document


def test_the_servers_are_the_one_named_or_the_serving_and_the_local_dispatcher(
    registry: Registry, document: dict[str, Any]
) -> None:
    assert document["servers"] == [{"url": "http://127.0.0.1:8080"}]
    served = build_openapi(registry)
    assert [server["url"] for server in served["servers"]] == ["/", "http://127.0.0.1:8080"]


def test_required_names_only_properties_the_schema_declares(document: dict[str, Any]) -> None:
    # Where a schema is composed (allOf, $ref, ...) the names may be declared elsewhere: the
    # Redocly lint (test_contract_openapi_lint) follows those.
    composed = {"$ref", "allOf", "anyOf", "oneOf"}
    for node in schemas(document):
        if not composed & set(node):
            assert set(node["required"]) <= set(node.get("properties", {})), node


def test_every_schema_component_is_referenced(document: dict[str, Any]) -> None:
    referenced = {ref.removeprefix("#/components/schemas/") for ref in refs(document)}
    assert set(document["components"]["schemas"]) <= referenced


def test_every_reference_resolves_inside_the_document(document: dict[str, Any]) -> None:
    # The spec validator does not follow the references of webhooks: this does.
    resolver = (
        ReferenceRegistry()
        .with_resource(OPENAPI_URI, DRAFT202012.create_resource(document))
        .resolver()
    )
    for ref in set(refs(document)):
        assert ref.startswith("#/"), ref
        assert isinstance(resolver.lookup(OPENAPI_URI + ref).contents, dict), ref


def test_webhook_schemas_accept_and_reject_as_the_contracts_do(
    registry: Registry, document: dict[str, Any]
) -> None:
    (example,) = registry.get(EXAMPLE_TYPE).examples
    assert component_validator(document, EXAMPLE_TYPE).is_valid(example)
    payload = valid_payload("event.claim.created.v1")
    body = {"payload": payload, "signature": "c2ln", "payloadAsString": "{}"}
    assert component_validator(document, "event.claim.created.v1").is_valid(body)
    payload["details"]["currency"] = "eur"
    assert not component_validator(document, "event.claim.created.v1").is_valid(body)
    assert not component_validator(document, "event.claim.created.v1.payload").is_valid(payload)


def test_the_publish_body_accepts_exactly_one_variant(
    registry: Registry, document: dict[str, Any]
) -> None:
    schema = document["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    resources: ReferenceRegistry[Any] = ReferenceRegistry().with_resource(
        OPENAPI_URI, DRAFT202012.create_resource({**document, "$id": OPENAPI_URI})
    )
    validator = jsonschema.Draft202012Validator(
        {
            **schema,
            "$id": OPENAPI_URI + "-publish",
            "oneOf": [{"$ref": OPENAPI_URI + variant["$ref"]} for variant in schema["oneOf"]],
        },
        registry=resources,
    )
    assert validator.is_valid(valid_payload("event.note.created.v1"))
    unknown = valid_payload("event.note.created.v1")
    unknown["details"]["messageType"] = "event.unknown.v1"
    assert not validator.is_valid(unknown)


def test_the_openapi_command_writes_the_document(tmp_path: Path, registry: Registry) -> None:
    output = tmp_path / "openapi.json"
    assert main(["openapi", "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    validate(written, cls=OpenAPIV31SpecValidator)
    assert set(written["webhooks"]) == registry.message_types
