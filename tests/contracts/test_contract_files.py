"""The contract files themselves: valid 2020-12 schemas, named and linked consistently, and
written with keywords that mean the same to every validator that reads them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from referencing import Registry as ReferenceRegistry
from referencing.jsonschema import DRAFT202012

from tests.contracts.contract_samples import PUBLISHED_TYPES
from webhook_contracts import BASE_URI, Registry, load_documents, schema_id
from webhook_contracts.directory import contracts_dir
from webhook_contracts.formats import FORMAT_CHECKS
from webhook_contracts.ids import JSON_SCHEMA_DIALECT, name_of

DOCUMENTS = list(load_documents(contracts_dir()))

# Keywords whose meaning is the same for the compiled validator (draft 7 rules) and for
# JSON Schema 2020-12. contentEncoding/contentMediaType are left out on purpose: the compiled
# validator asserts them, 2020-12 only annotates.
PORTABLE_KEYWORDS = {
    "$schema", "$id", "$ref", "$defs", "$comment", "title", "description", "examples",
    "default", "deprecated", "type", "const", "enum", "required", "properties",
    "additionalProperties", "items", "allOf", "anyOf", "oneOf", "not", "pattern", "format",
    "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "multipleOf",
}  # fmt: skip
ANNOTATIONS = {"description", "title", "examples", "$comment", "deprecated", "default"}
SCHEMA_MAPS = {"properties", "$defs"}
# Ajv's strict mode (strictTypes) wants the type of the values these keywords apply to.
OBJECT_KEYWORDS = {"properties", "required", "additionalProperties"}
STRING_KEYWORDS = {"pattern", "format", "minLength", "maxLength"}


def subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema object inside a schema (not the values of const, enum or examples)."""
    if not isinstance(node, dict):
        return
    yield node
    for key, value in node.items():
        if key in SCHEMA_MAPS:
            for child in value.values():
                yield from subschemas(child)
        elif key in ("allOf", "anyOf", "oneOf"):
            for child in value:
                yield from subschemas(child)
        elif key in ("items", "not", "additionalProperties"):
            yield from subschemas(value)


@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_every_contract_is_a_valid_2020_12_schema(name: str, document: dict[str, Any]) -> None:
    assert document["$schema"] == JSON_SCHEMA_DIALECT
    jsonschema.Draft202012Validator.check_schema(document)


def test_every_event_type_of_the_catalog_has_exactly_one_contract(registry: Registry) -> None:
    assert len(PUBLISHED_TYPES) == 77
    assert registry.message_types == set(PUBLISHED_TYPES)


@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_ids_are_absolute_uris_named_after_the_file(name: str, document: dict[str, Any]) -> None:
    assert document["$id"] == schema_id(name)
    assert document["$id"].startswith(BASE_URI)
    assert name_of(document["$id"]) == name


def test_every_event_name_carries_its_version(registry: Registry) -> None:
    unversioned = [name for name in registry.message_types if not re.search(r"\.v[1-9]\d*$", name)]
    assert unversioned == []


def test_every_event_contract_pins_its_message_type(registry: Registry) -> None:
    for contract in registry:
        details = contract.schema["$defs"]["details"]
        assert details["properties"]["messageType"] == {"const": contract.message_type}
        assert "messageType" in details.get("required", ["messageType"])


def test_every_ref_resolves_to_a_schema_of_the_contracts(registry: Registry) -> None:
    resources: ReferenceRegistry[Any] = ReferenceRegistry().with_resources(
        (uri, DRAFT202012.create_resource(document))
        for uri, document in registry.documents.by_id().items()
    )
    resolver = resources.resolver()
    for name, document in DOCUMENTS:
        for node in subschemas(document):
            if "$ref" in node:
                assert node["$ref"].startswith(BASE_URI), (name, node["$ref"])
                resolved = resolver.lookup(node["$ref"]).contents
                assert isinstance(resolved, dict), (name, node["$ref"])


@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_contracts_use_only_keywords_every_validator_reads_alike(
    name: str, document: dict[str, Any]
) -> None:
    for node in subschemas(document):
        assert set(node) <= PORTABLE_KEYWORDS, (name, set(node) - PORTABLE_KEYWORDS)
        if "$ref" in node:
            # Draft 7 validators ignore the siblings of $ref; 2020-12 applies them.
            assert set(node) - {"$ref"} <= ANNOTATIONS, (name, node)
        if "pattern" in node:
            # "$" matches before a final newline in Python's re, not in ECMA-262: a length
            # bound makes every engine agree.
            assert "maxLength" in node, (name, node)
        if "format" in node:
            assert node["format"] in FORMAT_CHECKS, (name, node["format"])


@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_every_schema_names_the_type_its_keywords_apply_to_as_strict_ajv_requires(
    name: str, document: dict[str, Any]
) -> None:
    for node in subschemas(document):
        if OBJECT_KEYWORDS & set(node):
            assert node.get("type") == "object", (name, node)
        if STRING_KEYWORDS & set(node):
            assert node.get("type") == "string", (name, node)
