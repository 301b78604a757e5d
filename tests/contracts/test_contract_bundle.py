"""The published form of a contract (`GET /v1/contracts/{type}`): one schema resource with its
canonical `$id`, the documents it uses embedded under `$defs`, and only local references, so
tools that cannot resolve embedded `$id`s (json-schema-to-typescript) read it offline."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tests.contracts.contract_samples import valid_payload
from webhook_contracts import Part, Registry, bundle, load_documents, schema_id
from webhook_contracts.bundle import embedded_key
from webhook_contracts.directory import contracts_dir
from webhook_contracts.explain import format_checker
from webhook_contracts.references import iter_refs, referenced_documents

TYPES = sorted(load_documents(contracts_dir()).events)


def nodes(node: Any) -> list[dict[str, Any]]:
    """Every object in ``node`` (schemas and data alike)."""
    if isinstance(node, dict):
        return [node, *(found for value in node.values() for found in nodes(value))]
    if isinstance(node, list):
        return [found for item in node for found in nodes(item)]
    return []


@pytest.mark.parametrize("message_type", TYPES)
def test_a_served_contract_has_only_local_references_and_keeps_its_canonical_id(
    registry: Registry, message_type: str
) -> None:
    served = registry.bundle(message_type)
    assert served["$id"] == schema_id(message_type)
    refs = list(iter_refs(served))
    assert refs, message_type
    assert [ref for ref in refs if not ref.startswith("#/")] == []
    # One resource: a nested $id would become the base of the local references inside it.
    assert [node for node in nodes(served) if "$id" in node] == [served]


def test_embedded_documents_are_named_by_file_and_say_their_canonical_id(
    registry: Registry,
) -> None:
    served = registry.bundle("event.claim.created.v1")
    dependencies = referenced_documents(registry.documents, "event.claim.created.v1")
    assert sorted(dependencies) == ["details", "payload", "types", "webhook"]
    for name in dependencies:
        embedded = served["$defs"][embedded_key(name)]
        assert embedded["$comment"] == f"Embedded copy of {schema_id(name)}."
        assert "$schema" not in embedded
    user = served["$defs"]["payload.json"]["properties"]["user"]
    assert user == {"$ref": "#/$defs/payload.json/$defs/user"}
    # The event's own parts keep their published addresses.
    assert served["properties"]["payload"] == {"$ref": "#/$defs/payload"}


def test_bundling_leaves_the_contract_documents_unchanged(registry: Registry) -> None:
    before = registry.documents.get("payload")["properties"]["user"]["$ref"]
    bundle(registry.documents, "event.claim.created.v1")
    assert registry.documents.get("payload")["properties"]["user"]["$ref"] == before
    assert before == schema_id("payload") + "#/$defs/user"


@pytest.mark.parametrize("message_type", TYPES)
def test_a_served_contract_accepts_and_rejects_what_the_registry_does(
    registry: Registry, message_type: str
) -> None:
    validator = jsonschema.Draft202012Validator(
        registry.bundle(message_type),
        format_checker=format_checker(),
    )

    def body(**changes: object) -> dict[str, Any]:
        payload = {**valid_payload(message_type), **changes}
        return {"payload": payload, "signature": "c2ln", "payloadAsString": "{}"}

    instances: list[object] = [
        body(),
        body(user={"id": "", "poolId": "", "originator": ""}),
        body(user={"id": "u"}),
        body(timestamp="2021-02-30T10:00:00.000Z"),
        {"payload": {}},
    ]
    contract = registry.get(message_type)
    verdicts = [validator.is_valid(instance) for instance in instances]
    assert verdicts == [contract.is_valid(i, part=Part.WEBHOOK) for i in instances]
    assert verdicts == [True, True, False, False, False]
